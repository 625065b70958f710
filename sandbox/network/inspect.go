package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"strconv"
	"strings"
)

// maxHead bounds what the inspector buffers: a TLS ClientHello or an HTTP
// request head larger than this is refused (ReasonInspect).
const maxHead = 32 << 10

var errInspect = errors.New("request head malformed or too large to inspect")

type inspectMode uint8

const (
	modeStart     inspectMode = iota // nothing seen yet
	modeTLS                          // collecting a ClientHello
	modeHead                         // collecting an HTTP request head
	modeBody                         // skipping a Content-Length body
	modeChunkLine                    // reading a chunk-size line
	modeChunkData                    // skipping chunk data and its CRLF
	modeTrailer                      // reading trailer lines
	modeOpaque                       // nothing more to look at
)

// inspector watches the bytes a sandbox sends on a TCP connection, in
// order, and reports the names they present: the SNI of a TLS ClientHello,
// the Host of every HTTP/1 request (pipelined and keep-alive requests
// included, so a second request cannot switch hosts). It only observes;
// the bytes are forwarded unchanged. Once a stream is TLS (after the
// ClientHello), an upgraded or CONNECT tunnel, or a protocol it does not
// know, it looks no further.
type inspector struct {
	mode inspectMode
	buf  []byte
	left int64 // body or chunk bytes still to skip (chunk data includes its CRLF)
	// classified is set once the first message has been recognised (or
	// recognised as unknown): there is nothing more to wait for before
	// deciding a connection.
	classified bool
	tls        bool // the stream is TLS
	opaqueNext bool // the current HTTP request switches the stream to a tunnel
}

var httpMethods = []string{"GET ", "HEAD ", "POST ", "PUT ", "DELETE ", "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "}

// feed inspects the next bytes of the stream and returns the names they
// present (an empty string for a request that presents none).
func (in *inspector) feed(p []byte) ([]string, error) {
	var out []string
	for len(p) > 0 {
		switch in.mode {
		case modeOpaque:
			return out, nil
		case modeStart:
			in.buf = append(in.buf, p...)
			p = nil
			if in.buf[0] == 0x16 {
				in.mode, in.tls = modeTLS, true
				p, in.buf = in.buf, nil
				continue
			}
			switch httpPrefix(in.buf) {
			case prefixYes:
				in.mode = modeHead
				p, in.buf = in.buf, nil
			case prefixNo:
				in.mode, in.classified, in.buf = modeOpaque, true, nil
			}
		case modeTLS:
			in.buf = append(in.buf, p...)
			p = nil
			name, complete, err := clientHelloSNI(in.buf)
			if err != nil {
				// Not a ClientHello we understand: the server will
				// make of it what it can; nothing is presented.
				in.mode, in.classified, in.buf = modeOpaque, true, nil
				return append(out, ""), nil
			}
			if complete {
				in.mode, in.classified, in.buf = modeOpaque, true, nil
				if !validPresented(name) {
					return out, errInspect
				}
				return append(out, name), nil
			}
			if len(in.buf) > maxHead {
				return out, errInspect
			}
		case modeHead:
			// Collect up to the blank line that ends the head.
			start := len(in.buf) - 3
			if start < 0 {
				start = 0
			}
			in.buf = append(in.buf, p...)
			i := bytes.Index(in.buf[start:], []byte("\r\n\r\n"))
			if i < 0 {
				if len(in.buf) > maxHead {
					return out, errInspect
				}
				return out, nil
			}
			end := start + i + 4
			if end > maxHead {
				return out, errInspect
			}
			p = in.buf[end:]
			host, err := in.parseHead(in.buf[:end])
			in.buf = nil
			if err != nil {
				return out, err
			}
			in.classified = true
			out = append(out, host)
			// p still aliases the old buffer, which nothing else uses.
		case modeBody:
			p = in.skip(p, modeHead)
		case modeChunkLine:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				in.buf = append(in.buf, p...)
				if len(in.buf) > 1024 {
					return out, errInspect
				}
				return out, nil
			}
			in.buf = append(in.buf, p[:i+1]...)
			p = p[i+1:]
			line := strings.TrimRight(string(in.buf), "\r\n")
			in.buf = nil
			if j := strings.IndexByte(line, ';'); j >= 0 {
				line = line[:j]
			}
			size, err := strconv.ParseInt(strings.TrimSpace(line), 16, 64)
			if err != nil || size < 0 || size > 1<<50 {
				return out, errInspect
			}
			if size == 0 {
				in.mode = modeTrailer
			} else {
				in.mode, in.left = modeChunkData, size+2
			}
		case modeChunkData:
			p = in.skip(p, modeChunkLine)
		case modeTrailer:
			i := bytes.IndexByte(p, '\n')
			if i < 0 {
				in.buf = append(in.buf, p...)
				if len(in.buf) > maxHead {
					return out, errInspect
				}
				return out, nil
			}
			in.buf = append(in.buf, p[:i+1]...)
			p = p[i+1:]
			empty := strings.TrimRight(string(in.buf), "\r\n") == ""
			in.buf = nil
			if empty {
				in.mode = modeHead
			}
		}
	}
	return out, nil
}

