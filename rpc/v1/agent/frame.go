// Package agent is the wire of the microsandbox guest agent's protocol as
// the v1 API's agent WebSocket carries it: length-prefixed frames, each
// holding a CBOR envelope {"v", "t", "p"} whose "p" is the CBOR encoding
// of the message's payload. It knows nothing of sandboxes or sockets:
// rpc/v1 reads frames from the socket with ReadFrame, decodes payloads
// into the types of messages.go, and writes replies with AppendFrame.
//
// The layout (see docs/api.md and the upstream protocol crate):
//
//	[len u32 BE = 5 + body][id u32 BE][flags u8][body: CBOR envelope]
//
// with len at most MaxFrame. Encodings are byte-exact to the upstream
// agent's (ciborium with serde): maps with text keys in declaration
// order, integers in their shortest form, byte strings for data.
package agent

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Frame flags.
const (
	FlagTerminal     = 0x01 // the last frame of a correlation id
	FlagSessionStart = 0x02 // a request that opens a correlation id
	FlagShutdown     = 0x04
)

// Limits and constants of the protocol.
const (
	// MaxFrame is the most a frame may hold after its length prefix.
	MaxFrame = 4 << 20
	// ChunkSize is the most data one core.fs.data frame carries.
	ChunkSize = 3 << 20
	// Version is the protocol generation msb speaks (core.ready's "v",
	// and every frame's).
	Version = 7
	// headerLen is the id and flags that follow the length prefix.
	headerLen = 5
)

// Frame is one frame as read: its correlation id, flags, and envelope.
type Frame struct {
	ID    uint32
	Flags uint8
	V     uint64 // the envelope's generation (the client always sends 7)
	Type  string
	// Payload is the CBOR encoding of the message's payload. It may
	// share memory with the frame as read.
	Payload []byte
}

// ErrFrameTooLarge is wrapped by ReadFrame's error for a frame longer than
// MaxFrame; the stream cannot be read further.
var ErrFrameTooLarge = errors.New("frame too large")

// FrameError is a frame that was read whole but whose envelope is not
// valid: the stream stays in step, and ID says which correlation id the
// bad frame named.
type FrameError struct {
	ID    uint32
	Flags uint8
	Err   error
}

func (e *FrameError) Error() string {
	return fmt.Sprintf("frame on id %d: %v", e.ID, e.Err)
}

func (e *FrameError) Unwrap() error { return e.Err }

// ReadFrame reads one frame from r. Errors: io.EOF at a clean end of the
// stream (between frames); io.ErrUnexpectedEOF when it ends inside one;
// an error wrapping ErrFrameTooLarge (with the frame's id, when it could
// be read, as a *FrameError) for a length over MaxFrame or under the
// header, after which the stream is out of step; a *FrameError for a
// whole frame whose envelope is not valid, after which reading may go on.
func ReadFrame(r io.Reader) (Frame, error) {
	var prefix [4 + headerLen]byte
	if _, err := io.ReadFull(r, prefix[:4]); err != nil {
		return Frame{}, err
	}
	n := binary.BigEndian.Uint32(prefix[:4])
	if n < headerLen {
		return Frame{}, fmt.Errorf("frame length %d is shorter than its %d-byte header: %w", n, headerLen, ErrFrameTooLarge)
	}
	if n > MaxFrame {
		// Read the id, so that the refusal can name it.
		if _, err := io.ReadFull(r, prefix[4:]); err != nil {
			return Frame{}, fmt.Errorf("frame of %d bytes is over the %d-byte limit: %w", n, MaxFrame, ErrFrameTooLarge)
		}
		return Frame{}, &FrameError{ID: binary.BigEndian.Uint32(prefix[4:8]), Flags: prefix[8],
			Err: fmt.Errorf("frame of %d bytes is over the %d-byte limit: %w", n, MaxFrame, ErrFrameTooLarge)}
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(r, buf); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return Frame{}, err
	}
	f := Frame{ID: binary.BigEndian.Uint32(buf[:4]), Flags: buf[4]}
	v, t, p, err := parseEnvelope(buf[headerLen:])
	if err != nil {
		return Frame{}, &FrameError{ID: f.ID, Flags: f.Flags, Err: err}
	}
	f.V, f.Type, f.Payload = v, t, p
	return f, nil
}

