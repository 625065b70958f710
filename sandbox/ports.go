package sandbox

import (
	"context"
	"errors"
	"io"
	"net"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/errdefs"
)

// forwarder listens on one host port and forwards every connection to a
// port inside a sandbox.
type forwarder struct {
	ln    net.Listener
	spec  Port
	dial  func(ctx context.Context) (net.Conn, error)
	ctx   context.Context
	stop  context.CancelFunc
	wg    sync.WaitGroup
	mu    sync.Mutex
	conns map[net.Conn]struct{}
}

// listenPorts opens the host side of every port forward. A host port in
// use is errdefs.ErrConflict; everything opened is closed again on failure.
func (s *Service) listenPorts(ports []Port) ([]*forwarder, error) {
	var out []*forwarder
	for _, p := range ports {
		addr := net.JoinHostPort(s.opts.PortBind, strconv.Itoa(p.Host))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			closeForwarders(out)
			if errors.Is(err, syscall.EADDRINUSE) {
				return nil, errdefs.Conflictf("config.ports: host port %d is already in use on %s: choose another host port", p.Host, s.opts.PortBind)
			}
			if errors.Is(err, syscall.EACCES) {
				return nil, errdefs.Conflictf("config.ports: the server may not listen on %s: choose a host port of 1024 or more", addr)
			}
			return nil, errdefs.Conflictf("config.ports: cannot listen on %s: %v", addr, err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		out = append(out, &forwarder{ln: ln, spec: p, ctx: ctx, stop: cancel, conns: map[net.Conn]struct{}{}})
	}
	return out, nil
}

// serveForwarders starts forwarding to sandbox id through the engine.
func (s *Service) serveForwarders(id ID, fws []*forwarder) {
	dialer, _ := s.opts.Engine.(Dialer)
	for _, f := range fws {
		guest := f.spec.Guest
		f.dial = func(ctx context.Context) (net.Conn, error) { return dialer.DialSandbox(ctx, id, guest) }
		f.wg.Add(1)
		go f.serve(s, id)
	}
}

func (f *forwarder) serve(s *Service, id ID) {
	defer f.wg.Done()
	for {
		c, err := f.ln.Accept()
		if err != nil {
			if f.ctx.Err() != nil {
				return
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			time.Sleep(10 * time.Millisecond) // e.g. out of file descriptors
			continue
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			f.forward(s, id, c)
		}()
	}
}

// track registers c so that close can end it; false once closing.
func (f *forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		return true
	}
	if f.ctx.Err() != nil {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *forwarder) forward(s *Service, id ID, c net.Conn) {
	defer c.Close()
	if !f.track(c, true) {
		return
	}
	defer f.track(c, false)
	ctx, cancel := context.WithTimeout(f.ctx, 10*time.Second)
	in, err := f.dial(ctx)
	cancel()
	if err != nil {
		s.opts.Log.Debug("port forward: dial", "sandbox", id.String(), "port", f.spec.String(), "err", err)
		return
	}
	defer in.Close()
	if !f.track(in, true) {
		return
	}
	defer f.track(in, false)
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn) {
		_, _ = io.Copy(dst, src)
		if tc, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(in, c)
	go pipe(c, in)
	<-done
	<-done
}

// closeForwarders stops listening, ends every forwarded connection and
// waits until the forwarders are gone: the host ports are free after it.
func closeForwarders(fws []*forwarder) {
	for _, f := range fws {
		f.stop()
		f.ln.Close()
		f.mu.Lock()
		for c := range f.conns {
			c.Close()
		}
		f.mu.Unlock()
	}
	for _, f := range fws {
		f.wg.Wait()
	}
}
