package portal_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox"
)

func wantStatus(t *testing.T, res sandbox.ReplResult, want sandbox.ReplStatus) {
	t.Helper()
	if res.Status != want {
		t.Errorf("status %q, want %q; output:\n%s", res.Status, want, texts(res.Output))
	}
}

func hasLine(lines []sandbox.Line, stream sandbox.Stream, substr string) bool {
	for _, l := range lines {
		if l.Stream == stream && strings.Contains(l.Text, substr) {
			return true
		}
	}
	return false
}

func TestPythonState(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, "x = 1\ndef f(n):\n    return n * 10", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	if res.Output == nil || len(res.Output) != 0 {
		t.Errorf("output %#v, want empty and not nil", res.Output)
	}
	res = p.run(t, sandbox.Python, "print(x + 1)\nprint(f(x))", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("2"), out("10")})
	res = p.run(t, sandbox.Python, "print(__name__)", 0)
	equalLines(t, res.Output, []sandbox.Line{out("__main__")})
}

func TestPythonOutputOrder(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, `import sys, os, subprocess
print("a")
print("b", file=sys.stderr)
print("c", end="")
sys.stderr.write("d\n")
print()
sys.stdout.buffer.write("é\n".encode())
for i in range(3):
    print("o%d" % i)
    print("e%d" % i, file=sys.stderr)
sys.stdout.flush()
os.write(1, b"raw\n")
subprocess.run(["echo", "sub"])
subprocess.run(["echo", "sub2"], stdout=sys.stdout)
print("partial", end="")`, 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	// What goes through sys.stdout and sys.stderr keeps its exact order;
	// what is written to fd 1 directly only keeps its own order.
	printed, raw := splitRaw(res.Output, "raw", "sub", "sub2")
	equalLines(t, printed, []sandbox.Line{
		out("a"), errl("b"), errl("d"), out("c"), out("é"),
		out("o0"), errl("e0"), out("o1"), errl("e1"), out("o2"), errl("e2"), out("partial"),
	})
	equalLines(t, raw, []sandbox.Line{out("raw"), out("sub"), out("sub2")})
}

func TestPythonException(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, "print('before')\ndef g():\n    return 1 / 0\ng()", 0)
	wantStatus(t, res, sandbox.ReplError)
	if len(res.Output) == 0 || res.Output[0] != out("before") {
		t.Errorf("output before the exception lost: %q", res.Output)
	}
	if !hasLine(res.Output, sandbox.Stderr, "Traceback (most recent call last):") ||
		!hasLine(res.Output, sandbox.Stderr, `File "<input>", line 3, in g`) ||
		lastLine(res.Output) != errl("ZeroDivisionError: division by zero") {
		t.Errorf("traceback missing:\n%s", texts(res.Output))
	}
	if hasLine(res.Output, sandbox.Stderr, "_msb") {
		t.Errorf("driver frames leak into the traceback:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Python, "def broken(:", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "SyntaxError") {
		t.Errorf("syntax error not reported:\n%s", texts(res.Output))
	}
	// The interpreter and its state survive errors.
	res = p.run(t, sandbox.Python, "print(g.__name__)", 0)
	equalLines(t, res.Output, []sandbox.Line{out("g")})
}

func TestPythonTimeout(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "import time\nx = 41", 0)
	start := time.Now()
	res := p.run(t, sandbox.Python, "print('looping')\nwhile True:\n    pass", 500*time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timed-out call took %v", d)
	}
	wantStatus(t, res, sandbox.ReplTimeout)
	if res.Output[0] != out("looping") || !hasLine(res.Output, sandbox.Stderr, "KeyboardInterrupt") ||
		lastLine(res.Output) != errl("[msb] execution timed out after 500ms and was interrupted") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	// Interrupted, not restarted: state is kept.
	res = p.run(t, sandbox.Python, "print(x + 1)", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("42")})

	// Code that swallows the interrupt gets its interpreter killed.
	res = p.run(t, sandbox.Python, "while True:\n    try:\n        time.sleep(10)\n    except KeyboardInterrupt:\n        pass", 300*time.Millisecond)
	wantStatus(t, res, sandbox.ReplTimeout)
	if !hasLine(res.Output, sandbox.Stderr, "was killed; the next call starts a fresh one, earlier definitions are lost") {
		t.Errorf("no restart notice:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Python, "print('x' in globals())", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("False")})
}

func TestPythonExit(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "x = 1", 0)
	res := p.run(t, sandbox.Python, "import sys\nprint('bye')\nsys.exit(3)", 0)
	wantStatus(t, res, sandbox.ReplError)
	if res.Output[0] != out("bye") || !hasLine(res.Output, sandbox.Stderr, "exited with code 3") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Python, "print('x' in globals())", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("False")})

	res = p.run(t, sandbox.Python, "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "was killed by signal 9") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Python, "print('fresh')", 0)
	equalLines(t, res.Output, []sandbox.Line{out("fresh")})
}

