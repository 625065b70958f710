package portal_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/portal"
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
			if json.Unmarshal(line, &req) != nil || req.Op == "cancel" {
				continue
			}
			go behave(req.ID, peer)
		}
	}()
	c := portal.NewClient(conns[0])
	t.Cleanup(func() { c.Close() })
	return c
}

func frame(v any) []byte {
	b, _ := json.Marshal(v)
	return append(b, '\n')
}

// heapWatch samples the heap while f runs and returns the peak.
func heapWatch(f func()) uint64 {
	runtime.GC()
	var peak atomic.Uint64
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapAlloc > peak.Load() {
				peak.Store(ms.HeapAlloc)
			}
			select {
			case <-stop:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()
	f()
	close(stop)
	<-done
	return peak.Load()
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
	peak := heapWatch(func() {
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
		c := portal.NewClient(ours)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		res, err := c.Exec(ctx, sandbox.ExecRequest{Command: "x"})
		if err == nil && outputBytes(res.Output) > sandbox.MaxOutput+8<<10 {
			t.Fatalf("output over the cap")
		}
	})
}
