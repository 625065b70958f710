package network

import (
	"testing"
)

// Targets come from clients: parsing never panics, and what it accepts
// reads back as itself.
func FuzzParseTarget(f *testing.F) {
	for _, s := range []string{"*.pypi.org:443", "tcp pypi.org:80,443", "udp 203.0.113.0/24:1000-2000", "*:25",
		"[2001:db8::/32]:443", "::ffff:10.0.0.1", "x.org:", "[::1", "a..b", "*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseTarget(s)
		if err != nil {
			return
		}
		again, err := ParseTarget(r.Target())
		if err != nil || again.Target() != r.Target() {
			t.Fatalf("%q -> %q -> %q, %v", s, r.Target(), again.Target(), err)
		}
	})
}

// The inspector reads what sandboxes send: any bytes, in any pieces,
// never make it panic or buffer past maxHead.
func FuzzInspector(f *testing.F) {
	f.Add([]byte("GET / HTTP/1.1\r\nHost: a.test\r\n\r\n"), 3)
	f.Add([]byte("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"), 1)
	f.Add([]byte{0x16, 3, 1, 0, 5, 1, 0, 0, 1, 0}, 2)
	f.Fuzz(func(t *testing.T, data []byte, piece int) {
		if piece <= 0 {
			piece = 1
		}
		in := &inspector{}
		for len(data) > 0 {
			n := min(piece, len(data))
			if _, err := in.feed(data[:n]); err != nil {
				return
			}
			if len(in.buf) > maxHead+len(data) {
				t.Fatalf("buffered %d bytes", len(in.buf))
			}
			data = data[n:]
		}
	})
}
