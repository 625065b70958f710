package rpc

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/msb-dev/msb/auth"
	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

// MaxFileRead caps what one sandbox.fs.read returns, as sandbox.MaxOutput
// caps a command's output: a larger file is read in parts, with offset and
// length.
const MaxFileRead = sandbox.MaxOutput

// The encodings of a file's content on the wire.
const (
	encodingUTF8   = "utf-8"
	encodingBase64 = "base64"
)

// FileMethods returns the sandbox.fs.* methods of docs/api.md, served by
// m: files inside a running sandbox, resolved in the sandbox's own root.
func FileMethods(m sandbox.Sessions) Methods {
	return Methods{
		"sandbox.fs.read": Method[fsReadParams]{Scope: auth.ScopeSandboxExec, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p fsReadParams) (any, error) { return fsRead(ctx, m, c, p) }},
		"sandbox.fs.write": Method[fsWriteParams]{Scope: auth.ScopeSandboxExec, Changes: true, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p fsWriteParams) (any, error) { return fsWrite(ctx, m, c, p) }},
		"sandbox.fs.list": Method[fsListParams]{Scope: auth.ScopeSandboxExec, Target: TargetSandbox,
			Handle: func(ctx context.Context, c *Call, p fsListParams) (any, error) { return fsList(ctx, m, c, p) }},
	}
}

// requiredPath checks the required "path" param; the sandbox decides
// what it names.
func requiredPath(p *string) (string, error) {
	if p == nil || *p == "" {
		return "", fmt.Errorf("%w: \"path\" is required: a path inside the sandbox (relative ones are taken from its working directory)", errInvalidParams)
	}
	return *p, nil
}

func checkEncoding(e string) error {
	switch e {
	case "", encodingUTF8, encodingBase64:
		return nil
	}
	return fmt.Errorf("%w: \"encoding\" must be %q or %q, not %q", errInvalidParams, encodingUTF8, encodingBase64, truncate(e))
}

type fsReadParams struct {
	Ref
	Path     *string `json:"path"`
	Offset   *int64  `json:"offset"`
	Length   *int64  `json:"length"`
	Encoding string  `json:"encoding"`
}

// FileContent is the result of sandbox.fs.read.
type FileContent struct {
	Path     string `json:"path"`
	Content  string `json:"content"`
	Encoding string `json:"encoding"`
	// Length is the bytes of the file Content holds (decoded).
	Length int `json:"length"`
	// Truncated says the file goes on past MaxFileRead bytes from
	// offset: read the rest from offset + length.
	Truncated bool `json:"truncated"`
}

func fsRead(ctx context.Context, m sandbox.Sessions, c *Call, p fsReadParams) (any, error) {
	path, err := requiredPath(p.Path)
	if err != nil {
		return nil, err
	}
	var offset int64
	if p.Offset != nil {
		if offset = *p.Offset; offset < 0 {
			return nil, fmt.Errorf("%w: \"offset\" must be 0 or more", errInvalidParams)
		}
	}
	want := int64(MaxFileRead + 1) // one more: is there more?
	if p.Length != nil {
		if *p.Length < 0 {
			return nil, fmt.Errorf("%w: \"length\" must be 0 or more", errInvalidParams)
		}
		want = min(*p.Length, want)
	}
	if err := checkEncoding(p.Encoding); err != nil {
		return nil, err
	}
	f, err := m.Open(ctx, c.ID, path, sandbox.OpenOptions{Read: true})
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := f.ReadTo(ctx, offset, want, &buf); err != nil {
		return nil, err
	}
	data := buf.Bytes()
	res := FileContent{Path: path}
	if len(data) > MaxFileRead {
		data, res.Truncated = data[:MaxFileRead], true
	}
	cut := res.Truncated || (p.Length != nil && int64(len(data)) == *p.Length)
	text, isText := textOf(data, cut)
	switch {
	case p.Encoding == encodingUTF8 && !isText:
		return nil, errdefs.Invalidf("%s is not UTF-8 text: read it with \"encoding\": %q", truncate(path), encodingBase64)
	case p.Encoding == encodingUTF8, p.Encoding == "" && isText && jsonWeight(text) <= 2*len(text):
		res.Content, res.Encoding, res.Length = text, encodingUTF8, len(text)
	default:
		res.Content, res.Encoding, res.Length = base64.StdEncoding.EncodeToString(data), encodingBase64, len(data)
	}
	return res, nil
}

