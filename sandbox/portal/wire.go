package portal

import (
	"bytes"
	"encoding/json"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/msb-dev/msb/sandbox"
)

// Operations a request can name.
const (
	opExec   = "exec"
	opRepl   = "repl"
	opSpawn  = "spawn"
	opPing   = "ping"
	opCancel = "cancel"
)

// request is one client → portal frame.
type request struct {
	ID       uint64        `json:"id"`
	Op       string        `json:"op"`
	Command  string        `json:"command,omitempty"`
	Args     []string      `json:"args,omitempty"`
	Env      []string      `json:"env,omitempty"`
	Workdir  string        `json:"workdir,omitempty"`
	Timeout  time.Duration `json:"timeout_ns,omitempty"`
	Language string        `json:"language,omitempty"`
	Code     string        `json:"code,omitempty"`
}

// event is one portal → client frame: a line of output when Done is false,
// the call's outcome when it is true.
type event struct {
	ID       uint64             `json:"id"`
	Stream   sandbox.Stream     `json:"stream,omitempty"`
	Text     string             `json:"text,omitempty"`
	Done     bool               `json:"done,omitempty"`
	ExitCode int                `json:"exit_code,omitempty"`
	TimedOut bool               `json:"timed_out,omitempty"`
	Status   sandbox.ReplStatus `json:"status,omitempty"`
	Error    string             `json:"error,omitempty"`
	// Invalid marks Error as the caller's fault (e.g. the image has no
	// such interpreter), so the client can report ErrInvalidArgument.
	Invalid bool `json:"invalid,omitempty"`
}

const (
	// maxFrame bounds one portal → client frame. A line is at most
	// lineChunk bytes, which JSON escaping can at most multiply by six, so
	// an honest portal never comes near it.
	maxFrame = 2 << 20
	// maxRequest bounds one client → portal frame; code sent to a REPL
	// rides in one frame, and the rpc layer bounds request bodies anyway.
	maxRequest = 64 << 20
	// lineChunk is where very long lines are split, so that one line can
	// never make a frame too large.
	lineChunk = 64 << 10
	// maxLines bounds the number of lines of one call. Each stored line
	// costs a header on top of its text, so a flood of empty lines would
	// otherwise cost the server far more than MaxOutput.
	maxLines = 1 << 20
	// maxLogLines bounds the lines of a background command's output as
	// maxLines does a call's, in the same proportion to its byte cap.
	maxLogLines = maxLines * (sandbox.MaxLog / sandbox.MaxOutput)
	// trailerSlack lets the notices the portal appends after cutting
	// (cut, timeout, interpreter restarted) through the client's own cap.
	trailerSlack = 4 << 10
)

// outputCap counts the output of one call. A line costs what it adds to
// what carries it: its text as JSON escapes it, plus perLine (for a call's
// reply, the JSON of the line around it, lineEnvelope; for a log, its
// newline), so that the cap bounds the encoded reply whatever the lines'
// lengths. Once the cap is hit every later line is dropped, so the output
// is a prefix of what was printed.
type outputCap struct {
	maxBytes, maxLines int
	perLine            int
	bytes, lines       int
	cut                bool
}

func (c *outputCap) admit(text string) bool {
	if c.cut {
		return false
	}
	cost := encodedLen(text) + c.perLine
	if c.bytes+cost > c.maxBytes || c.lines+1 > c.maxLines {
		c.cut = true
		return false
	}
	c.bytes += cost
	c.lines++
	return true
}

// lineEnvelope is what one line of output adds to a reply beyond its
// text: {"stream":"stdout","text":""} and the comma that separates it.
const lineEnvelope = len(`{"stream":"stdout","text":""},`)

// encodedLen is the length of text once encoding/json has escaped it (with
// its default HTML escaping), which is what the output costs the server to
// hold and send. Counting raw bytes would let a sandbox print 16 MiB of
// control bytes that become 96 MiB of JSON.
func encodedLen(text string) int {
	n := 0
	for i := 0; i < len(text); {
		b := text[i]
		if b < utf8.RuneSelf {
			switch {
			case b == '"' || b == '\\' || b == '\n' || b == '\r' || b == '\t':
				n += 2
			case b < 0x20 || b == '<' || b == '>' || b == '&':
				n += 6
			default:
				n++
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(text[i:])
		if r == utf8.RuneError && size == 1 || r == '\u2028' || r == '\u2029' {
			n += 6
		} else {
			n += size
		}
		i += size
	}
	return n
}

// splitter turns a byte stream into lines: without their newline, split
// into chunks of at most lineChunk bytes (at a UTF-8 boundary when one is
// near), and with a last partial line emitted by flush.
type splitter struct {
	buf  []byte
	emit func(string)
}

func (s *splitter) write(p []byte) {
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		seg := p
		if i >= 0 {
			seg = p[:i]
			p = p[i+1:]
		} else {
			p = nil
		}
		s.buf = append(s.buf, seg...)
		for len(s.buf) > lineChunk {
			cut := runeCut(s.buf, lineChunk)
			s.emit(string(s.buf[:cut]))
			s.buf = append(s.buf[:0], s.buf[cut:]...)
		}
		if i >= 0 {
			s.emit(string(s.buf))
			s.buf = s.buf[:0]
		}
	}
}

func (s *splitter) flush() {
	if len(s.buf) > 0 {
		s.emit(string(s.buf))
		s.buf = s.buf[:0]
	}
}

// runeCut returns a cut point at or a few bytes before n that does not
// split a UTF-8 sequence, so chunks of valid text stay valid.
func runeCut(b []byte, n int) int {
	for cut := n; cut > n-utf8.UTFMax && cut > 0; cut-- {
		if utf8.RuneStart(b[cut]) {
			return cut
		}
	}
	return n
}

// frameWriter writes whole frames; frames from concurrent calls never
// interleave.
type frameWriter struct {
	mu  sync.Mutex
	w   io.Writer
	buf bytes.Buffer
	err error
}

func (f *frameWriter) send(v any) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	f.buf.Reset()
	enc := json.NewEncoder(&f.buf) // Encode appends the newline that ends a frame
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return err
	}
	_, f.err = f.w.Write(f.buf.Bytes())
	return f.err
}
