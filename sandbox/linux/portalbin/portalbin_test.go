package portalbin

import (
	"strings"
	"testing"
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