// textOf returns data as text when it is valid UTF-8. A read that was cut
// may have cut a character: its first bytes are then left for the next
// read.
func textOf(data []byte, cut bool) (string, bool) {
	if utf8.Valid(data) {
		return string(data), true
	}
	if cut {
		for i := len(data) - 1; i >= 0 && i >= len(data)-utf8.UTFMax; i-- {
			if utf8.RuneStart(data[i]) {
				if !utf8.FullRune(data[i:]) && utf8.Valid(data[:i]) {
					return string(data[:i]), true
				}
				break
			}
		}
	}
	return "", false
}

// jsonWeight is the length of s once JSON escapes it (HTML escaping
// included): text full of control bytes, which escaping would blow up to
// six times its size, goes as base64 (a third more) when the client left
// the choice to the server.
func jsonWeight(s string) int {
	n := 0
	for i := 0; i < len(s); i++ {
		switch b := s[i]; {
		case b == '"' || b == '\\' || b == '\n' || b == '\r' || b == '\t':
			n += 2
		case b < 0x20 || b == '<' || b == '>' || b == '&':
			n += 6
		default:
			n++
		}
	}
	return n
}

// fileMode is a file's permission bits as a client writes them: an
// integer (420), or a string of octal digits ("644", "0o644").
type fileMode uint32

func (m *fileMode) UnmarshalJSON(b []byte) error {
	var n uint64
	var s string
	switch {
	case json.Unmarshal(b, &n) == nil:
	case json.Unmarshal(b, &s) == nil:
		v, err := strconv.ParseUint(strings.TrimPrefix(strings.TrimPrefix(s, "0o"), "0O"), 8, 32)
		if err != nil {
			return fmt.Errorf("\"mode\" must be permission bits: an integer, or octal digits such as \"644\"")
		}
		n = v
	default:
		return fmt.Errorf("\"mode\" must be permission bits: an integer, or octal digits such as \"644\"")
	}
	if n == 0 || n > 0o7777 {
		return fmt.Errorf("\"mode\" must be permission bits between 1 and 0o7777")
	}
	*m = fileMode(n)
	return nil
}

type fsWriteParams struct {
	Ref
	Path     *string   `json:"path"`
	Content  *string   `json:"content"`
	Encoding string    `json:"encoding"`
	Mode     *fileMode `json:"mode"`
}

// WriteResult is the result of sandbox.fs.write.
type WriteResult struct {
	Path    string `json:"path"`
	Written int64  `json:"written"`
}

func fsWrite(ctx context.Context, m sandbox.Sessions, c *Call, p fsWriteParams) (any, error) {
	path, err := requiredPath(p.Path)
	if err != nil {
		return nil, err
	}
	if p.Content == nil {
		return nil, fmt.Errorf("%w: \"content\" is required (\"\" makes an empty file)", errInvalidParams)
	}
	if err := checkEncoding(p.Encoding); err != nil {
		return nil, err
	}
	data := []byte(*p.Content)
	if p.Encoding == encodingBase64 {
		if data, err = base64.StdEncoding.DecodeString(*p.Content); err != nil {
			return nil, fmt.Errorf("%w: \"content\" is not base64 (standard, padded): %v", errInvalidParams, err)
		}
	}
	o := sandbox.OpenOptions{Write: true, Create: true, Truncate: true}
	if p.Mode != nil {
		o.Mode = uint32(*p.Mode)
	}
	f, err := m.Open(ctx, c.ID, path, o)
	if err != nil {
		return nil, err
	}
	n, err := f.WriteFrom(ctx, 0, bytes.NewReader(data))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return WriteResult{Path: path, Written: n}, nil
}

type fsListParams struct {
	Ref
	Path *string `json:"path"`
}

// FileEntry is one entry of sandbox.fs.list.
type FileEntry struct {
	Path     string    `json:"path"`
	Kind     string    `json:"kind"`
	Size     int64     `json:"size"`
	Mode     uint32    `json:"mode"`
	Modified time.Time `json:"modified"`
}

// ListResult is the result of sandbox.fs.list.
type ListResult struct {
	Entries []FileEntry `json:"entries"`
}

func fsList(ctx context.Context, m sandbox.Sessions, c *Call, p fsListParams) (any, error) {
	path, err := requiredPath(p.Path)
	if err != nil {
		return nil, err
	}
	list, err := m.List(ctx, c.ID, path)
	if err != nil {
		return nil, err
	}
	out := ListResult{Entries: make([]FileEntry, 0, len(list))}
	for _, e := range list {
		out.Entries = append(out.Entries, FileEntry{Path: e.Path, Kind: string(e.Kind), Size: e.Size, Mode: e.Mode, Modified: e.ModTime.UTC()})
	}
	return out, nil
}
