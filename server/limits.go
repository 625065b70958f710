package server

import (
	"errors"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"syscall"
	"time"
)

// Connection limits: no tenant can take every file descriptor of the
// server by opening connections, nor hold one forever by sending a body
// slowly.
const (
	// MaxConns bounds the connections open at once, from everyone.
	MaxConns = 8192
	// MaxConnsPerAddr bounds those from one remote address.
	MaxConnsPerAddr = 512
	// BodyTimeout is how long a request's body may take to arrive; a
	// handler that streams a long body (an upload) extends its own.
	BodyTimeout = 60 * time.Second
	// wantFiles is the descriptor limit the server asks for at start.
	wantFiles = 1 << 20
)

// limitListener accepts at most MaxConns connections at once, and
// MaxConnsPerAddr from one address; a connection over either is closed
// at once, so it costs its sender, not the server.
type limitListener struct {
	net.Listener
	total, perAddr int
	log            *slog.Logger

	mu     sync.Mutex
	open   int
	byAddr map[string]int
	warned time.Time
}

func newLimitListener(ln net.Listener, total, perAddr int, log *slog.Logger) *limitListener {
	return &limitListener{Listener: ln, total: total, perAddr: perAddr, log: log, byAddr: map[string]int{}}
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		addr := remoteHost(c.RemoteAddr())
		l.mu.Lock()
		over := l.open >= l.total || l.byAddr[addr] >= l.perAddr
		if !over {
			l.open++
			l.byAddr[addr]++
		}
		warn := over && time.Since(l.warned) > time.Minute
		if warn {
			l.warned = time.Now()
		}
		l.mu.Unlock()
		if over {
			if warn {
				l.log.Warn("connection refused: too many open", "remote", addr, "open", l.open, "limit", l.total, "per_address", l.perAddr)
			}
			c.Close()
			continue
		}
		return &countedConn{Conn: c, l: l, addr: addr}, nil
	}
}

func (l *limitListener) release(addr string) {
	l.mu.Lock()
	l.open--
	if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
		delete(l.byAddr, addr)
	}
	l.mu.Unlock()
}

// countedConn gives its slot back when closed, once.
type countedConn struct {
	net.Conn
	l    *limitListener
	addr string
	once sync.Once
}

func (c *countedConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() { c.l.release(c.addr) })
	return err
}

func remoteHost(a net.Addr) string {
	if t, ok := a.(*net.TCPAddr); ok {
		return t.IP.String()
	}
	h, _, err := net.SplitHostPort(a.String())
	if err != nil {
		return a.String()
	}
	return h
}

// withBodyDeadline gives every request's body timeout to arrive.
func withBodyDeadline(h http.Handler, timeout time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body != nil && r.Body != http.NoBody {
			// Not every writer can (an HTTP/2 stream, a test recorder):
			// then the server's own timeouts are all there is.
			if err := http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout)); err != nil && !errors.Is(err, http.ErrNotSupported) {
				http.Error(w, "cannot set a read deadline", http.StatusInternalServerError)
				return
			}
		}
		h.ServeHTTP(w, r)
	})
}

// raiseFileLimit raises the server's descriptor limit as far as the
// kernel allows, up to wantFiles: every connection and every sandbox
// (its portal socket, cgroup files, forwarded ports) holds some. It
// returns the limit now in force.
func raiseFileLimit() uint64 {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0
	}
	want := max(lim.Cur, uint64(wantFiles))
	if want > lim.Max {
		// Root may raise the hard limit too (up to fs.nr_open).
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: want}); err == nil {
			return want
		}
		want = lim.Max
	}
	if want > lim.Cur {
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: want, Max: lim.Max}); err == nil {
			return want
		}
	}
	return lim.Cur
}