// AppendFrame appends the frame of a message of type typ with payload
// (one of the types of messages.go, encoded with the package's CBOR
// options) to dst.
func AppendFrame(dst []byte, id uint32, flags uint8, typ string, payload any) ([]byte, error) {
	p, err := encMode.Marshal(payload)
	if err != nil {
		return dst, fmt.Errorf("encode %s payload: %w", typ, err)
	}
	return appendEnvelope(dst, id, flags, typ, p, nil), nil
}

// AppendDataFrame appends the frame of a message whose payload is
// {"data": data} (core.exec.stdout, core.fs.data, ...) to dst, copying
// data once.
func AppendDataFrame(dst []byte, id uint32, flags uint8, typ string, data []byte) []byte {
	var head [1 + 5 + 9]byte
	h := append(head[:0], 0xa1, 0x64, 'd', 'a', 't', 'a')
	h = appendHead(h, majorBytes, uint64(len(data)))
	return appendEnvelope(dst, id, flags, typ, h, data)
}

// appendEnvelope appends a frame whose payload is p followed by more.
func appendEnvelope(dst []byte, id uint32, flags uint8, typ string, p, more []byte) []byte {
	plen := uint64(len(p) + len(more))
	start := len(dst)
	dst = append(dst, 0, 0, 0, 0)
	dst = binary.BigEndian.AppendUint32(dst, id)
	dst = append(dst, flags)
	dst = append(dst, 0xa3, 0x61, 'v', Version, 0x61, 't')
	dst = appendHead(dst, majorText, uint64(len(typ)))
	dst = append(dst, typ...)
	dst = append(dst, 0x61, 'p')
	dst = appendHead(dst, majorBytes, plen)
	dst = append(dst, p...)
	dst = append(dst, more...)
	binary.BigEndian.PutUint32(dst[start:], uint32(len(dst)-start-4))
	return dst
}

// Prologue is the 8 bytes the server sends first: the correlation ids
// the client may use, idMin inclusive, idMax exclusive.
func Prologue(idMin, idMax uint32) []byte {
	b := binary.BigEndian.AppendUint32(nil, idMin)
	return binary.BigEndian.AppendUint32(b, idMax)
}

// CBOR major types used by the hand-written parts of the codec.
const (
	majorUint  = 0
	majorBytes = 2
	majorText  = 3
	majorMap   = 5
)

// appendHead appends a CBOR item head of major type major and argument n
// in its shortest form.
func appendHead(dst []byte, major byte, n uint64) []byte {
	m := major << 5
	switch {
	case n < 24:
		return append(dst, m|byte(n))
	case n <= 0xff:
		return append(dst, m|24, byte(n))
	case n <= 0xffff:
		return binary.BigEndian.AppendUint16(append(dst, m|25), uint16(n))
	case n <= 0xffffffff:
		return binary.BigEndian.AppendUint32(append(dst, m|26), uint32(n))
	}
	return binary.BigEndian.AppendUint64(append(dst, m|27), n)
}

