package agent_test

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/msb-dev/msb/rpc/v1/agent"
)

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "").Replace(s))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func ptr[T any](v T) *T { return &v }

// The frames msb sends are byte for byte those of the protocol's
// examples (docs: the v1 protocol notes, section 11), which the real
// 0.6.18 client accepted.
func TestServerFramesAreByteExact(t *testing.T) {
	for _, c := range []struct {
		name    string
		id      uint32
		typ     string
		payload any
		want    string
	}{
		{"ready", 0, agent.TypeReady, agent.Ready{BootTimeNs: 1000000, InitTimeNs: 2000000, ReadyTimeNs: 3000000, AgentVersion: "0.6.18"},
			"000000670000000000a361760761746a636f72652e72656164796170584da46c626f6f745f74696d655f6e731a000f42406c696e69745f74696d655f6e731a001e84806d72656164795f74696d655f6e731a002dc6c06d6167656e745f76657273696f6e66302e362e3138"},
		{"minimal ready", 0, agent.TypeReady, agent.Ready{},
			"000000460000000000a361760761746a636f72652e72656164796170582ca36c626f6f745f74696d655f6e73006c696e69745f74696d655f6e73006d72656164795f74696d655f6e7300"},
		{"started", 1, agent.TypeExecStarted, agent.ExecStarted{Pid: 42},
			"000000270000000100a3617607617471636f72652e657865632e73746172746564617047a163706964182a"},
		{"stdout", 1, agent.TypeExecStdout, agent.Data{Data: []byte("hi\n")},
			"000000290000000100a3617607617470636f72652e657865632e7374646f757461704aa164646174614368690a"},
		{"exited 0", 1, agent.TypeExecExited, agent.ExecExited{Code: 0},
			"000000260000000101a3617607617470636f72652e657865632e657869746564617047a164636f646500"},
		{"exited -1", 1, agent.TypeExecExited, agent.ExecExited{Code: -1},
			"000000260000000101a3617607617470636f72652e657865632e657869746564617047a164636f646520"},
		{"failed", 1, agent.TypeExecFailed, agent.ExecFailed{Kind: "not_found", Errno: ptr(int32(2)), ErrnoName: ptr("ENOENT"), Message: "nope: not found", Stage: ptr("execvp")},
			"0000006e0000000101a3617607617470636f72652e657865632e6661696c65646170584ea5646b696e64696e6f745f666f756e64656572726e6f026a6572726e6f5f6e616d6566454e4f454e54676d6573736167656f6e6f70653a206e6f7420666f756e6465737461676566657865637670"},
		{"fs handle", 1, agent.TypeFsResponse, agent.FsResponse{OK: true, Data: &agent.FsData{Handle: ptr(uint64(1))}},
			"0000003a0000000101a3617607617470636f72652e66732e726573706f6e73656170581aa3626f6bf5656572726f72f66464617461a16648616e646c6501"},
		{"fs ok", 2, agent.TypeFsResponse, agent.FsResponse{OK: true},
			"000000310000000201a3617607617470636f72652e66732e726573706f6e7365617052a3626f6bf5656572726f72f66464617461f6"},
		{"fs data", 2, agent.TypeFsData, agent.Data{Data: []byte("hello")},
			"000000270000000200a361760761746c636f72652e66732e6461746161704ca164646174614568656c6c6f"},
		{"stat", 1, agent.TypeFsResponse, agent.FsResponse{OK: true, Data: &agent.FsData{Stat: &agent.EntryInfo{
			Path: "/a.txt", Kind: "file", Size: 5, Mode: 0o100644, Modified: ptr(int64(1767225600)), Atime: ptr(int64(1767225600)), Mtime: ptr(int64(1767225600))}}},
			"0000008a0000000101a3617607617470636f72652e66732e726573706f6e73656170586aa3626f6bf5656572726f72f66464617461a16453746174a96470617468662f612e747874646b696e646466696c656473697a6505646d6f64651981a4686d6f6469666965641a6955b90063756964006367696400656174696d651a6955b900656d74696d651a6955b900"},
	} {
		got, err := agent.AppendFrame(nil, c.id, agent.FlagsOf(c.typ), c.typ, c.payload)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if want := unhex(t, c.want); !bytes.Equal(got, want) {
			t.Errorf("%s:\n got %x\nwant %x", c.name, got, want)
		}
		if d, ok := c.payload.(agent.Data); ok {
			if fast := agent.AppendDataFrame(nil, c.id, agent.FlagsOf(c.typ), c.typ, d.Data); !bytes.Equal(fast, got) {
				t.Errorf("%s: AppendDataFrame\n got %x\nwant %x", c.name, fast, got)
			}
		}
	}
	if got := agent.Prologue(1, 0x80000000); !bytes.Equal(got, unhex(t, "0000000180000000")) {
		t.Errorf("prologue %x", got)
	}
}

