package sandbox

import "github.com/msb-dev/msb/sandbox/guest"

// The plain data of a sandbox's root and of the work done in it lives in
// package guest, which the binary inside every sandbox imports without the
// rest of this package; these are its names here.

// A sandbox's root.
type (
	Mount = guest.Mount
	Link  = guest.Link
	File  = guest.File
	User  = guest.User
	Tmpfs = guest.Tmpfs
)

// Commands and REPL evaluations.
type (
	Stream      = guest.Stream
	Line        = guest.Line
	ExecRequest = guest.ExecRequest
	ExecResult  = guest.ExecResult
	Language    = guest.Language
	ReplStatus  = guest.ReplStatus
	ReplResult  = guest.ReplResult
)

// Streamed processes and files.
type (
	ExecSpec      = guest.ExecSpec
	Rlimit        = guest.Rlimit
	ExecEventKind = guest.ExecEventKind
	ExecEvent     = guest.ExecEvent
	ExecFailure   = guest.ExecFailure
	Process       = guest.Process
	FileKind      = guest.FileKind
	FileInfo      = guest.FileInfo
	OpenOptions   = guest.OpenOptions
	FileHandle    = guest.FileHandle
)

const (
	Stdout = guest.Stdout
	Stderr = guest.Stderr

	ExitTimeout = guest.ExitTimeout

	Python = guest.Python
	Node   = guest.Node

	ReplSuccess = guest.ReplSuccess
	ReplError   = guest.ReplError
	ReplTimeout = guest.ReplTimeout

	EventStarted    = guest.EventStarted
	EventStdout     = guest.EventStdout
	EventStderr     = guest.EventStderr
	EventStdinError = guest.EventStdinError
	EventExited     = guest.EventExited
	EventFailed     = guest.EventFailed

	KindFile    = guest.KindFile
	KindDir     = guest.KindDir
	KindSymlink = guest.KindSymlink
	KindOther   = guest.KindOther

	MaxChunk  = guest.MaxChunk
	MaxOutput = guest.MaxOutput
	MaxLog    = guest.MaxLog
)

// The stderr lines of output cut at MaxOutput, and of a log cut at MaxLog.
var (
	OutputCutNotice = guest.OutputCutNotice
	LogCutNotice    = guest.LogCutNotice
)
