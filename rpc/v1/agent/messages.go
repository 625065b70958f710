package agent

import (
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"
)

// Message types msb reads or writes on the agent socket. The others of
// the protocol (ping, touch, shutdown, the microVM's boot and relay
// messages) never cross this socket; KnownType lists them all.
const (
	TypeReady          = "core.ready"
	TypeError          = "core.error"
	TypeExecRequest    = "core.exec.request"
	TypeExecStarted    = "core.exec.started"
	TypeExecStdout     = "core.exec.stdout"
	TypeExecStderr     = "core.exec.stderr"
	TypeExecStdin      = "core.exec.stdin"
	TypeExecStdinError = "core.exec.stdin.error"
	TypeExecExited     = "core.exec.exited"
	TypeExecFailed     = "core.exec.failed"
	TypeExecSignal     = "core.exec.signal"
	TypeExecResize     = "core.exec.resize"
	TypeFsRequest      = "core.fs.request"
	TypeFsResponse     = "core.fs.response"
	TypeFsData         = "core.fs.data"
	TypeTCPConnect     = "core.tcp.connect"
	TypeTCPFailed      = "core.tcp.failed"
)

// flags are the flags each message type carries; a type not listed
// carries none.
var flags = map[string]uint8{
	"core.pong": FlagTerminal, "core.touched": FlagTerminal, TypeError: FlagTerminal,
	TypeExecExited: FlagTerminal, TypeExecFailed: FlagTerminal, TypeFsResponse: FlagTerminal,
	"core.tcp.closed": FlagTerminal, TypeTCPFailed: FlagTerminal,
	TypeExecRequest: FlagSessionStart, TypeFsRequest: FlagSessionStart, TypeTCPConnect: FlagSessionStart,
	"core.shutdown": FlagShutdown,
}

// FlagsOf returns the flags a frame of message type typ carries.
func FlagsOf(typ string) uint8 { return flags[typ] }

// known are the message types of protocol generation 7.
var known = map[string]bool{
	TypeReady: true, TypeError: true, "core.ping": true, "core.pong": true, "core.touch": true, "core.touched": true,
	"core.shutdown": true, "core.bootstrap": true, "core.clock.sync": true, "core.relay.client.disconnected": true,
	"core.init.request": true, "core.init.response": true, "core.heartbeat": true,
	TypeExecRequest: true, TypeExecStarted: true, TypeExecStdout: true, TypeExecStderr: true, TypeExecStdin: true,
	TypeExecStdinError: true, TypeExecExited: true, TypeExecFailed: true, TypeExecSignal: true, TypeExecResize: true,
	TypeFsRequest: true, TypeFsResponse: true, TypeFsData: true,
	TypeTCPConnect: true, "core.tcp.connected": true, TypeTCPFailed: true, "core.tcp.data": true,
	"core.tcp.eof": true, "core.tcp.close": true, "core.tcp.closed": true,
}

// KnownType reports whether typ is a message type of the protocol.
func KnownType(typ string) bool { return known[typ] }

// Kinds of core.error.
const (
	ErrMalformedMessage       = "malformed_message"
	ErrUnsupportedMessageType = "unsupported_message_type"
	ErrInvalidFlags           = "invalid_flags"
	ErrInvalidPayload         = "invalid_payload"
	ErrInvalidSession         = "invalid_session"
)

// Ready is core.ready's payload, the server's greeting.
type Ready struct {
	BootTimeNs   uint64 `cbor:"boot_time_ns"`
	InitTimeNs   uint64 `cbor:"init_time_ns"`
	ReadyTimeNs  uint64 `cbor:"ready_time_ns"`
	AgentVersion string `cbor:"agent_version,omitempty"`
}

// Error is core.error's payload: a request the server could not take.
type Error struct {
	Kind          string `cbor:"kind"`
	Message       string `cbor:"message"`
	OffendingType string `cbor:"offending_type,omitempty"`
}

// Data is the payload of the messages that carry bytes: core.exec.stdout,
// core.exec.stderr, core.exec.stdin (empty: EOF) and core.fs.data.
type Data struct {
	Data []byte `cbor:"data"`
}