// A data frame of the largest chunk has the size the protocol notes give
// (3145774 bytes with its length prefix) and round-trips.
func TestLargeDataFrame(t *testing.T) {
	data := bytes.Repeat([]byte{7}, agent.ChunkSize)
	f := agent.AppendDataFrame(nil, 9, 0, agent.TypeFsData, data)
	if len(f) != 3145774 {
		t.Fatalf("frame of %d bytes, want 3145774", len(f))
	}
	got, err := agent.ReadFrame(bytes.NewReader(f))
	if err != nil {
		t.Fatal(err)
	}
	back, err := agent.DecodeData(got.Payload)
	if err != nil || !bytes.Equal(back, data) || got.ID != 9 || got.Type != agent.TypeFsData {
		t.Fatalf("round trip: id %d type %s err %v equal %v", got.ID, got.Type, err, bytes.Equal(back, data))
	}
}

// The frames the real 0.6.18 client sent (captured) decode into what it meant.
func TestClientFramesDecode(t *testing.T) {
	read := func(h string) agent.Frame {
		t.Helper()
		f, err := agent.ReadFrame(bytes.NewReader(unhex(t, h)))
		if err != nil {
			t.Fatalf("%s: %v", h, err)
		}
		if f.V != 7 {
			t.Fatalf("v %d", f.V)
		}
		return f
	}
	f := read("000000650000000102a3617607617471636f72652e657865632e7265717565737461705844a963636d64646563686f64617267738162686963656e768163413d3163637764612f6475736572f663747479f464726f7773181864636f6c73185067726c696d69747380")
	var req agent.ExecRequest
	if err := agent.Decode(f.Payload, &req); err != nil {
		t.Fatal(err)
	}
	want := agent.ExecRequest{Cmd: "echo", Args: []string{"hi"}, Env: []string{"A=1"}, Cwd: ptr("/"), Rows: ptr(uint16(24)), Cols: ptr(uint16(80)), Rlimits: []agent.Rlimit{}}
	if f.ID != 1 || f.Flags != agent.FlagSessionStart || f.Type != agent.TypeExecRequest || !reflect.DeepEqual(req, want) {
		t.Fatalf("exec request: %+v %+v", f, req)
	}

	for h, want := range map[string]string{
		"000000290000000100a361760761746f636f72652e657865632e737464696e61704ba16464617461446162630a": "abc\n",
		"000000250000000100a361760761746f636f72652e657865632e737464696e617047a1646461746140":         "",
		"000000270000000200a361760761746c636f72652e66732e6461746161704ca164646174614568656c6c6f":     "hello",
	} {
		f := read(h)
		data, err := agent.DecodeData(f.Payload)
		if err != nil || string(data) != want || f.Flags != 0 {
			t.Errorf("%s: %q %v", f.Type, data, err)
		}
	}
	var sig agent.ExecSignal
	if err := agent.Decode(read("000000280000000100a3617607617470636f72652e657865632e7369676e616c617049a1667369676e616c09").Payload, &sig); err != nil || sig.Signal != 9 {
		t.Errorf("signal %+v %v", sig, err)
	}
	var rs agent.ExecResize
	if err := agent.Decode(read("0000002e0000000100a3617607617470636f72652e657865632e726573697a6561704fa264726f7773182864636f6c731878").Payload, &rs); err != nil || rs != (agent.ExecResize{Rows: 40, Cols: 120}) {
		t.Errorf("resize %+v %v", rs, err)
	}

	op := func(h string, name string, args any) {
		t.Helper()
		f := read(h)
		if f.Type != agent.TypeFsRequest || f.Flags != agent.FlagSessionStart {
			t.Fatalf("%s: type %s flags %d", name, f.Type, f.Flags)
		}
		var r agent.FsRequest
		if err := agent.Decode(f.Payload, &r); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if r.Op.Name != name {
			t.Fatalf("op %s, want %s", r.Op.Name, name)
		}
		got := reflect.New(reflect.TypeOf(args))
		if err := r.Op.Args(got.Interface()); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got.Elem().Interface(), args) {
			t.Errorf("%s: %+v, want %+v", name, got.Elem().Interface(), args)
		}
		// And msb's own encoding of the operation is the client's.
		o, err := agent.NewFsOp(name, args)
		if err != nil {
			t.Fatal(err)
		}
		again, err := agent.AppendFrame(nil, f.ID, agent.FlagsOf(agent.TypeFsRequest), agent.TypeFsRequest, agent.FsRequest{Op: o})
		if err != nil || !bytes.Equal(again, unhex(t, h)) {
			t.Errorf("%s re-encoded:\n got %x\nwant %s (%v)", name, again, h, err)
		}
	}
	op("0000007c0000000102a361760761746f636f72652e66732e726571756573746170585da1626f70a1684f70656e46696c65a26470617468662f612e747874676f7074696f6e73a76472656164f4657772697465f566617070656e64f466637265617465f5687472756e63617465f56a6372656174655f6e6577f4646d6f6465f6",
		"OpenFile", agent.OpenFile{Path: "/a.txt", Options: agent.OpenOptions{Write: true, Create: true, Truncate: true}})
	op("000000400000000202a361760761746f636f72652e66732e7265717565737461705821a1626f70a1655772697465a36668616e646c6501666f666673657400636c656e05",
		"Write", agent.Write{Handle: 1, Len: ptr(uint64(5))})
	op("0000003f0000000202a361760761746f636f72652e66732e7265717565737461705820a1626f70a16452656164a36668616e646c6501666f666673657400636c656ef6",
		"Read", agent.Read{Handle: 1})
	op("000000390000000302a361760761746f636f72652e66732e726571756573746170581aa1626f70a16b436c6f736548616e646c65a16668616e646c6501",
		"CloseHandle", agent.CloseHandle{Handle: 1})
	op("0000004b0000000102a361760761746f636f72652e66732e726571756573746170582ca1626f70a16453746174a264706174686b2f64312f6269672e62696e6e666f6c6c6f775f73796d6c696e6bf5",
		"Stat", agent.Stat{Path: "/d1/big.bin", FollowSymlink: true})
	op("000000320000000102a361760761746f636f72652e66732e72657175657374617054a1626f70a1644c697374a16470617468632f6431",
		"List", agent.List{Path: "/d1"})
	op("000000430000000102a361760761746f636f72652e66732e7265717565737461705824a1626f70a16952656d6f7665446972a26470617468632f643169726563757273697665f5",
		"RemoveDir", agent.RemoveDir{Path: "/d1", Recursive: true})
}

