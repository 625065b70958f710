package portal

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/msb-dev/msb/sandbox/guest"
)

// Operations a request can name.
const (
	opExec   = "exec"
	opRepl   = "repl"
	opSpawn  = "spawn"
	opPing   = "ping"
	opCancel = "cancel"
	// configure sets the environment and working directory of everything
	// the portal starts from then on (env, workdir): a sandbox started
	// before it had them (a warm pool's) gets them before any other call.
	opConfigure = "configure"

	// A streamed process (start), and what the client sends on its id
	// later: more output credit (also for read), a signal, a terminal
	// size, and detach (stop following it, killing it when asked).
	opStart  = "start"
	opCredit = "credit"
	opSignal = "signal"
	opResize = "resize"
	opDetach = "detach"

	// File operations, run by the portal inside the sandbox's root.
	opOpen   = "open"
	opRead   = "read"
	opWrite  = "write"
	opClose  = "close"
	opStat   = "stat"
	opList   = "list"
	opMkdir  = "mkdir"
	opRemove = "remove"
	opCopy   = "copy"
	opRename = "rename"
)

// request is one client → portal control frame.
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

	// start
	User    string   `json:"user,omitempty"`
	TTY     bool     `json:"tty,omitempty"`
	Rows    uint16   `json:"rows,omitempty"`
	Cols    uint16   `json:"cols,omitempty"`
	Rlimits []rlimit `json:"rlimits,omitempty"`
	// Window is the output credit a start or a read begins with: how many
	// bytes of data frames the portal may send before the client grants
	// more (opCredit, N).
	Window int64 `json:"window,omitempty"`
	// N is the credit granted (opCredit), or the bytes to read (opRead;
	// negative: to the end of the file).
	N      int64 `json:"n,omitempty"`
	Signal int   `json:"signal,omitempty"`
	Kill   bool  `json:"kill,omitempty"` // detach: and kill the process

	// files
	Path      string     `json:"path,omitempty"`
	Target    string     `json:"target,omitempty"` // copy and rename: the destination
	Handle    uint64     `json:"handle,omitempty"`
	Offset    int64      `json:"offset,omitempty"`
	Open      *openFlags `json:"open,omitempty"`
	Mode      uint32     `json:"mode,omitempty"`
	Follow    bool       `json:"follow,omitempty"`
	Recursive bool       `json:"recursive,omitempty"`
}

// rlimit is a guest.Rlimit on the wire.
type rlimit struct {
	Resource string `json:"resource"`
	Soft     uint64 `json:"soft"`
	Hard     uint64 `json:"hard"`
}

// openFlags are guest.OpenOptions on the wire.
type openFlags struct {
	Read      bool `json:"read,omitempty"`
	Write     bool `json:"write,omitempty"`
	Append    bool `json:"append,omitempty"`
	Create    bool `json:"create,omitempty"`
	Truncate  bool `json:"truncate,omitempty"`
	Exclusive bool `json:"exclusive,omitempty"`
}

// failure says why a call failed: a process that could not start (Kind
// set), or a file operation (Errno set, Kind empty).
type failure struct {
	Kind    string `json:"kind,omitempty"`
	Errno   int    `json:"errno,omitempty"`
	Message string `json:"message"`
}

// fileInfo is a guest.FileInfo on the wire; times are Unix nanoseconds.
type fileInfo struct {
	Path  string         `json:"path"`
	Kind  guest.FileKind `json:"kind"`
	Size  int64          `json:"size"`
	Mode  uint32         `json:"mode"`
	UID   uint32         `json:"uid"`
	GID   uint32         `json:"gid"`
	MTime int64          `json:"mtime"`
	ATime int64          `json:"atime"`
}