// ExecRequest is core.exec.request's payload: a process to start, argv
// without a shell.
type ExecRequest struct {
	Cmd     string   `cbor:"cmd"`
	Args    []string `cbor:"args"`
	Env     []string `cbor:"env"` // KEY=VALUE
	Cwd     *string  `cbor:"cwd"`
	User    *string  `cbor:"user"`
	TTY     bool     `cbor:"tty"`
	Rows    *uint16  `cbor:"rows"` // absent: 24
	Cols    *uint16  `cbor:"cols"` // absent: 80
	Rlimits []Rlimit `cbor:"rlimits"`
}

// Rlimit is one resource limit of an ExecRequest.
type Rlimit struct {
	Resource string `cbor:"resource"`
	Soft     uint64 `cbor:"soft"`
	Hard     uint64 `cbor:"hard"`
}

// ExecStarted is core.exec.started's payload.
type ExecStarted struct {
	Pid uint32 `cbor:"pid"`
}

// ExecExited is core.exec.exited's payload: the exit status, -1 for a
// death by signal.
type ExecExited struct {
	Code int32 `cbor:"code"`
}

// ExecFailed is core.exec.failed's payload: a process that never ran.
type ExecFailed struct {
	Kind      string  `cbor:"kind"`
	Errno     *int32  `cbor:"errno"`
	ErrnoName *string `cbor:"errno_name"`
	Message   string  `cbor:"message"`
	Stage     *string `cbor:"stage"`
}

// ExecStdinError is core.exec.stdin.error's payload.
type ExecStdinError struct {
	Errno     *int32  `cbor:"errno"`
	ErrnoName *string `cbor:"errno_name"`
	Message   string  `cbor:"message"`
}

// ExecSignal is core.exec.signal's payload.
type ExecSignal struct {
	Signal int32 `cbor:"signal"`
}

// ExecResize is core.exec.resize's payload.
type ExecResize struct {
	Rows uint16 `cbor:"rows"`
	Cols uint16 `cbor:"cols"`
}

// TCPFailed is core.tcp.failed's payload.
type TCPFailed struct {
	Error string `cbor:"error"`
}

// FsRequest is core.fs.request's payload.
type FsRequest struct {
	Op FsOp `cbor:"op"`
}

// FsOp is a file operation, externally tagged on the wire: a map of one
// entry, {"OpenFile": {...}}. Name is the variant; Args decodes its
// content into the variant's type (OpenFile, Read, ...).
type FsOp struct {
	Name string
	raw  cbor.RawMessage
}

// NewFsOp returns the operation name with content args.
func NewFsOp(name string, args any) (FsOp, error) {
	raw, err := encMode.Marshal(args)
	if err != nil {
		return FsOp{}, fmt.Errorf("encode %s: %w", name, err)
	}
	return FsOp{Name: name, raw: raw}, nil
}

// Args decodes the operation's content into v.
func (o FsOp) Args(v any) error {
	if err := Decode(o.raw, v); err != nil {
		return fmt.Errorf("%s: %w", o.Name, err)
	}
	return nil
}

// MarshalCBOR implements cbor.Marshaler.
func (o FsOp) MarshalCBOR() ([]byte, error) {
	b := appendHead([]byte{0xa1}, majorText, uint64(len(o.Name)))
	b = append(b, o.Name...)
	return append(b, o.raw...), nil
}

// UnmarshalCBOR implements cbor.Unmarshaler.
func (o *FsOp) UnmarshalCBOR(b []byte) error {
	var m map[string]cbor.RawMessage
	if err := decMode.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("op: %w", err)
	}
	if len(m) != 1 {
		return fmt.Errorf("op must be a map of exactly one operation, not %d", len(m))
	}
	for name, raw := range m {
		o.Name, o.raw = name, raw
	}
	return nil
}

