package portal

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/msb-dev/msb/sandbox/guest"
)

// The drivers are small programs run by the interpreter itself. They read
// code from fd 3 and evaluate it in one persistent global namespace, and
// write what it prints as framed records on fd 4, tagged with the stream,
// so that the order of prints across stdout and stderr is exact. Output
// written straight to fd 1 and 2 (by subprocesses, say) is read from plain
// pipes and merged in arrival order.
var (
	//go:embed driver.py
	driverPy string
	//go:embed driver.js
	driverJS string
)

const (
	// interruptGrace is how long an interpreter gets to come back after
	// SIGINT before it is killed.
	interruptGrace = time.Second
	// maxRecord bounds one record from a driver; drivers write text in
	// chunks far below it.
	maxRecord = 4 << 20
	// syncMarker starts the line a driver writes to fd 1 and 2 after each
	// evaluation: once the portal has read it on both, everything the code
	// wrote to those pipes before has been read too.
	syncMarker = "\x00msb-sync:"
)

// interpSlot holds the live interpreter of one language; sem serialises
// calls to it.
type interpSlot struct {
	sem chan struct{}
	ip  *interp
}

// interp is one running interpreter process.
type interp struct {
	lang guest.Language
	exe  string
	pid  int
	ctl  *os.File // code requests, the driver's fd 3

	dead   chan struct{} // closed once the process has exited
	status syscall.WaitStatus
	recEOF chan struct{} // closed when the records pipe (fd 4) ends
	rawEOF chan struct{} // closed when both raw pipes end
	done   chan string   // statuses from the driver's done records
	marks  chan syncMark // sync markers seen on the raw pipes
	broken chan struct{} // closed if the driver sent garbage
	once   sync.Once

	mu   sync.Mutex
	call *replCall // the evaluation in progress, nil when idle
}

type syncMark struct {
	stream int
	seq    uint64
}

// replCall is where one evaluation's output goes. Record text arrives in
// arbitrary pieces, so each stream gets its own splitter.
type replCall struct {
	sink  *sink
	parts [2]*splitter
}

var streams = [2]guest.Stream{guest.Stdout, guest.Stderr}

// interpreterCommand finds the interpreter for lang in the portal's PATH and
// returns the program and arguments to run its driver.
func (s *server) interpreterCommand(lang guest.Language) (string, []string, error) {
	path := lookupEnv(s.env, "PATH")
	switch lang {
	case guest.Python:
		p, err := lookPath("python3", path, s.cwd)
		if err != nil {
			return "", nil, fmt.Errorf("python interpreter %q is not installed in this sandbox's image", "python3")
		}
		return p, []string{"python3", "-u", "-c", driverPy}, nil
	case guest.Node:
		for _, name := range []string{"node", "nodejs"} {
			if p, err := lookPath(name, path, s.cwd); err == nil {
				return p, []string{name, "-e", driverJS}, nil
			}
		}
		return "", nil, fmt.Errorf("node interpreter %q (or %q) is not installed in this sandbox's image", "node", "nodejs")
	}
	return "", nil, fmt.Errorf("unknown language %q", lang)
}

func (s *server) startInterp(lang guest.Language, rlimits []rlimit) (*interp, error) {
	path, argv, err := s.interpreterCommand(lang)
	if err != nil {
		return nil, &invalidError{err}
	}
	limits, err := parseRlimits(rlimits)
	if err != nil {
		return nil, &invalidError{err}
	}
	ctlR, ctlW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer ctlR.Close()
	recR, recW, err := os.Pipe()
	if err != nil {
		ctlW.Close()
		return nil, err
	}
	defer recW.Close()
	c, err := s.startChild(nil, path, argv, s.env, s.cwd, limits, ctlR, recW)
	if err != nil {
		ctlW.Close()
		recR.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	ip := &interp{
		lang:   lang,
		exe:    argv[0],
		pid:    c.pid,
		ctl:    ctlW,
		dead:   make(chan struct{}),
		recEOF: make(chan struct{}),
		rawEOF: make(chan struct{}),
		done:   make(chan string, 4),
		marks:  make(chan syncMark, 8),
		broken: make(chan struct{}),
	}
	go func() {
		ip.status = <-c.exited
		s.track(ip.pid, false)
		close(ip.dead)
	}()
	go ip.readRecords(recR)
	var wg sync.WaitGroup
	for i, f := range c.outs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer f.Close()
			pump(f, func(text string) { ip.rawLine(i, text) })
		}()
	}
	go func() { wg.Wait(); close(ip.rawEOF) }()
	return ip, nil
}

