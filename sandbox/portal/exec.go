package portal

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/sandbox/guest"
)

// pipeGrace is how long the portal waits for a command's pipes to reach EOF
// after the command exited: background children (`sh -c 'sleep 100 &'`)
// keep them open, and a call must not last as long as they do.
const pipeGrace = 200 * time.Millisecond

func lookupEnv(env []string, key string) string {
	for i := len(env) - 1; i >= 0; i-- {
		if k, v, ok := strings.Cut(env[i], "="); ok && k == key {
			return v
		}
	}
	return ""
}

// errNotExecutable tells 126 (found, cannot run) from 127 (not found).
var errNotExecutable = errors.New("not executable")

// lookPath finds file the way execvp does, in the PATH of the command's own
// environment (not the portal's) and relative to its working directory.
func lookPath(file, path, dir string) (string, error) {
	check := func(p string) error {
		if !filepath.IsAbs(p) {
			p = filepath.Join(dir, p)
		}
		fi, err := os.Stat(p)
		if err != nil {
			return err
		}
		if fi.IsDir() || fi.Mode()&0o111 == 0 {
			return errNotExecutable
		}
		return nil
	}
	if strings.Contains(file, "/") {
		return file, check(file)
	}
	if path == "" {
		path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
	}
	found := fs.ErrNotExist
	for _, d := range filepath.SplitList(path) {
		if d == "" {
			d = "."
		}
		p := filepath.Join(d, file)
		if d == "." {
			p = "./" + file
		}
		err := check(p)
		if err == nil {
			return p, nil
		}
		if errors.Is(err, errNotExecutable) {
			found = err
		}
	}
	return "", found
}

// child is a started process and the read ends of its output pipes.
type child struct {
	pid    int
	exited <-chan syscall.WaitStatus
	outs   []*os.File  // stdout, stderr
	cg     *callCgroup // nil: none
}

// kill kills the child and everything it started: by its cgroup when it
// has one, then by process group and descendants, which finds nothing more
// unless the child could not be started in its cgroup.
func (c *child) kill() {
	if c.cg != nil {
		if err := c.cg.kill(); err != nil {
			logf("killing a command by its cgroup: %v", err)
		}
	}
	killTree(0, c.pid)
}

// wait waits for the child to exit, killing it (and what it started) when
// timeout (if positive) passes first, or ctx ends; timedOut says the
// timeout killed it.
func (c *child) wait(ctx context.Context, timeout time.Duration) (ws syscall.WaitStatus, timedOut bool) {
	var expired <-chan time.Time
	if timeout > 0 {
		t := time.NewTimer(timeout)
		defer t.Stop()
		expired = t.C
	}
	select {
	case ws = <-c.exited:
	case <-expired:
		timedOut = true
		c.kill()
		ws = <-c.exited
	case <-ctx.Done():
		c.kill()
		ws = <-c.exited
	}
	return ws, timedOut
}

// startChild starts argv in its own process group (so that it and its
// children can be signalled as one) and, when cg is not nil, in that
// cgroup, with stdin from /dev/null and extra files at fd 3 and up.
func (s *server) startChild(cg *callCgroup, path string, argv, env []string, dir string, limits []string, extra ...*os.File) (*child, error) {
	stdin, err := os.Open(os.DevNull)
	if err != nil {
		// An image without /dev/null still gets an empty stdin.
		r, w, perr := os.Pipe()
		if perr != nil {
			return nil, perr
		}
		w.Close()
		stdin = r
	}
	defer stdin.Close()
	outR, outW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer outW.Close()
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		return nil, err
	}
	defer errW.Close()
	// Fd switches the child's ends back to blocking mode: programs do not
	// expect EAGAIN on their standard streams.
	files := []uintptr{stdin.Fd(), outW.Fd(), errW.Fd()}
	for _, f := range extra {
		files = append(files, f.Fd())
	}
	var into *os.File
	if cg != nil {
		into = cg.tasks
	}
	attr := &syscall.ProcAttr{
		Dir:   dir,
		Env:   env,
		Files: files,
		Sys:   &syscall.SysProcAttr{Setpgid: true},
	}
	var pid int
	var exited <-chan syscall.WaitStatus
	if len(limits) == 0 {
		pid, exited, err = s.reaper.start(path, argv, attr, into)
	} else {
		pid, exited, _, err = s.startLimited(path, argv, limits, attr, into)
	}
	if err != nil {
		outR.Close()
		errR.Close()
		return nil, err
	}
	s.track(pid, true)
	return &child{pid: pid, exited: exited, outs: []*os.File{outR, errR}, cg: cg}, nil
}

// pump reads f line by line until EOF or until f is closed.
func pump(f *os.File, emit func(string)) {
	sp := splitter{emit: emit}
	buf := make([]byte, 32<<10)
	for {
		n, err := f.Read(buf)
		sp.write(buf[:n])
		if err != nil {
			break
		}
	}
	sp.flush()
}

// runCommand runs req (exec, or spawn when background), sending its lines
// as they come, and returns the final frame. Failing to start is a result,
// as in a shell: 127 when the command is not found, 126 when it cannot be
// run.
func (s *server) runCommand(ctx context.Context, req request, background bool) event {
	sk := s.newSink(req.ID, background)
	fail := func(code int, format string, a ...any) event {
		sk.note(fmt.Sprintf(format, a...))
		return event{ID: req.ID, Done: true, ExitCode: code}
	}
	env := guest.MergeEnv(s.env, req.Env)
	dir := req.Workdir
	if dir == "" {
		dir = s.cwd
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		return fail(126, "msb: working directory %q does not exist or is not a directory", dir)
	}
	if req.Command == "" {
		return fail(127, "msb: no command given")
	}
	path, err := lookPath(req.Command, lookupEnv(env, "PATH"), dir)
	switch {
	case errors.Is(err, errNotExecutable) || errors.Is(err, fs.ErrPermission):
		return fail(126, "msb: command %q is not executable", req.Command)
	case err != nil:
		return fail(127, "msb: command %q not found", req.Command)
	}
	limits, err := parseRlimits(req.Rlimits)
	if err != nil {
		return fail(126, "msb: %v", err)
	}
	cg := s.cgroups.create()
	if cg != nil {
		// Not removed while processes the command left behind run.
		defer cg.release()
	}
	c, err := s.startChild(cg, path, append([]string{req.Command}, req.Args...), env, dir, limits)
	switch {
	case errors.Is(err, syscall.ENOENT):
		// Found but execve says ENOENT: a script whose interpreter is missing.
		return fail(127, "msb: command %q could not be started: %v", req.Command, err)
	case err != nil:
		return fail(126, "msb: command %q could not be started: %v", req.Command, err)
	}
	defer s.track(c.pid, false)

	var wg sync.WaitGroup
	for i, f := range c.outs {
		stream := []guest.Stream{guest.Stdout, guest.Stderr}[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			pump(f, func(text string) { sk.line(stream, text) })
		}()
	}
	ws, timedOut := c.wait(ctx, req.Timeout)
	drained := make(chan struct{})
	go func() { wg.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(pipeGrace):
	}
	for _, f := range c.outs {
		f.Close() // wakes a pump still blocked on a pipe a background child holds
	}
	<-drained

	res := event{ID: req.ID, Done: true, ExitCode: exitCode(ws)}
	if sk.cut() {
		sk.note(guest.OutputCutNotice)
	}
	if timedOut {
		res.ExitCode = guest.ExitTimeout
		res.TimedOut = true
		sk.note(fmt.Sprintf("[msb] command timed out after %s and was killed", req.Timeout))
	}
	return res
}