func TestNodeState(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Node, "let a = 1; const b = 2; var c = 3; function f() { return a + b + c }", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	res = p.run(t, sandbox.Node, "console.log(f()); a = 10; console.log(f())", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("6"), out("15")})
	res = p.run(t, sandbox.Node, "console.log(typeof require('fs').readFileSync, [1, 2], {k: 'v'})", 0)
	equalLines(t, res.Output, []sandbox.Line{out("function [ 1, 2 ] { k: 'v' }")})
}

func TestNodeOutputOrder(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Node, `console.log('o1'); console.error('e1'); console.log('o2'); console.warn('e2')
process.stdout.write('raw\n')
require('child_process').execSync('echo sub', {stdio: 'inherit'})`, 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	printed, raw := splitRaw(res.Output, "raw", "sub")
	equalLines(t, printed, []sandbox.Line{out("o1"), errl("e1"), out("o2"), errl("e2")})
	equalLines(t, raw, []sandbox.Line{out("raw"), out("sub")})
}

func TestNodeErrors(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Node, "console.log('before'); throw new Error('boom')", 0)
	wantStatus(t, res, sandbox.ReplError)
	if res.Output[0] != out("before") || !hasLine(res.Output, sandbox.Stderr, "Error: boom") || !hasLine(res.Output, sandbox.Stderr, "<input>:1") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	if hasLine(res.Output, sandbox.Stderr, "[eval]") || hasLine(res.Output, sandbox.Stderr, "node:vm") {
		t.Errorf("driver frames leak into the stack:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Node, "function (", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "SyntaxError") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Node, "Promise.reject(new Error('nope'))", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "Error: nope") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Node, "console.log('still here')", 0)
	equalLines(t, res.Output, []sandbox.Line{out("still here")})
}

func TestNodeAsync(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Node, "new Promise(r => setTimeout(() => { console.log('late'); r() }, 200))", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("late")})
	res = p.run(t, sandbox.Node, "await new Promise(r => setTimeout(r, 100)); console.log('after await')", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("after await")})
	res = p.run(t, sandbox.Node, "(async () => { await null; throw new TypeError('async boom') })()", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "TypeError: async boom") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
}

func TestNodeTimeout(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Node, "let kept = 'yes'", 0)
	start := time.Now()
	res := p.run(t, sandbox.Node, "while (true) {}", 500*time.Millisecond)
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("timed-out call took %v", d)
	}
	wantStatus(t, res, sandbox.ReplTimeout)
	res = p.run(t, sandbox.Node, "console.log(kept)", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	equalLines(t, res.Output, []sandbox.Line{out("yes")})

	// A Promise that never settles is abandoned at the timeout.
	res = p.run(t, sandbox.Node, "new Promise(() => {})", 300*time.Millisecond)
	wantStatus(t, res, sandbox.ReplTimeout)
	res = p.run(t, sandbox.Node, "console.log(kept)", 0)
	equalLines(t, res.Output, []sandbox.Line{out("yes")})
}

func TestNodeExit(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Node, "var gone = 1", 0)
	res := p.run(t, sandbox.Node, "process.exit(4)", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "exited with code 4") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Node, "console.log(typeof gone)", 0)
	equalLines(t, res.Output, []sandbox.Line{out("undefined")})
}