// The file operations of FsOp, by variant name.
type (
	OpenFile struct {
		Path    string      `cbor:"path"`
		Options OpenOptions `cbor:"options"`
	}
	OpenOptions struct {
		Read      bool    `cbor:"read"`
		Write     bool    `cbor:"write"`
		Append    bool    `cbor:"append"`
		Create    bool    `cbor:"create"`
		Truncate  bool    `cbor:"truncate"`
		CreateNew bool    `cbor:"create_new"`
		Mode      *uint32 `cbor:"mode"`
	}
	Read struct {
		Handle uint64  `cbor:"handle"`
		Offset uint64  `cbor:"offset"`
		Len    *uint64 `cbor:"len"` // nil: to the end
	}
	Write struct {
		Handle uint64  `cbor:"handle"`
		Offset uint64  `cbor:"offset"`
		Len    *uint64 `cbor:"len"` // nil: unknown
	}
	CloseHandle struct {
		Handle uint64 `cbor:"handle"`
	}
	List struct {
		Path string `cbor:"path"`
	}
	Stat struct {
		Path          string `cbor:"path"`
		FollowSymlink bool   `cbor:"follow_symlink"`
	}
	Mkdir struct {
		Path string  `cbor:"path"`
		Mode *uint32 `cbor:"mode"`
	}
	Remove struct {
		Path string `cbor:"path"`
	}
	RemoveDir struct {
		Path      string `cbor:"path"`
		Recursive bool   `cbor:"recursive"`
	}
	Copy struct {
		Src string `cbor:"src"`
		Dst string `cbor:"dst"`
	}
	Rename struct {
		Src string `cbor:"src"`
		Dst string `cbor:"dst"`
	}
)

// FsResponse is core.fs.response's payload, the one answer to every file
// request.
type FsResponse struct {
	OK    bool    `cbor:"ok"`
	Error *string `cbor:"error"`
	Data  *FsData `cbor:"data"`
}

// FsData is the data of an FsResponse, externally tagged on the wire:
// exactly one field is set.
type FsData struct {
	Stat   *EntryInfo
	List   []EntryInfo
	Handle *uint64
	Path   *string
}

// MarshalCBOR implements cbor.Marshaler.
func (d FsData) MarshalCBOR() ([]byte, error) {
	var name string
	var v any
	switch {
	case d.Stat != nil:
		name, v = "Stat", d.Stat
	case d.List != nil:
		name, v = "List", d.List
	case d.Handle != nil:
		name, v = "Handle", *d.Handle
	case d.Path != nil:
		name, v = "Path", *d.Path
	default:
		return nil, errors.New("fs response data with no variant")
	}
	return encMode.Marshal(map[string]any{name: v})
}

// EntryInfo describes one file in an FsResponse.
type EntryInfo struct {
	Path     string `cbor:"path"`
	Kind     string `cbor:"kind"` // file, dir, symlink, other
	Size     uint64 `cbor:"size"`
	Mode     uint32 `cbor:"mode"` // st_mode, type bits included
	Modified *int64 `cbor:"modified"`
	UID      uint32 `cbor:"uid"`
	GID      uint32 `cbor:"gid"`
	Atime    *int64 `cbor:"atime"`
	Mtime    *int64 `cbor:"mtime"`
}

// encMode encodes as the upstream agent does: struct fields in
// declaration order, integers in their shortest form, empty (never null)
// byte strings and arrays.
var encMode = func() cbor.EncMode {
	m, err := cbor.EncOptions{Sort: cbor.SortNone, NilContainers: cbor.NilContainerAsEmpty}.EncMode()
	if err != nil {
		panic(err)
	}
	return m
}()

// decMode decodes what a client sends: unknown keys are ignored (newer
// clients), duplicate keys, invalid UTF-8 and oversized containers are
// errors.
var decMode = func() cbor.DecMode {
	m, err := cbor.DecOptions{
		DupMapKey:        cbor.DupMapKeyEnforcedAPF,
		MaxNestedLevels:  16,
		MaxArrayElements: 65536,
		MaxMapPairs:      4096,
		UTF8:             cbor.UTF8RejectInvalid,
	}.DecMode()
	if err != nil {
		panic(err)
	}
	return m
}()

// Decode decodes a payload into v. Errors name what is wrong.
func Decode(payload []byte, v any) error {
	return decMode.Unmarshal(payload, v)
}

// DecodeData returns the bytes of a {"data": bytes} payload, without
// copying them in the usual encoding.
func DecodeData(payload []byte) ([]byte, error) {
	const prefix = "\xa1\x64data"
	if len(payload) > len(prefix) && string(payload[:len(prefix)]) == prefix {
		d := decoder{b: payload, off: len(prefix)}
		if b, err := d.bytes(); err == nil && d.off == len(payload) {
			return b, nil
		}
	}
	var d Data
	if err := Decode(payload, &d); err != nil {
		return nil, err
	}
	return d.Data, nil
}