// Frames may arrive split anywhere or several to a read; the reader keeps
// in step.
func TestReadFrameAcrossReads(t *testing.T) {
	var stream []byte
	for i := range 5 {
		stream = agent.AppendDataFrame(stream, uint32(i+1), 0, agent.TypeExecStdin, []byte(strings.Repeat("x", i*100)))
	}
	r := io.MultiReader(iotestOneByte(bytes.NewReader(stream)))
	for i := range 5 {
		f, err := agent.ReadFrame(r)
		if err != nil || f.ID != uint32(i+1) {
			t.Fatalf("frame %d: %+v %v", i, f, err)
		}
		if d, _ := agent.DecodeData(f.Payload); len(d) != i*100 {
			t.Fatalf("frame %d: %d bytes", i, len(d))
		}
	}
	if _, err := agent.ReadFrame(r); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
}

type oneByte struct{ r io.Reader }

func (o oneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

func iotestOneByte(r io.Reader) io.Reader { return oneByte{r} }

// Hostile frames: each is refused with an error that says what is wrong
// and whether the stream is still in step.
func TestHostileFrames(t *testing.T) {
	frame := func(id uint32, body []byte) []byte {
		b := binary.BigEndian.AppendUint32(nil, uint32(5+len(body)))
		b = binary.BigEndian.AppendUint32(b, id)
		return append(append(b, 2), body...)
	}
	good := agent.AppendDataFrame(nil, 3, 0, agent.TypeExecStdin, []byte("ok"))

	// Over the limit: the id is known, the stream is out of step.
	big := binary.BigEndian.AppendUint32(nil, agent.MaxFrame+1)
	big = binary.BigEndian.AppendUint32(big, 77)
	_, err := agent.ReadFrame(bytes.NewReader(append(big, 2)))
	var fe *agent.FrameError
	if !errors.Is(err, agent.ErrFrameTooLarge) || !errors.As(err, &fe) || fe.ID != 77 {
		t.Fatalf("oversized frame: %v", err)
	}
	// Shorter than its header.
	if _, err := agent.ReadFrame(bytes.NewReader([]byte{0, 0, 0, 3, 1, 2, 3})); !errors.Is(err, agent.ErrFrameTooLarge) {
		t.Fatalf("short frame: %v", err)
	}
	// Cut off inside a frame.
	if _, err := agent.ReadFrame(bytes.NewReader(good[:len(good)-1])); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated frame: %v", err)
	}
	// Whole frames with bad envelopes: refused, and the next frame reads.
	for name, body := range map[string][]byte{
		"not CBOR":           {0xff, 0xfe},
		"not a map":          {0x83, 1, 2, 3},
		"no p":               {0xa2, 0x61, 'v', 7, 0x61, 't', 0x61, 'x'},
		"p is text":          {0xa3, 0x61, 'v', 7, 0x61, 't', 0x61, 'x', 0x61, 'p', 0x61, 'y'},
		"length past end":    {0xa3, 0x61, 'v', 7, 0x61, 't', 0x7a, 0xff, 0xff, 0xff, 0xff},
		"indefinite map":     {0xbf, 0xff},
		"trailing bytes":     append(agent.AppendDataFrame(nil, 0, 0, "t", nil)[9:], 0),
		"deeply nested junk": append([]byte{0xa4, 0x61, 'q'}, bytes.Repeat([]byte{0x81}, 100)...),
		"empty":              {},
	} {
		r := bytes.NewReader(append(frame(5, body), good...))
		_, err := agent.ReadFrame(r)
		if !errors.As(err, &fe) || fe.ID != 5 || errors.Is(err, agent.ErrFrameTooLarge) {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if f, err := agent.ReadFrame(r); err != nil || f.ID != 3 {
			t.Errorf("%s: next frame: %+v %v", name, f, err)
		}
	}
	// Payloads that do not fit their type.
	for name, p := range map[string][]byte{
		"stdin not bytes": {0xa1, 0x64, 'd', 'a', 't', 'a', 0x63, 'a', 'b', 'c'},
		"garbage":         {0x1c},
	} {
		if _, err := agent.DecodeData(p); err == nil {
			t.Errorf("%s decoded", name)
		}
	}
	var req agent.ExecRequest
	if err := agent.Decode([]byte{0xa1, 0x63, 'c', 'm', 'd', 0x05}, &req); err == nil {
		t.Error("exec request with a numeric cmd decoded")
	}
	var fr agent.FsRequest
	if err := agent.Decode([]byte{0xa1, 0x62, 'o', 'p', 0xa0}, &fr); err == nil {
		t.Error("fs request with no operation decoded")
	}
}

// FuzzReadFrame: no input makes the reader panic, loop, or return a frame
// longer than the limit.
func FuzzReadFrame(f *testing.F) {
	f.Add(agent.AppendDataFrame(nil, 1, 2, agent.TypeExecStdin, []byte("x")))
	f.Add([]byte{0, 0, 0, 6, 0, 0, 0, 1, 0, 0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		r := bytes.NewReader(b)
		for range 100 {
			fr, err := agent.ReadFrame(r)
			if err != nil {
				var fe *agent.FrameError
				if errors.As(err, &fe) && !errors.Is(err, agent.ErrFrameTooLarge) {
					continue
				}
				return
			}
			if len(fr.Payload) > agent.MaxFrame {
				t.Fatal("payload over the limit")
			}
			var req agent.FsRequest
			_ = agent.Decode(fr.Payload, &req)
			_, _ = agent.DecodeData(fr.Payload)
		}
	})
}