type prefixAnswer uint8

const (
	prefixMaybe prefixAnswer = iota
	prefixYes
	prefixNo
)

// httpPrefix tells whether b starts an HTTP/1 request.
func httpPrefix(b []byte) prefixAnswer {
	maybe := false
	for _, m := range httpMethods {
		if len(b) >= len(m) {
			if string(b[:len(m)]) == m {
				return prefixYes
			}
		} else if string(b) == m[:len(b)] {
			maybe = true
		}
	}
	if maybe {
		return prefixMaybe
	}
	return prefixNo
}

// skip passes over what is left of a body or chunk in p, and moves to
// next once all of it has gone by; it returns what follows in p.
func (in *inspector) skip(p []byte, next inspectMode) []byte {
	n := min(int64(len(p)), in.left)
	in.left -= n
	if in.left == 0 {
		in.mode = next
	}
	return p[n:]
}

// parseHead parses one HTTP/1 request head, returns the host it is for
// ("" for none) and sets up the skipping of its body.
func (in *inspector) parseHead(head []byte) (string, error) {
	lines := strings.Split(strings.TrimSuffix(string(head), "\r\n\r\n"), "\r\n")
	reqLine := strings.Split(lines[0], " ")
	if len(reqLine) != 3 || !strings.HasPrefix(reqLine[2], "HTTP/1.") {
		return "", errInspect
	}
	method, target := reqLine[0], reqLine[1]
	var host string
	var hosts, lengths int
	var length int64 = -1
	chunked, upgrade := false, false
	for _, l := range lines[1:] {
		k, v, ok := strings.Cut(l, ":")
		if !ok || k == "" || strings.ContainsAny(k, " \t") {
			return "", errInspect // also refuses obsolete line folding
		}
		v = strings.TrimSpace(v)
		switch strings.ToLower(k) {
		case "host":
			hosts++
			host = v
		case "content-length":
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil || n < 0 || (length >= 0 && n != length) {
				return "", errInspect
			}
			length = n
			lengths++
		case "transfer-encoding":
			te := strings.ToLower(v)
			if strings.HasSuffix(te, "chunked") {
				chunked = true
			} else {
				return "", errInspect
			}
		case "upgrade":
			upgrade = true
		}
	}
	if hosts > 1 || (chunked && lengths > 0) {
		return "", errInspect // ambiguous: two servers could read it two ways
	}
	switch {
	case method == "CONNECT":
		host = target
	case strings.HasPrefix(strings.ToLower(target), "http://"), strings.HasPrefix(strings.ToLower(target), "https://"):
		// The absolute form's authority overrides Host (RFC 9112 3.2.2).
		rest := target[strings.Index(target, "//")+2:]
		if i := strings.IndexAny(rest, "/?#"); i >= 0 {
			rest = rest[:i]
		}
		if i := strings.LastIndexByte(rest, '@'); i >= 0 {
			rest = rest[i+1:]
		}
		host = rest
	}
	switch {
	case method == "CONNECT" || upgrade:
		in.mode = modeOpaque
	case chunked:
		in.mode = modeChunkLine
	case length > 0:
		in.mode, in.left = modeBody, length
	default:
		in.mode = modeHead
	}
	name := hostName(host)
	if !validPresented(name) {
		return "", errInspect
	}
	return name, nil
}

