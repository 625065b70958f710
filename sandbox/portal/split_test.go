package portal

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzSplitter checks that however output arrives in pieces, the lines
// cover it exactly, none is longer than lineChunk, and valid UTF-8 stays
// valid across chunk cuts.
func FuzzSplitter(f *testing.F) {
	f.Add([]byte("a\nb\n\nc"), uint16(1))
	f.Add([]byte(strings.Repeat("é", lineChunk)+"\nx"), uint16(7000))
	f.Add(bytes.Repeat([]byte{'z'}, 3*lineChunk+5), uint16(65535))
	f.Fuzz(func(t *testing.T, data []byte, piece uint16) {
		var lines []string
		sp := splitter{emit: func(s string) { lines = append(lines, s) }}
		n := int(piece)%(2*lineChunk) + 1
		for rest := data; len(rest) > 0; {
			k := min(n, len(rest))
			sp.write(rest[:k])
			rest = rest[k:]
		}
		sp.flush()
		if got, want := strings.Join(lines, ""), string(bytes.ReplaceAll(data, []byte("\n"), nil)); got != want {
			t.Fatalf("lines do not cover the input")
		}
		for _, l := range lines {
			if len(l) > lineChunk {
				t.Fatalf("line of %d bytes", len(l))
			}
			if utf8.Valid(data) && !utf8.ValidString(l) {
				t.Fatalf("chunk cut splits a UTF-8 sequence")
			}
		}
		if want := bytes.Count(data, []byte("\n")); len(lines) < want {
			t.Fatalf("%d lines for %d newlines", len(lines), want)
		}
	})
}

func TestEncodedLen(t *testing.T) {
	t.Parallel()
	for _, s := range []string{"", "plain text", "\x01\x02\x1f", "tab\there\nnl", `quote " back \`, "<html>&amp;", "é ü 日本", "\xff\xfe bad", "\u2028\u2029", strings.Repeat("\x00", 100)} {
		enc, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got, want := encodedLen(s), len(enc)-2; got != want {
			t.Errorf("encodedLen(%q) = %d, json gives %d", s, got, want)
		}
	}
}
