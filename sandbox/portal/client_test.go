package portal_test

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
)

// fakePortal is a hostile portal: a peer on a real socket that answers
// every request with whatever behave writes.
func fakePortal(t *testing.T, behave func(id uint64, w net.Conn)) *portal.Client {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	conns := make([]net.Conn, 2)
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "fake")
		conns[i], err = net.FileConn(f)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
	}
	peer := conns[1]
	go func() {
		defer peer.Close()
		r := bufio.NewReader(peer)
		for {
			line, err := r.ReadBytes('\n')
			if err != nil {
				return
			}
			var req struct {
				ID uint64 `json:"id"`
				Op string `json:"op"`
			}
			if json.Unmarshal(line, &req) != nil {
				continue
			}
			switch req.Op {
			case "cancel", "credit", "detach", "signal", "resize":
				continue // about a call in progress
			}
			go behave(req.ID, peer)
		}
	}()
	c := portal.NewClient(conns[0], nil)
	t.Cleanup(func() { c.Close() })
	return c
}

func frame(v any) []byte {
	b, _ := json.Marshal(v)
	return append(b, '\n')
}

func TestClientCapsAFloodingPortal(t *testing.T) {
	// Not parallel: it measures the process's heap.
	const frames = 96 // 96 MiB of output
	c := fakePortal(t, func(id uint64, w net.Conn) {
		f := frame(map[string]any{"id": id, "stream": "stdout", "text": strings.Repeat("z", 1<<20-1)})
		for range frames {
			if _, err := w.Write(f); err != nil {
				return
			}
		}
		w.Write(frame(map[string]any{"id": id, "done": true, "exit_code": 0}))
	})
	var res sandbox.ExecResult
	var err error
	peak := sandboxtest.HeapPeak(func() {
		res, err = c.Exec(context.Background(), sandbox.ExecRequest{Command: "flood"})
	})
	if err != nil {
		t.Fatal(err)
	}
	if lastLine(res.Output) != errl(sandbox.OutputCutNotice) {
		t.Errorf("last line %.80q, want the cut notice", lastLine(res.Output))
	}
	if n := outputBytes(res.Output); n > sandbox.MaxOutput+8<<10 {
		t.Errorf("kept %d bytes, more than MaxOutput", n)
	}
	if peak > 64<<20 {
		t.Errorf("heap peaked at %d MiB for %d MiB sent: not bounded", peak>>20, frames)
	}
	t.Logf("heap peak %d MiB for %d MiB sent", peak>>20, frames)
}

func TestClientCapsEmptyLineFlood(t *testing.T) {
	// Not parallel: it measures the process's heap.
	if testing.Short() {
		t.Skip("sends a million frames")
	}
	c := fakePortal(t, func(id uint64, w net.Conn) {
		bw := bufio.NewWriterSize(w, 1<<20)
		f := frame(map[string]any{"id": id, "stream": "stderr"})
		for range 1<<20 + 100 {
			if _, err := bw.Write(f); err != nil {
				return
			}
		}
		bw.Write(frame(map[string]any{"id": id, "done": true, "status": "success"}))
		bw.Flush()
	})
	res, err := c.RunCode(context.Background(), sandbox.Python, "", 0)
	if err != nil {
		t.Fatal(err)
	}
	if lastLine(res.Output) != errl(sandbox.OutputCutNotice) {
		t.Errorf("last line %q, want the cut notice", lastLine(res.Output))
	}
	if len(res.Output) > 1<<20+32 {
		t.Errorf("kept %d lines", len(res.Output))
	}
}

func TestClientRejectsBadFrames(t *testing.T) {
	t.Parallel()
	cases := map[string]func(id uint64) []byte{
		"too large": func(id uint64) []byte { return []byte(strings.Repeat("x", 64<<20)) },
		"not json":  func(id uint64) []byte { return []byte("{\"id\":1,\"stream\":\n") },
		"unknown field": func(id uint64) []byte {
			return frame(map[string]any{"id": id, "stream": "stdout", "text": "x", "evil": true})
		},
		"bad stream": func(id uint64) []byte {
			return frame(map[string]any{"id": id, "stream": "stdin", "text": "x"})
		},
		"bad status": func(id uint64) []byte { return frame(map[string]any{"id": id, "done": true, "status": "pwned"}) },
	}
	for name, bad := range cases {
		t.Run(name, func(t *testing.T) {
			c := fakePortal(t, func(id uint64, w net.Conn) { w.Write(bad(id)) })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			_, err := c.RunCode(ctx, sandbox.Python, "1", 0)
			if !errors.Is(err, portal.ErrClosed) || !errors.Is(err, errdefs.ErrUnavailable) {
				t.Fatalf("err = %v, want ErrClosed and ErrUnavailable", err)
			}
			t.Log(err)
			// Every later call fails at once.
			if err := c.Ping(ctx); !errors.Is(err, portal.ErrClosed) {
				t.Errorf("ping after a bad frame: %v", err)
			}
		})
	}
}

func TestClientIgnoresStrayFramesAndBoundsErrors(t *testing.T) {
	t.Parallel()
	c := fakePortal(t, func(id uint64, w net.Conn) {
		w.Write(frame(map[string]any{"id": id + 1000, "stream": "stdout", "text": "not yours"}))
		w.Write(frame(map[string]any{"id": id + 1000, "done": true}))
		w.Write(frame(map[string]any{"id": id, "stream": "stdout", "text": "yours"}))
		w.Write(frame(map[string]any{"id": id, "done": true, "error": strings.Repeat("e", 100000), "invalid": true}))
	})
	_, err := c.Exec(context.Background(), sandbox.ExecRequest{Command: "x"})
	if !errors.Is(err, errdefs.ErrInvalid) || len(err.Error()) > 2000 {
		t.Errorf("err (%d bytes) = %.200v", len(err.Error()), err)
	}
}