// readRecords reads the driver's records: ["o"|"e", text] for output,
// ["d", status] when an evaluation is over.
func (ip *interp) readRecords(f *os.File) {
	defer close(ip.recEOF)
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), maxRecord)
	for sc.Scan() {
		var rec [2]string
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			ip.markBroken()
			return
		}
		switch rec[0] {
		case "o", "e":
			ip.mu.Lock()
			if ip.call != nil {
				i := 0
				if rec[0] == "e" {
					i = 1
				}
				ip.call.parts[i].write([]byte(rec[1]))
			}
			ip.mu.Unlock()
		case "d":
			select {
			case ip.done <- rec[1]:
			default:
			}
		default:
			ip.markBroken()
			return
		}
	}
	if sc.Err() != nil {
		ip.markBroken()
	}
}

// markBroken notes that the driver's record stream cannot be trusted any
// more (the code wrote over fd 4, say); the interpreter is then replaced.
func (ip *interp) markBroken() { ip.once.Do(func() { close(ip.broken) }) }

func (ip *interp) rawLine(stream int, text string) {
	if i := strings.Index(text, syncMarker); i >= 0 {
		rest := strings.TrimSuffix(text[i+len(syncMarker):], "\x00")
		if seq, err := strconv.ParseUint(rest, 10, 64); err == nil {
			if i > 0 {
				ip.rawLine(stream, text[:i])
			}
			select {
			case ip.marks <- syncMark{stream, seq}:
			default:
			}
			return
		}
	}
	ip.mu.Lock()
	defer ip.mu.Unlock()
	if ip.call != nil {
		ip.call.sink.line(streams[stream], text)
	}
}

func (ip *interp) exited() bool {
	select {
	case <-ip.dead:
		return true
	default:
		return false
	}
}

// stop kills the interpreter and everything it started, and waits until
// its pipes are closed.
func (ip *interp) stop() {
	killTree(0, ip.pid)
	<-ip.dead
	ip.ctl.Close()
	select {
	case <-ip.rawEOF:
	case <-time.After(pipeGrace):
		// A background process outside the tree holds the pipes; the raw
		// pumps end when it does.
	}
}

// describeExit says how an interpreter ended, for the caller.
func (ip *interp) describeExit() string {
	if ip.status.Signaled() {
		return fmt.Sprintf("was killed by signal %d (%v)", int(ip.status.Signal()), ip.status.Signal())
	}
	return fmt.Sprintf("exited with code %d", ip.status.ExitStatus())
}

func (s *server) slot(lang guest.Language) *interpSlot {
	s.mu.Lock()
	defer s.mu.Unlock()
	sl := s.interps[lang]
	if sl == nil {
		sl = &interpSlot{sem: make(chan struct{}, 1)}
		s.interps[lang] = sl
	}
	return sl
}

// invalidError marks an error as the caller's fault.
type invalidError struct{ err error }

func (e *invalidError) Error() string { return e.err.Error() }

