package image

import (
	"archive/tar"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
)

type tarEntry struct {
	name, link string
	typ        byte
	body       string
}

func tarOf(t *testing.T, entries ...tarEntry) *bytes.Reader {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: 0o755, Size: int64(len(e.body))}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	return bytes.NewReader(buf.Bytes())
}

// TestUnpackRefusesEscapes feeds layers that try to write outside their
// directory; each must fail with errUnsafe and leave the outside untouched.
func TestUnpackRefusesEscapes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name    string
		entries []tarEntry
	}{
		{"dotdot", []tarEntry{{name: "../escaped", typ: tar.TypeReg, body: "x"}}},
		{"dotdot-deep", []tarEntry{{name: "a/../../escaped", typ: tar.TypeReg, body: "x"}}},
		{"through-absolute-symlink", []tarEntry{{name: "out", link: "OUTSIDE", typ: tar.TypeSymlink}, {name: "out/escaped", typ: tar.TypeReg, body: "x"}}},
		{"through-relative-symlink", []tarEntry{{name: "d", typ: tar.TypeDir}, {name: "d/up", link: "..", typ: tar.TypeSymlink}, {name: "d/up/up/escaped", typ: tar.TypeReg, body: "x"}}},
		{"symlink-climbing-out", []tarEntry{{name: "a/link", link: "../../../../etc/shadow", typ: tar.TypeSymlink}}},
		{"hardlink-out", []tarEntry{{name: "hard", link: "../outside-file", typ: tar.TypeLink}}},
		{"hardlink-absolute-out", []tarEntry{{name: "hard", link: "OUTSIDE_FILE", typ: tar.TypeLink}}},
		{"whiteout-dotdot", []tarEntry{{name: "a/.wh...", typ: tar.TypeReg}}},
	} {
		t.Run(c.name, func(t *testing.T) {
			base := t.TempDir()
			outside := filepath.Join(base, "outside")
			os.Mkdir(outside, 0o755)
			os.WriteFile(filepath.Join(base, "outside-file"), []byte("secret"), 0o600)
			layer := filepath.Join(base, "layer", "fs")
			os.MkdirAll(layer, 0o755)
			for i := range c.entries {
				switch c.entries[i].link {
				case "OUTSIDE":
					c.entries[i].link = outside
				case "OUTSIDE_FILE":
					c.entries[i].link = filepath.Join(base, "outside-file")
				}
			}
			_, err := unpackLayer(tarOf(t, c.entries...), layer)
			if !errors.Is(err, errUnsafe) {
				t.Errorf("unpack = %v, want errUnsafe", err)
			}
			if ents, _ := os.ReadDir(outside); len(ents) > 0 {
				t.Errorf("wrote outside the layer: %v", ents)
			}
			for _, p := range []string{filepath.Join(base, "escaped"), filepath.Join(base, "layer", "escaped")} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("wrote %s", p)
				}
			}
		})
	}
}

func TestEscapes(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		dir, target string
		want        bool
	}{
		{".", "busybox", false}, {"usr/bin", "../../bin/busybox", false}, {"usr/bin", "../../../bin", true},
		{".", "..", true}, {"a", "/etc/passwd", false}, {"a/b", "./../../c", false}, {"a/b", "x/../../../..", true},
	} {
		if got := escapes(c.dir, c.target); got != c.want {
			t.Errorf("escapes(%q, %q) = %v, want %v", c.dir, c.target, got, c.want)
		}
	}
}