// event is one portal → client frame: a line of output when Done is false,
// the call's outcome when it is true.
type event struct {
	ID       uint64           `json:"id"`
	Stream   guest.Stream     `json:"stream,omitempty"`
	Text     string           `json:"text,omitempty"`
	Done     bool             `json:"done,omitempty"`
	ExitCode int              `json:"exit_code,omitempty"`
	TimedOut bool             `json:"timed_out,omitempty"`
	Status   guest.ReplStatus `json:"status,omitempty"`
	Error    string           `json:"error,omitempty"`
	// Invalid marks Error as the caller's fault (e.g. the image has no
	// such interpreter), so the client can report ErrInvalidArgument.
	Invalid bool `json:"invalid,omitempty"`

	// Started: the streamed process runs, as Pid (in the sandbox's PID
	// namespace).
	Started bool `json:"started,omitempty"`
	Pid     int  `json:"pid,omitempty"`
	// Credit grants the client this many more bytes of input (stdin, or
	// a file write's chunks).
	Credit int64 `json:"credit,omitempty"`
	// StdinError: writing the client's input to the process failed (it
	// closed its stdin); later input is dropped.
	StdinError string `json:"stdin_error,omitempty"`
	// With Done: the process was killed by Signal (ExitCode is -1), or
	// the call failed (Fail).
	Signal int      `json:"signal,omitempty"`
	Fail   *failure `json:"fail,omitempty"`
	// Results of file operations: an open's handle, a stat, a batch of a
	// list's entries, and the bytes a read or a write moved (with Done).
	Handle  uint64     `json:"handle,omitempty"`
	Info    *fileInfo  `json:"info,omitempty"`
	Entries []fileInfo `json:"entries,omitempty"`
	N       int64      `json:"n,omitempty"`
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
	maxLogLines = maxLines * (guest.MaxLog / guest.MaxOutput)
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

// Data frames carry bytes (process output and input, file contents)
// beside the JSON control frames, without JSON's escaping: a frame that
// starts with dataMarker (a byte no JSON frame starts with) is
//
//	[dataMarker][id: u64 BE][kind: u8][len: u32 BE][len bytes]
//
// and belongs to call id, like the control frames of that call.
const (
	dataMarker    = 0x00
	dataHeaderLen = 1 + 8 + 1 + 4
	// maxData bounds the payload of one data frame, both ways.
	maxData = guest.MaxChunk
)

// The kinds of data frames.
const (
	dataStdout = 1 // portal → client: a streamed process's output (all of it on a TTY)
	dataStderr = 2 // portal → client
	dataStdin  = 3 // client → portal: input for the process; empty: end of input
	dataFile   = 4 // both: a chunk of a file read, or of a file write (client → portal; empty: the end)
)

// Chunk sizes and flow-control windows. A window is how many bytes of
// data frames one side may send on one call before the other side grants
// more, after it has consumed them; it bounds what the receiver ever
// holds for that call.
const (
	// outputChunk is the most of a process's output read (and sent) at
	// once.
	outputChunk = 32 << 10
	// procWindow is the output window of a streamed process.
	procWindow = 256 << 10
	// fileChunk is the most of a file read or written in one data frame.
	fileChunk = 1 << 20
	// readWindow is the window of a file read.
	readWindow = 4 << 20
	// stdinWindow and writeWindow are the input windows the portal grants
	// a process's stdin and a file write.
	stdinWindow = 256 << 10
	writeWindow = 4 << 20
)

// sendData writes one data frame.
func (f *frameWriter) sendData(id uint64, kind byte, p []byte) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.err != nil {
		return f.err
	}
	var hdr [dataHeaderLen]byte
	putDataHeader(hdr[:], id, kind, len(p))
	f.buf.Reset()
	f.buf.Write(hdr[:])
	f.buf.Write(p)
	_, f.err = f.w.Write(f.buf.Bytes())
	if f.buf.Cap() > 4*fileChunk {
		f.buf = bytes.Buffer{} // a big frame's buffer is not kept
	}
	return f.err
}

func putDataHeader(b []byte, id uint64, kind byte, n int) {
	b[0] = dataMarker
	binary.BigEndian.PutUint64(b[1:9], id)
	b[9] = kind
	binary.BigEndian.PutUint32(b[10:14], uint32(n))
}

// dataFrame encodes a data frame.
func dataFrame(id uint64, kind byte, p []byte) []byte {
	b := make([]byte, dataHeaderLen+len(p))
	putDataHeader(b, id, kind, len(p))
	copy(b[dataHeaderLen:], p)
	return b
}

// dataHeader is the header of a data frame.
type dataHeader struct {
	id   uint64
	kind byte
	len  int
}

// errFrameTooLong is a control frame longer than the reader's bound.
var errFrameTooLong = errors.New("frame too long")

// errDataTooLong is a data frame longer than maxData.
var errDataTooLong = errors.New("data frame too long")

// frameReader reads the frames of one connection: control frames (lines
// of JSON, returned without their newline) and data frame headers, whose
// payload the caller then reads from r (or skips) before the next frame.
type frameReader struct {
	r       *bufio.Reader
	maxLine int
	line    []byte
}

func newFrameReader(r io.Reader, maxLine int) *frameReader {
	return &frameReader{r: bufio.NewReaderSize(r, 64<<10), maxLine: maxLine}
}

// next returns the next frame: a control frame's text (valid until the
// next call), or a data frame's header. A last control frame without its
// newline still counts. io.EOF at a frame boundary is the end.
func (fr *frameReader) next() (line []byte, hdr *dataHeader, err error) {
	b, err := fr.r.Peek(1)
	if err != nil {
		return nil, nil, err
	}
	if b[0] == dataMarker {
		var h [dataHeaderLen]byte
		if _, err := io.ReadFull(fr.r, h[:]); err != nil {
			return nil, nil, io.ErrUnexpectedEOF
		}
		d := &dataHeader{id: binary.BigEndian.Uint64(h[1:9]), kind: h[9], len: int(binary.BigEndian.Uint32(h[10:14]))}
		if d.len > maxData {
			return nil, nil, errDataTooLong
		}
		return nil, d, nil
	}
	fr.line = fr.line[:0]
	for {
		chunk, err := fr.r.ReadSlice('\n')
		if len(fr.line)+len(chunk) > fr.maxLine+1 {
			return nil, nil, errFrameTooLong
		}
		fr.line = append(fr.line, chunk...)
		switch {
		case err == nil:
			return fr.line[:len(fr.line)-1], nil, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case errors.Is(err, io.EOF) && len(fr.line) > 0:
			return fr.line, nil, nil
		default:
			return nil, nil, err
		}
	}
}

// payload reads the payload of a data frame into a new slice.
func (fr *frameReader) payload(h *dataHeader) ([]byte, error) {
	p := make([]byte, h.len)
	if _, err := io.ReadFull(fr.r, p); err != nil {
		return nil, io.ErrUnexpectedEOF
	}
	return p, nil
}

// skip discards the payload of a data frame.
func (fr *frameReader) skip(h *dataHeader) error {
	if _, err := fr.r.Discard(h.len); err != nil {
		return io.ErrUnexpectedEOF
	}
	return nil
}
