package main_test

// The integration harness: builds the real msb binary once (static, as the
// README builds it), then runs servers in a temporary home either in this
// process (server.New, Run, Close: most tests) or as the built binary (the
// tests of the process itself: signals, pid files, crashes), and drives
// them over HTTP on loopback. The CLI commands always run the binary.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/config"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/server"
)

// msbBin is the msb binary the tests built, portalBin the portal binary
// it carries (sandbox/linux/portalbin): what in-process servers run in
// their sandboxes, as msb does.
var msbBin, portalBin string

func TestMain(m *testing.M) {
	if bundle := os.Getenv(crunBundleEnv); bundle != "" {
		crunHelper(bundle) // the benchmark's baseline; never returns
	}
	dir, err := os.MkdirTemp("", "msb-bin-")
	if err != nil {
		panic(err)
	}
	if msbBin, portalBin, err = sandboxtest.BuildMSB(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// msbServer is one running server: a process (cmd) or in this process
// (srv).
type msbServer struct {
	t      testing.TB
	home   string
	cmd    *exec.Cmd
	srv    *server.Server
	cancel context.CancelFunc
	out    *sandboxtest.SyncBuffer
	URL    string
	exited chan struct{}
	// clock is the in-process server's clock: the real time plus an
	// offset that Advance moves, so that a test reaches an expiry
	// without waiting for it.
	clock *offsetClock
}

// offsetClock is the real clock moved forward by a test.
type offsetClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *offsetClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

// Advance moves the in-process server's clock forward by d.
func (s *msbServer) Advance(d time.Duration) {
	if s.clock == nil {
		s.t.Fatal("Advance needs a server started with startServer")
	}
	s.clock.mu.Lock()
	s.clock.offset += d
	s.clock.mu.Unlock()
}

// newHome makes a home whose config lets images come from the tests'
// registries, on loopback.
func newHome(t testing.TB) string {
	t.Helper()
	return homeWith(t, "")
}

// homeWith returns a new home whose config.toml is testConfig followed
// by extra.
func homeWith(t testing.TB, extra string) string {
	t.Helper()
	home := t.TempDir()
	if err := os.WriteFile(filepath.Join(home, "config.toml"), []byte(testConfig+extra), 0o600); err != nil {
		t.Fatal(err)
	}
	return home
}

// testConfig is the config.toml of the tests' homes.
const testConfig = "# the tests' registries run on loopback\nregistries = [\"127.0.0.1\"]\n"

// msb runs an msb command in home and returns stdout, stderr and the error.
func msb(t testing.TB, home string, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(msbBin, args...)
	cmd.Env = append(os.Environ(), "MSB_HOME="+home)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	return stdout.String(), stderr.String(), err
}

// keygen makes a key in home and returns it.
func keygen(t testing.TB, home string, args ...string) string {
	t.Helper()
	out, errOut, err := msb(t, home, append([]string{"server", "keygen"}, args...)...)
	if err != nil {
		t.Fatalf("keygen %v: %v\n%s", args, err, errOut)
	}
	key := strings.TrimSpace(out)
	if !strings.HasPrefix(key, "msb_") || strings.Contains(key, "\n") {
		t.Fatalf("keygen printed %q, want one msb_ key", out)
	}
	return key
}

// startServer starts a server in this process, on a free loopback port,
// with the configuration `msb server start --port 0 args...` would have in
// home. It is stopped when the test ends.
func startServer(t testing.TB, home string, args ...string) *msbServer {
	t.Helper()
	cfg, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Port = 0
	var opts server.Options
	clock := &offsetClock{}
	portal := portalBin
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "--dev":
			cfg.Dev = true
		case "--reset-key":
			opts.ResetKey = true
		case "--key":
			i++
			opts.SigningKey = args[i]
		case "--portal": // not a flag of msb: the binary run inside sandboxes
			i++
			portal = args[i]
		case "--body-timeout": // not a flag of msb: how long a request's body may take
			i++
			d, err := time.ParseDuration(args[i])
			if err != nil {
				t.Fatal(err)
			}
			opts.BodyTimeout = d
		case "--clock-offset": // not a flag of msb: the server's clock starts this far ahead
			i++
			d, err := time.ParseDuration(args[i])
			if err != nil {
				t.Fatal(err)
			}
			clock.offset = d
		default:
			t.Fatalf("startServer: unknown argument %q", args[i])
		}
	}
	s := &msbServer{t: t, home: home, out: &sandboxtest.SyncBuffer{}, exited: make(chan struct{}), clock: clock}
	opts.PortalBinary, opts.Out, opts.Now = portal, s.out, s.clock.Now
	opts.Log = slog.New(slog.NewTextHandler(s.out, nil))
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, opts)
	// The home's lock is a flock: a process another test forks at the
	// moment an earlier server of this home closed it holds a duplicate
	// of the lock's descriptor until it execs. Give that a moment.
	for deadline := time.Now().Add(2 * time.Second); err != nil && strings.Contains(err.Error(), "already running") && time.Now().Before(deadline); {
		time.Sleep(20 * time.Millisecond)
		srv, err = server.New(ctx, cfg, opts)
	}
	if err != nil {
		cancel()
		t.Fatalf("server.New: %v\n%s", err, s.out)
	}
	s.srv, s.cancel, s.URL = srv, cancel, srv.URL()
	go func() {
		if err := srv.Run(ctx); err != nil {
			t.Errorf("server.Run: %v", err)
		}
		srv.Close()
		close(s.exited)
	}()
	t.Cleanup(s.Stop)
	// Run writes server.json before it serves; the CLI reads it.
	waitFor(t, func() bool {
		info, err := server.ReadInfo(cfg)
		return err == nil && info.Address == s.URL
	})
	return s
}

