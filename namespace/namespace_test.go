package namespace_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/msb-dev/msb/namespace"
)

var nameRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$`)

func TestValidateName(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"a", true},
		{"A", true},
		{"0", true},
		{"my-sandbox_1", true},
		{"Z-_", true},
		{strings.Repeat("a", 63), true},
		{"9" + strings.Repeat("-", 62), true},
		{"", false},
		{strings.Repeat("a", 64), false},
		{"-a", false},
		{"_a", false},
		{"-", false},
		{"a/b", false},
		{"a.b", false},
		{"a b", false},
		{" a", false},
		{"a\n", false},
		{"a\x00", false},
		{"*", false},
		{"..", false},
		{"é", false},
		{"aé", false},
		{"ａ", false},       // fullwidth a
		{"a\u212a", false}, // Kelvin sign, folds to k
		{"\xff", false},
	}
	for _, tt := range tests {
		for _, kind := range []string{"sandbox", "namespace"} {
			err := namespace.ValidateName(kind, tt.in)
			if (err == nil) != tt.ok {
				t.Errorf("ValidateName(%q, %q) = %v; want ok=%v", kind, tt.in, err, tt.ok)
				continue
			}
			if err == nil {
				continue
			}
			if !errors.Is(err, namespace.ErrInvalidName) {
				t.Errorf("ValidateName(%q, %q) error %v does not wrap ErrInvalidName", kind, tt.in, err)
			}
			if !strings.HasPrefix(err.Error(), "invalid "+kind+" name ") {
				t.Errorf("ValidateName(%q, %q) message %q does not name the kind", kind, tt.in, err)
			}
		}
	}
}

func TestValidateNameMessage(t *testing.T) {
	err := namespace.ValidateName("namespace", "a/b")
	want := `invalid namespace name "a/b": use 1-63 letters, digits, '-' or '_', starting with a letter or digit`
	if err == nil || err.Error() != want {
		t.Errorf("message = %v; want %s", err, want)
	}

	err = namespace.ValidateName("sandbox", "x\ninjected log line")
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `"x\ninjected log line"`) {
		t.Errorf("control characters not escaped: %q", err)
	}

	long := strings.Repeat("b", 10000)
	err = namespace.ValidateName("sandbox", long)
	if err == nil || len(err.Error()) > 200 || !strings.Contains(err.Error(), strings.Repeat("b", 64)+`"...`) {
		t.Errorf("long input not truncated: %d bytes", len(err.Error()))
	}
}

func TestValidateClaim(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"*", true},
		{"team-a", true},
		{"a", true},
		{"", false},
		{"**", false},
		{"*a", false},
		{" *", false},
		{"-a", false},
		{"a/b", false},
		{strings.Repeat("a", 64), false},
	}
	for _, tt := range tests {
		err := namespace.ValidateClaim(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateClaim(%q) = %v; want ok=%v", tt.in, err, tt.ok)
		}
		if err != nil && !errors.Is(err, namespace.ErrInvalidName) {
			t.Errorf("ValidateClaim(%q) error %v does not wrap ErrInvalidName", tt.in, err)
		}
	}
}

func TestCoversAndAuthorize(t *testing.T) {
	tests := []struct {
		claim, ns string
		want      bool
		msg       string
	}{
		{"*", "*", true, ""},
		{"*", "a", true, ""},
		{"a", "a", true, ""},
		{"a", "b", false, `API key for namespace "a" cannot access namespace "b"`},
		{"a", "A", false, `API key for namespace "a" cannot access namespace "A"`},
		{"a", "*", false, `API key for namespace "a" cannot access all namespaces: it may only list its own namespace`},
		{"a", "", false, `API key for namespace "a" cannot access namespace ""`},
	}
	for _, tt := range tests {
		if got := namespace.Covers(tt.claim, tt.ns); got != tt.want {
			t.Errorf("Covers(%q, %q) = %v; want %v", tt.claim, tt.ns, got, tt.want)
		}
		err := namespace.Authorize(tt.claim, tt.ns)
		if tt.want {
			if err != nil {
				t.Errorf("Authorize(%q, %q) = %v; want nil", tt.claim, tt.ns, err)
			}
			continue
		}
		if !errors.Is(err, namespace.ErrForbidden) {
			t.Errorf("Authorize(%q, %q) = %v; want ErrForbidden", tt.claim, tt.ns, err)
		} else if err.Error() != tt.msg {
			t.Errorf("Authorize(%q, %q) message %q; want %q", tt.claim, tt.ns, err, tt.msg)
		}
	}
}

func TestValidateTarget(t *testing.T) {
	tests := []struct {
		ns       string
		allowAll bool
		ok       bool
	}{
		{"default", false, true},
		{"default", true, true},
		{"*", true, true},
		{"*", false, false},
		{"", true, false},
		{"-x", true, false},
		{"a*", true, false},
	}
	for _, tt := range tests {
		err := namespace.ValidateTarget(tt.ns, tt.allowAll)
		if (err == nil) != tt.ok {
			t.Errorf("ValidateTarget(%q, %v) = %v; want ok=%v", tt.ns, tt.allowAll, err, tt.ok)
		}
		if err != nil && !errors.Is(err, namespace.ErrInvalidName) {
			t.Errorf("ValidateTarget(%q, %v) error %v does not wrap ErrInvalidName", tt.ns, tt.allowAll, err)
		}
	}
	err := namespace.ValidateTarget("*", false)
	if want := `namespace "*" is only allowed in sandbox.metrics.get`; err == nil || err.Error() != want {
		t.Errorf("ValidateTarget(\"*\", false) = %v; want %s", err, want)
	}
}

func TestVisible(t *testing.T) {
	tests := []struct{ claim, ns, want string }{
		{"*", "*", "*"},
		{"a", "*", "a"},
		{"*", "a", "a"},
		{"a", "a", "a"},
		{"a", "b", "b"},
	}
	for _, tt := range tests {
		if got := namespace.Visible(tt.claim, tt.ns); got != tt.want {
			t.Errorf("Visible(%q, %q) = %q; want %q", tt.claim, tt.ns, got, tt.want)
		}
	}
}

func FuzzValidateName(f *testing.F) {
	for _, s := range []string{"a", "my-sandbox_1", "", "-a", "_a", "a/b", "*", "é", strings.Repeat("a", 63), strings.Repeat("a", 64), "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := namespace.ValidateName("sandbox", s)
		if want := nameRE.MatchString(s); (err == nil) != want {
			t.Fatalf("ValidateName(%q) = %v; regexp says valid=%v", s, err, want)
		}
		if err != nil && !errors.Is(err, namespace.ErrInvalidName) {
			t.Fatalf("ValidateName(%q) error %v does not wrap ErrInvalidName", s, err)
		}
		if (namespace.ValidateClaim(s) == nil) != (s == namespace.All || err == nil) {
			t.Fatalf("ValidateClaim(%q) disagrees with ValidateName", s)
		}
	})
}