// validPresented reports whether a name a connection presents is "" or a
// DNS name (letters, digits, '-' and '_' in labels): anything else could
// be read one way by the policy and another by the server it reaches.
func validPresented(name string) bool {
	if name == "" {
		return true
	}
	if len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// hostName strips the port and brackets from a Host value and normalises
// it; an IP literal is no name.
func hostName(h string) string {
	if h == "" {
		return ""
	}
	if strings.HasPrefix(h, "[") {
		return "" // IPv6 literal
	}
	if i := strings.LastIndexByte(h, ':'); i >= 0 {
		h = h[:i]
	}
	if _, err := netip.ParseAddr(h); err == nil {
		return ""
	}
	return normName(h)
}

// clientHelloSNI parses TLS records in b, which hold the start of a
// stream, and returns the server name of the ClientHello when the whole
// hello is there (complete); an error when b is not a ClientHello.
func clientHelloSNI(b []byte) (name string, complete bool, err error) {
	bad := errors.New("not a TLS ClientHello")
	var hs []byte
	for len(b) >= 5 {
		if b[0] != 0x16 || b[1] != 3 {
			return "", false, bad
		}
		n := int(binary.BigEndian.Uint16(b[3:5]))
		if len(b) < 5+n {
			break
		}
		hs = append(hs, b[5:5+n]...)
		b = b[5+n:]
	}
	if len(hs) < 4 {
		return "", false, nil
	}
	if hs[0] != 1 {
		return "", false, bad
	}
	n := int(hs[1])<<16 | int(hs[2])<<8 | int(hs[3])
	if n > maxHead {
		return "", false, bad
	}
	if len(hs) < 4+n {
		return "", false, nil
	}
	h := hs[4 : 4+n]
	// version(2) random(32)
	if len(h) < 34 {
		return "", true, bad
	}
	h = h[34:]
	skip := func(lenBytes int) bool {
		if len(h) < lenBytes {
			return false
		}
		l := 0
		for i := 0; i < lenBytes; i++ {
			l = l<<8 | int(h[i])
		}
		if len(h) < lenBytes+l {
			return false
		}
		h = h[lenBytes+l:]
		return true
	}
	if !skip(1) || !skip(2) || !skip(1) { // session id, cipher suites, compression
		return "", true, bad
	}
	if len(h) < 2 {
		return "", true, nil // no extensions, no SNI
	}
	ext := h[2:]
	if l := int(binary.BigEndian.Uint16(h)); l <= len(ext) {
		ext = ext[:l]
	}
	for len(ext) >= 4 {
		typ := binary.BigEndian.Uint16(ext)
		l := int(binary.BigEndian.Uint16(ext[2:]))
		if len(ext) < 4+l {
			return "", true, bad
		}
		data := ext[4 : 4+l]
		ext = ext[4+l:]
		if typ != 0 { // server_name
			continue
		}
		if len(data) < 2 {
			return "", true, bad
		}
		list := data[2:]
		for len(list) >= 3 {
			nt := list[0]
			nl := int(binary.BigEndian.Uint16(list[1:]))
			if len(list) < 3+nl {
				return "", true, bad
			}
			if nt == 0 {
				return normName(string(list[3 : 3+nl])), true, nil
			}
			list = list[3+nl:]
		}
	}
	return "", true, nil
}