// waitFor polls cond until it holds, failing the test after 30 s.
func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("condition not met within 30s")
		}
	}
}

// startProcess starts `msb server start --port 0 args...` as a process of
// the built binary and waits until it serves. It is stopped (SIGTERM) when
// the test ends.
func startProcess(t testing.TB, home string, args ...string) *msbServer {
	t.Helper()
	s := &msbServer{t: t, home: home, out: &sandboxtest.SyncBuffer{}, exited: make(chan struct{})}
	s.cmd = exec.Command(msbBin, append([]string{"server", "start", "--port", "0"}, args...)...)
	s.cmd.Env = append(os.Environ(), "MSB_HOME="+home)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	os.Remove(filepath.Join(home, "server.json"))
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.exited) }()
	t.Cleanup(s.Stop)
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-s.exited:
			t.Fatalf("server exited at start:\n%s", s.out)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("server did not start:\n%s", s.out)
		}
		var info struct {
			Pid     int    `json:"pid"`
			Address string `json:"address"`
		}
		if data, err := os.ReadFile(filepath.Join(home, "server.json")); err == nil &&
			json.Unmarshal(data, &info) == nil && info.Pid == s.cmd.Process.Pid {
			s.URL = info.Address
			return s
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop stops the server as SIGTERM does and waits until it is gone.
func (s *msbServer) Stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	if s.cmd == nil {
		s.cancel()
	} else {
		s.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-s.exited:
	case <-time.After(60 * time.Second):
		if s.cmd != nil {
			s.cmd.Process.Kill()
			<-s.exited
		}
		s.t.Errorf("server did not stop within 60s:\n%s", s.out)
		return
	}
	// A server that stopped cleanly leaves no cgroup behind, not even the
	// empty parent of its home's sandboxes, and nothing in its sandboxes'
	// directory, not even the engine's shared files.
	if os.Geteuid() == 0 {
		sum := sha256.Sum256([]byte(s.home))
		if left, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup/*/msb", hex.EncodeToString(sum[:6]))); len(left) > 0 {
			s.t.Errorf("cgroups left after a clean stop: %v\n%s", left, s.out)
		}
		if left, _ := os.ReadDir(filepath.Join(s.home, "sandboxes")); len(left) > 0 {
			s.t.Errorf("files left in the sandboxes' directory after a clean stop: %v\n%s", left, s.out)
		}
		if left := waitLoopsGone(s.home, nil); len(left) > 0 {
			s.t.Errorf("loop devices left after a clean stop: %v\n%s", left, s.out)
		}
	}
}

// Kill9 kills the server without warning, as a crash would. Only a
// server started with startProcess can be killed.
func (s *msbServer) Kill9() {
	if s.cmd == nil {
		s.t.Fatal("Kill9 needs a server started with startProcess")
	}
	s.cmd.Process.Kill()
	<-s.exited
}

// rpcResponse is a decoded JSON-RPC response.
type rpcResponse struct {
	JSONRPC string          `json:"jsonrpc"`
	Result  json.RawMessage `json:"result"`
	Error   *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
	ID json.RawMessage `json:"id"`
}

// post sends body to the RPC endpoint with the given headers and returns the
// status and raw body.
func (s *msbServer) post(body string, headers map[string]string) (int, []byte, http.Header) {
	s.t.Helper()
	return s.postTo("/api/v1/rpc", body, headers)
}

// postTo is post to another path of the server (such as /mcp).
func (s *msbServer) postTo(path, body string, headers map[string]string) (int, []byte, http.Header) {
	s.t.Helper()
	req, err := http.NewRequest(http.MethodPost, s.URL+path, strings.NewReader(body))
	if err != nil {
		s.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		s.t.Fatal(err)
	}
	return resp.StatusCode, data, resp.Header
}

func bearer(key string) map[string]string {
	if key == "" {
		return nil
	}
	return map[string]string{"Authorization": "Bearer " + key}
}

// call makes one JSON-RPC call with key (may be "") and returns the HTTP
// status and the decoded response.
func (s *msbServer) call(key, method string, params any) (int, rpcResponse) {
	s.t.Helper()
	body, err := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
	if err != nil {
		s.t.Fatal(err)
	}
	status, data, _ := s.post(string(body), bearer(key))
	var r rpcResponse
	if err := json.Unmarshal(data, &r); err != nil {
		s.t.Fatalf("%s: response is not JSON (%d): %s", method, status, data)
	}
	return status, r
}

// mustCall makes a call that must succeed and decodes its result into out.
func (s *msbServer) mustCall(key, method string, params any, out any) {
	s.t.Helper()
	status, r := s.call(key, method, params)
	if status != 200 || r.Error != nil {
		s.t.Fatalf("%s: status %d, error %+v\nserver output:\n%s", method, status, r.Error, s.out)
	}
	if out != nil {
		if err := json.Unmarshal(r.Result, out); err != nil {
			s.t.Fatalf("%s: result %s: %v", method, r.Result, err)
		}
	}
}

// wantError asserts a call fails with the HTTP status and JSON-RPC code and
// that the message contains want.
func (s *msbServer) wantError(key, method string, params any, status, code int, want string) {
	s.t.Helper()
	gotStatus, r := s.call(key, method, params)
	if r.Error == nil {
		s.t.Fatalf("%s: succeeded (%s), want error %d", method, r.Result, code)
	}
	if gotStatus != status || r.Error.Code != code || !strings.Contains(r.Error.Message, want) {
		s.t.Fatalf("%s: got HTTP %d, code %d, %q; want HTTP %d, code %d, message containing %q",
			method, gotStatus, r.Error.Code, r.Error.Message, status, code, want)
	}
}

// exitCode is the exit code of a command that failed (0 for none).
func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	return 0
}
