package portalbin

import (
	"os"
	"strings"
	"testing"
	"testing/fstest"
)

// A portal binary of another machine or source revision is refused, with
// what differs; a setting only one build recorded decides nothing.
func TestSameBuild(t *testing.T) {
	ours := map[string]string{"GOOS": "linux", "GOARCH": "amd64", "vcs.revision": "abc", "vcs.modified": "false"}
	for _, c := range []struct {
		theirs map[string]string
		want   string // "" for none
	}{
		{map[string]string{"GOOS": "linux", "GOARCH": "amd64", "vcs.revision": "abc", "vcs.modified": "false"}, ""},
		{map[string]string{"GOOS": "linux", "GOARCH": "amd64"}, ""},
		{map[string]string{"GOOS": "linux", "GOARCH": "arm64", "vcs.revision": "abc"}, "GOARCH=arm64, msb with GOARCH=amd64"},
		{map[string]string{"GOOS": "linux", "GOARCH": "amd64", "vcs.revision": "def"}, "vcs.revision=def"},
		{map[string]string{"GOOS": "linux", "GOARCH": "amd64", "vcs.revision": "abc", "vcs.modified": "true"}, "vcs.modified=true"},
	} {
		err := sameBuild(c.theirs, ours)
		if c.want == "" && err != nil || c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)) {
			t.Errorf("sameBuild(%v): %v; want %q", c.theirs, err, c.want)
		}
	}
	if err := sameBuild(ours, map[string]string{"GOOS": "linux", "GOARCH": "amd64"}); err != nil {
		t.Errorf("against a build that recorded no revision: %v", err)
	}
}

// What msb carries in place of a portal binary is refused, saying how to
// build one: nothing (a checkout without go generate: bin/ holds only its
// README), an empty file, a file that is no Go binary. The test binary
// itself, a Go program of this machine, is taken (a test binary records
// no revision: TestSameBuild covers those).
func TestBinaryIn(t *testing.T) {
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	readme := &fstest.MapFile{Data: []byte("generated")}
	for _, c := range []struct {
		name string
		fsys fstest.MapFS
		want string // "" for none
	}{
		{"none", fstest.MapFS{"bin/README.md": readme}, "carries no portal binary; build it as the README does"},
		{"empty", fstest.MapFS{"bin/" + Name: &fstest.MapFile{}}, "carries no portal binary"},
		{"not a Go binary", fstest.MapFS{"bin/" + Name: &fstest.MapFile{Data: []byte("#!/bin/sh\necho hi\n")}}, "the portal binary msb carries: "},
		{"a Go binary of this build", fstest.MapFS{"bin/" + Name: &fstest.MapFile{Data: self}}, ""},
	} {
		data, err := binaryIn(c.fsys)
		switch {
		case c.want == "" && (err != nil || data == nil):
			t.Errorf("%s: %v", c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want) || data != nil):
			t.Errorf("%s: %v; want an error with %q", c.name, err, c.want)
		}
	}
}