func TestClientSilentPortal(t *testing.T) {
	t.Parallel()
	c := fakePortal(t, func(uint64, net.Conn) {})
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := c.Exec(ctx, sandbox.ExecRequest{Command: "x"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want context.DeadlineExceeded", err)
	}
	if err := c.Ping(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ping: %v", err)
	}
	c.Close()
	if err := c.Ping(context.Background()); !errors.Is(err, portal.ErrClosed) {
		t.Errorf("ping after Close: %v", err)
	}
}

// dataFrame is a data frame as the portal sends it.
func dataFrame(id uint64, kind byte, n int) []byte {
	b := make([]byte, 14+n)
	binary.BigEndian.PutUint64(b[1:9], id)
	b[9] = kind
	binary.BigEndian.PutUint32(b[10:14], uint32(n))
	return b
}

func TestClientRejectsBadStreamFrames(t *testing.T) {
	t.Parallel()
	for name, bad := range map[string]func(id uint64) []byte{
		"data beyond the window": func(id uint64) []byte {
			return append(dataFrame(id, 1, 200<<10), dataFrame(id, 2, 100<<10)...)
		},
		"data too long":       func(id uint64) []byte { return dataFrame(id, 1, 4<<20) },
		"data of a file read": func(id uint64) []byte { return dataFrame(id, 4, 10) },
		"started twice": func(id uint64) []byte {
			return append(frame(map[string]any{"id": id, "started": true, "pid": 3}), frame(map[string]any{"id": id, "started": true})...)
		},
		"unknown failure": func(id uint64) []byte {
			return frame(map[string]any{"id": id, "done": true, "fail": map[string]any{"kind": "pwned", "message": "x"}})
		},
		"negative credit":      func(id uint64) []byte { return frame(map[string]any{"id": id, "credit": -5}) },
		"lines on a stream":    func(id uint64) []byte { return frame(map[string]any{"id": id, "stream": "stdout", "text": "x"}) },
		"truncated data frame": func(id uint64) []byte { return dataFrame(id, 1, 100)[:50] },
	} {
		t.Run(name, func(t *testing.T) {
			c := fakePortal(t, func(id uint64, w net.Conn) {
				w.Write(bad(id))
				if name == "truncated data frame" {
					w.Close()
				}
			})
			release := make(chan struct{})
			var last sandbox.ExecEvent
			proc, err := c.Stream(context.Background(), sandbox.ExecSpec{Command: "x"}, false, func(ev sandbox.ExecEvent) {
				if ev.Kind == sandbox.EventStdout {
					<-release // takes nothing more: no credit comes back
				}
				last = ev
			})
			if err != nil {
				t.Fatal(err)
			}
			for deadline := time.Now().Add(10 * time.Second); ; {
				ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
				err := c.Ping(ctx)
				cancel()
				if errors.Is(err, portal.ErrClosed) {
					break
				}
				if time.Now().After(deadline) {
					close(release)
					t.Fatalf("ping: %v, want ErrClosed", err)
				}
			}
			close(release)
			select {
			case <-proc.Done():
			case <-time.After(10 * time.Second):
				t.Fatal("no last event after the connection closed")
			}
			if last.Kind != sandbox.EventFailed && last.Kind != sandbox.EventExited {
				t.Errorf("last event %+v", last)
			}
		})
	}

	// Data on a call that takes none (a buffered command) closes too.
	c := fakePortal(t, func(id uint64, w net.Conn) { w.Write(dataFrame(id, 1, 10)) })
	if _, err := c.Exec(context.Background(), sandbox.ExecRequest{Command: "x"}); !errors.Is(err, portal.ErrClosed) {
		t.Errorf("data on an exec: %v, want ErrClosed", err)
	}
}

// FuzzClientFrames feeds arbitrary bytes to a Client as the portal's side
// of the connection: whatever they are, every call must end (with a
// result or an error) and nothing may panic.
func FuzzClientFrames(f *testing.F) {
	f.Add([]byte(`{"id":1,"stream":"stdout","text":"hi"}` + "\n" + `{"id":1,"done":true,"exit_code":3}` + "\n"))
	f.Add([]byte(`{"id":1,"done":true,"status":"success"}` + "\n"))
	f.Add([]byte(`{"id":1,"stream":"stdout","text":"\ud800"}` + "\n"))
	f.Add([]byte(`{"id":1,"done":true,"error":"x","invalid":true}` + "\n"))
	f.Add([]byte(`{"id":1}{"id":2}` + "\n"))
	f.Add([]byte("\n\n\n"))
	f.Add([]byte(`[1,2]` + "\n" + `null` + "\n"))
	f.Add(append(dataFrame(1, 1, 3), `{"id":1,"done":true}`+"\n"...))
	f.Add(append(dataFrame(9, 4, 3), `{"id":1,"done":true,"fail":{"errno":2,"message":"x"}}`+"\n"...))
	f.Fuzz(func(t *testing.T, data []byte) {
		ours, theirs := net.Pipe()
		go func() {
			defer theirs.Close()
			r := bufio.NewReader(theirs)
			if _, err := r.ReadBytes('\n'); err != nil {
				return
			}
			go io.Copy(io.Discard, r) // swallow the cancel, if any
			theirs.Write(data)
		}()
		c := portal.NewClient(ours, nil)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := c.Exec(ctx, sandbox.ExecRequest{Command: "x"})
		if err == nil && outputBytes(res.Output) > sandbox.MaxOutput+8<<10 {
			t.Fatalf("output over the cap")
		}
	})
}
