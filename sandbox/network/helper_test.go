package network

// Helper processes for the benchmark. The sandbox's client and the
// world's server run as separate processes (this test binary, re-executed),
// as they would with msb: the server process then hosts the netstack
// only, and its Go runtime does not share its processors with them.

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox/network/netns"
	"github.com/msb-dev/msb/sandbox/network/networktest"
)

const helperEnv = "NETSTACK_TEST_HELPER"

func TestMain(m *testing.M) {
	switch os.Getenv(helperEnv) {
	case "server":
		helperServer()
		return
	case "client":
		helperClient()
		return
	}
	flag.Parse()
	os.Exit(m.Run())
}

// helperServer serves /bytes?n=N and / on the listener it inherits as fd 3.
func helperServer() {
	ln, err := net.FileListener(os.NewFile(3, "listener"))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(rw http.ResponseWriter, r *http.Request) { io.WriteString(rw, "ok\n") })
	mux.HandleFunc("/bytes", func(rw http.ResponseWriter, r *http.Request) {
		n, _ := strconv.ParseInt(r.URL.Query().Get("n"), 10, 64)
		rw.Header().Set("Content-Length", strconv.FormatInt(n, 10))
		buf := make([]byte, 1<<20)
		for n > 0 {
			m := min(n, int64(len(buf)))
			if _, err := rw.Write(buf[:m]); err != nil {
				return
			}
			n -= m
		}
	})
	http.Serve(ln, mux)
}

type clientResult struct {
	CPU       time.Duration `json:"-"` // the client process's, filled in by runClient
	MiBps     float64       `json:"mibps,omitempty"`
	Latencies []float64     `json:"latencies_us,omitempty"`
	Err       string        `json:"err,omitempty"`
}

// helperClient runs one measurement from the namespace it was started in:
// "download ADDR BYTES" or "latency ADDR COUNT" (connect, send a request,
// read the first byte of the answer), with the socket bound to the device
// in NETSTACK_TEST_BIND if set. It prints a clientResult.
func helperClient() {
	args := os.Args[len(os.Args)-3:]
	mode, addr := args[0], args[1]
	n, _ := strconv.ParseInt(args[2], 10, 64)
	d := net.Dialer{Timeout: clientTimeout()}
	if dev := os.Getenv("NETSTACK_TEST_BIND"); dev != "" {
		d.Control = networktest.BindTo(dev)
	}
	var res clientResult
	fail := func(err error) {
		res.Err = err.Error()
		json.NewEncoder(os.Stdout).Encode(res)
		os.Exit(0)
	}
	switch mode {
	case "download":
		start := time.Now()
		c, err := d.Dial("tcp", addr)
		if err != nil {
			fail(err)
		}
		fmt.Fprintf(c, "GET /bytes?n=%d HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n", n)
		resp, err := http.ReadResponse(bufio.NewReaderSize(c, 64<<10), nil)
		if err != nil {
			fail(err)
		}
		got, err := io.CopyBuffer(io.Discard, resp.Body, make([]byte, 1<<20))
		if err != nil || got != n {
			fail(fmt.Errorf("read %d of %d: %v", got, n, err))
		}
		res.MiBps = float64(n) / (1 << 20) / time.Since(start).Seconds()
	case "latency":
		buf := make([]byte, 1)
		for i := int64(0); i < n; i++ {
			start := time.Now()
			c, err := d.Dial("tcp", addr)
			if err != nil {
				fail(err)
			}
			fmt.Fprintf(c, "GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
			if _, err := io.ReadFull(c, buf); err != nil {
				fail(err)
			}
			res.Latencies = append(res.Latencies, float64(time.Since(start).Microseconds()))
			c.Close()
		}
		sort.Float64s(res.Latencies)
	}
	json.NewEncoder(os.Stdout).Encode(res)
}

// startHelperServer starts the benchmark's HTTP server as a process
// listening on addr in the world.
// It returns a function that reports the CPU time the server has used.
func startHelperServer(t testing.TB, w *networktest.World, addr string) func() time.Duration {
	ln, _ := w.Listen(t, "tcp", addr)
	f, err := ln.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := helperCommand(t, "nsserver")
	cmd.Env = append(os.Environ(), helperEnv+"=server")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	pid := cmd.Process.Pid
	return func() time.Duration { return procCPU(pid) }
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime and stime are fields 14 and 15, in clock ticks.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// runClient runs the client helper in network namespace ns (nil: this
// process's), bound to bindDev if set.
func runClient(t testing.TB, ns *os.File, bindDev string, args ...string) clientResult {
	var out []byte
	var cpu time.Duration
	run := func() error {
		cmd := helperCommand(t, "nsclient", args...)
		cmd.Env = append(os.Environ(), helperEnv+"=client", "NETSTACK_TEST_BIND="+bindDev)
		cmd.Stderr = os.Stderr
		var err error
		out, err = cmd.Output()
		if cmd.ProcessState != nil {
			cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
		}
		return err
	}
	var err error
	if ns != nil {
		// A child is forked from the calling thread, so it starts in
		// that thread's namespace.
		err = netns.Do(ns, run)
	} else {
		err = run()
	}
	if err != nil {
		t.Fatalf("client %v: %v", args, err)
	}
	res := clientResult{CPU: cpu}
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("client output %q: %v", out, err)
	}
	if res.Err != "" {
		where := "host"
		if ns != nil {
			where = "sandbox " + ns.Name()
		}
		t.Fatalf("client %v in %s: %s", args, where, res.Err)
	}
	return res
}

// helperPath is this test binary under another name (a symbolic link), so
// that profiles tell the helpers from the server process.
func helperPath(t testing.TB, name string) string {
	dir := os.TempDir() + "/netstack-helpers-" + strconv.Itoa(os.Getpid())
	os.MkdirAll(dir, 0o755)
	p := dir + "/" + name
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(p); err != nil {
		if err := os.Symlink(exe, p); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
	}
	return p
}

func clientTimeout() time.Duration {
	if s := os.Getenv("NETSTACK_TEST_TIMEOUT"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	return 10 * time.Second
}

// helperCommand runs a helper, on CPU 0 only under -netbench.pin.
func helperCommand(t testing.TB, name string, args ...string) *exec.Cmd {
	if *benchPin {
		return exec.Command("taskset", append([]string{"-c", "0", helperPath(t, name)}, args...)...)
	}
	return exec.Command(helperPath(t, name), args...)
}

// pinSelf moves every thread of this process to CPU 1 (threads created
// later inherit it).
func pinSelf(t testing.TB) {
	var set unix.CPUSet
	set.Set(1)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Fatal(err)
	}
	for _, task := range tasks {
		tid, _ := strconv.Atoi(task.Name())
		if err := unix.SchedSetaffinity(tid, &set); err != nil {
			t.Fatalf("pinning thread %d: %v", tid, err)
		}
	}
}