// parseEnvelope reads the envelope {"v": uint, "t": text, "p": bytes}
// without copying "p". Keys may come in any order; other keys are
// skipped; each of the three must be there once.
func parseEnvelope(b []byte) (v uint64, t string, p []byte, err error) {
	d := decoder{b: b}
	major, n, err := d.head()
	if err != nil {
		return 0, "", nil, fmt.Errorf("envelope: %w", err)
	}
	if major != majorMap {
		return 0, "", nil, errors.New("envelope is not a CBOR map")
	}
	var seen [3]bool
	for range n {
		key, err := d.text()
		if err != nil {
			return 0, "", nil, fmt.Errorf("envelope key: %w", err)
		}
		switch key {
		case "v":
			if v, err = d.uint(); err != nil {
				return 0, "", nil, fmt.Errorf("envelope \"v\": %w", err)
			}
			seen[0] = true
		case "t":
			if t, err = d.text(); err != nil {
				return 0, "", nil, fmt.Errorf("envelope \"t\": %w", err)
			}
			seen[1] = true
		case "p":
			if p, err = d.bytes(); err != nil {
				return 0, "", nil, fmt.Errorf("envelope \"p\": %w", err)
			}
			seen[2] = true
		default:
			if err := d.skip(); err != nil {
				return 0, "", nil, fmt.Errorf("envelope key %q: %w", key, err)
			}
		}
	}
	if d.off != len(b) {
		return 0, "", nil, fmt.Errorf("envelope: %d bytes after the map", len(b)-d.off)
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return 0, "", nil, errors.New(`envelope lacks one of "v", "t", "p"`)
	}
	return v, t, p, nil
}

// decoder reads the few CBOR items the envelope holds, definite lengths
// only (what every encoder of the protocol writes).
type decoder struct {
	b   []byte
	off int
}

var errShort = errors.New("truncated CBOR item")

func (d *decoder) head() (major byte, n uint64, err error) {
	if d.off >= len(d.b) {
		return 0, 0, errShort
	}
	c := d.b[d.off]
	d.off++
	major, ai := c>>5, c&0x1f
	switch {
	case ai < 24:
		return major, uint64(ai), nil
	case ai <= 27:
		size := 1 << (ai - 24)
		if len(d.b)-d.off < size {
			return 0, 0, errShort
		}
		for i := range size {
			n = n<<8 | uint64(d.b[d.off+i])
		}
		d.off += size
		return major, n, nil
	}
	return 0, 0, fmt.Errorf("unsupported CBOR item 0x%02x (indefinite lengths and reserved values are not used by the protocol)", c)
}

func (d *decoder) uint() (uint64, error) {
	major, n, err := d.head()
	if err != nil {
		return 0, err
	}
	if major != majorUint {
		return 0, errors.New("not an unsigned integer")
	}
	return n, nil
}

func (d *decoder) span(want byte) ([]byte, error) {
	major, n, err := d.head()
	if err != nil {
		return nil, err
	}
	if major != want {
		return nil, fmt.Errorf("CBOR major type %d where %d was expected", major, want)
	}
	if n > uint64(len(d.b)-d.off) {
		return nil, errShort
	}
	s := d.b[d.off : d.off+int(n)]
	d.off += int(n)
	return s, nil
}

func (d *decoder) bytes() ([]byte, error) { return d.span(majorBytes) }

func (d *decoder) text() (string, error) {
	s, err := d.span(majorText)
	return string(s), err
}

// skip passes over one item of any type (nesting bounded by its size).
func (d *decoder) skip() error {
	return d.skipDepth(0)
}

func (d *decoder) skipDepth(depth int) error {
	if depth > 32 {
		return errors.New("CBOR nested too deep")
	}
	major, n, err := d.head()
	if err != nil {
		return err
	}
	switch major {
	case 0, 1, 7: // integers, simple values and floats: the head is all
		return nil
	case 2, 3:
		if n > uint64(len(d.b)-d.off) {
			return errShort
		}
		d.off += int(n)
		return nil
	case 4, 5:
		if n > uint64(len(d.b)-d.off) { // every item takes at least a byte
			return errShort
		}
		items := n
		if major == 5 {
			items *= 2
		}
		for range items {
			if err := d.skipDepth(depth + 1); err != nil {
				return err
			}
		}
		return nil
	case 6: // a tag: its item follows
		return d.skipDepth(depth + 1)
	}
	return fmt.Errorf("unknown CBOR major type %d", major)
}