// runCode evaluates req.Code in the live interpreter of req.Language,
// starting one if there is none, and returns the final frame.
func (s *server) runCode(ctx context.Context, req request) event {
	lang := guest.Language(req.Language)
	if lang != guest.Python && lang != guest.Node {
		return event{ID: req.ID, Done: true, Invalid: true, Error: fmt.Sprintf("unknown language %q", req.Language)}
	}
	sk := s.newSink(req.ID, false)
	// The timeout counts from the request, not from when the interpreter
	// is free: the caller sees the whole call, and the client's own bound
	// on how long a call may take relies on it.
	var timeout <-chan time.Time
	if req.Timeout > 0 {
		t := time.NewTimer(req.Timeout)
		defer t.Stop()
		timeout = t.C
	}
	sl := s.slot(lang)
	select {
	case sl.sem <- struct{}{}:
	case <-timeout:
		sk.note(fmt.Sprintf("[msb] timed out after %s waiting for an earlier call to the %s interpreter to finish; the code did not run", req.Timeout, lang))
		return event{ID: req.ID, Done: true, Status: guest.ReplTimeout}
	case <-ctx.Done():
		return event{ID: req.ID, Done: true, Error: "cancelled while waiting for the interpreter"}
	}
	defer func() { <-sl.sem }()

	var notes []string
	if sl.ip != nil && sl.ip.exited() {
		// Died between calls (a background thread called os._exit, say).
		sl.ip.stop()
		notes = append(notes, fmt.Sprintf("[msb] the %s interpreter %s since the last call; started a fresh one, earlier definitions are lost", lang, sl.ip.describeExit()))
		sl.ip = nil
	}
	if sl.ip == nil {
		ip, err := s.startInterp(lang, req.Rlimits)
		if err != nil {
			var inv *invalidError
			invalid := errors.As(err, &inv)
			return event{ID: req.ID, Done: true, Invalid: invalid, Error: err.Error()}
		}
		sl.ip = ip
	}
	ip := sl.ip
	for _, n := range notes {
		sk.note(n)
	}

	call := &replCall{sink: sk}
	for i := range call.parts {
		call.parts[i] = &splitter{emit: func(text string) { sk.line(streams[i], text) }}
	}
	ip.mu.Lock()
	ip.call = call
	ip.mu.Unlock()
	seq := s.seq.Add(1)
	frame, _ := json.Marshal(struct {
		Seq  uint64 `json:"seq"`
		Code string `json:"code"`
	}{seq, req.Code})
	// A write error means the interpreter is gone; that shows below.
	go ip.ctl.Write(append(frame, '\n'))

	var (
		status              string
		timedOut, died      bool
		killed, interrupted bool
		grace               <-chan time.Time
		cancel              = ctx.Done()
	)
wait:
	for {
		select {
		case status = <-ip.done:
			break wait
		case <-ip.dead:
			died = true
			break wait
		case <-ip.broken:
			killed = true
			break wait
		case <-grace:
			killed = true
			break wait
		case <-timeout:
			timedOut, timeout = true, nil
		case <-cancel:
			cancel = nil
		}
		if !interrupted {
			// SIGINT lets the code stop cleanly (KeyboardInterrupt, or
			// node's breakOnSigint) and keeps the interpreter's state.
			interrupted = true
			_ = syscall.Kill(ip.pid, syscall.SIGINT)
			t := time.NewTimer(interruptGrace)
			defer t.Stop()
			grace = t.C
		}
	}
	if killed || died {
		ip.stop()
		select {
		case <-ip.recEOF:
		case <-time.After(pipeGrace):
		}
		sl.ip = nil
	} else {
		// Wait until the raw pipes have caught up with the driver.
		seen := [2]bool{}
		deadline := time.After(pipeGrace)
	sync:
		for !seen[0] || !seen[1] {
			select {
			case m := <-ip.marks:
				if m.seq == seq {
					seen[m.stream] = true
				}
			case <-deadline:
				break sync
			}
		}
	}
	ip.mu.Lock()
	for _, p := range call.parts {
		p.flush()
	}
	ip.call = nil
	ip.mu.Unlock()

	res := event{ID: req.ID, Done: true, Status: guest.ReplSuccess}
	if status != "ok" {
		res.Status = guest.ReplError
	}
	if sk.cut() {
		sk.note(guest.OutputCutNotice)
	}
	switch {
	case killed && interrupted:
		sk.note(fmt.Sprintf("[msb] the %s interpreter did not stop within %s of being interrupted and was killed; the next call starts a fresh one, earlier definitions are lost", lang, interruptGrace))
	case killed:
		sk.note(fmt.Sprintf("[msb] the %s interpreter's channel to msb was corrupted (the code wrote to its file descriptors?) and it was killed; the next call starts a fresh one, earlier definitions are lost", lang))
	case died:
		sk.note(fmt.Sprintf("[msb] the %s interpreter (%s) %s; the next call starts a fresh one, earlier definitions are lost", lang, ip.exe, ip.describeExit()))
	}
	if timedOut {
		res.Status = guest.ReplTimeout
		sk.note(fmt.Sprintf("[msb] execution timed out after %s and was interrupted", req.Timeout))
	}
	return res
}