func TestReplOutputFloodIsCut(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, "for i in range(40000):\n    print('y' * 999)\nprint('done')", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	if lastLine(res.Output) != errl(sandbox.OutputCutNotice) {
		t.Errorf("last line %q, want the cut notice", lastLine(res.Output))
	}
	if n := outputBytes(res.Output[:len(res.Output)-1]); n > sandbox.MaxOutput || n < sandbox.MaxOutput-2000 {
		t.Errorf("kept %d bytes", n)
	}
	res = p.run(t, sandbox.Python, "print('next')", 0)
	equalLines(t, res.Output, []sandbox.Line{out("next")})
}

func TestReplCancel(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "import time\nx = 7", 0)
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if _, err := p.RunCode(ctx, sandbox.Python, "time.sleep(100)", 0); err == nil {
		t.Fatal("cancelled call returned no error")
	}
	res := p.run(t, sandbox.Python, "print(x)", 0)
	equalLines(t, res.Output, []sandbox.Line{out("7")})
}

// splitRaw separates the lines written straight to fd 1 or 2 (rawTexts),
// whose order relative to printed lines is only as good as arrival order.
func splitRaw(lines []sandbox.Line, rawTexts ...string) (printed, raw []sandbox.Line) {
	for _, l := range lines {
		if slices.Contains(rawTexts, l.Text) {
			raw = append(raw, l)
		} else {
			printed = append(printed, l)
		}
	}
	return printed, raw
}

func TestPythonDiesBetweenCalls(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, "import os, threading\nthreading.Timer(0.2, lambda: os._exit(5)).start()\nx = 1\nprint(os.getpid())", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	if len(res.Output) != 1 {
		t.Fatalf("output:\n%s", texts(res.Output))
	}
	waitReaped(t, res.Output[0].Text)
	res = p.run(t, sandbox.Python, "print('x' in globals())", 0)
	wantStatus(t, res, sandbox.ReplSuccess)
	if len(res.Output) != 2 || !strings.Contains(res.Output[0].Text, "exited with code 5 since the last call") || res.Output[1] != out("False") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
}

func TestPythonCorruptedChannel(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	res := p.run(t, sandbox.Python, "import os\nos.write(4, b'garbage\\n')\nimport time\ntime.sleep(5)", 0)
	wantStatus(t, res, sandbox.ReplError)
	if !hasLine(res.Output, sandbox.Stderr, "was killed; the next call starts a fresh one") {
		t.Errorf("output:\n%s", texts(res.Output))
	}
	res = p.run(t, sandbox.Python, "print('fresh')", 0)
	equalLines(t, res.Output, []sandbox.Line{out("fresh")})
}

func TestReplTimeoutCountsQueueing(t *testing.T) {
	t.Parallel()
	p := newPortal(t)
	p.run(t, sandbox.Python, "import time", 0)
	first := make(chan sandbox.ReplResult, 1)
	go func() {
		res, _ := p.RunCode(context.Background(), sandbox.Python, "open('started', 'w').close(); time.sleep(3); print('first')", 0)
		first <- res
	}()
	waitFile(t, filepath.Join(p.dir, "started"))
	res := p.run(t, sandbox.Python, "print('second')", 500*time.Millisecond)
	select {
	case <-first:
		t.Errorf("the queued call waited for the first one to finish")
	default:
	}
	wantStatus(t, res, sandbox.ReplTimeout)
	equalLines(t, res.Output, []sandbox.Line{errl("[msb] timed out after 500ms waiting for an earlier call to the python interpreter to finish; the code did not run")})
	if got := <-first; fmt.Sprint(got.Output) != fmt.Sprint([]sandbox.Line{out("first")}) {
		t.Errorf("first call: %+v", got)
	}
}

// waitReaped waits (at most 10 s) until the process pid is gone and reaped.
func waitReaped(t *testing.T, pid string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join("/proc", pid)); err != nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("process %s still there after 10s", pid)
		}
	}
}

// waitFile waits (at most 10 s) until path exists.
func waitFile(t *testing.T, path string) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(5 * time.Millisecond) {
		if _, err := os.Stat(path); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never appeared", path)
		}
	}
}
