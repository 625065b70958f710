package v1

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/msb-dev/msb/errdefs"
)

// FuzzCreateBody: no create body makes the mapping panic, and every
// refusal is of class Invalid with the code the SDK raises
// InvalidConfigError for; what is accepted echoes as a spec that decodes
// as a create body again.
func FuzzCreateBody(f *testing.F) {
	f.Add(`{"name":"a","image":{"type":"oci","reference":"alpine"},"mounts":[{"type":"tmpfs","guest":"/t","size_mib":8,"options":{"readonly":false,"noexec":false,"nosuid":false,"nodev":false}}]}`)
	f.Add(`{"name":"a","image":{"type":"bind","path":"/"},"lifecycle":{"ephemeral":true,"max_duration_secs":18446744073709551615,"idle_timeout_secs":null}}`)
	f.Add(`{"name":"a","image":{"type":"oci","reference":"x"},"network":{"enabled":true,"policy":{"default_egress":"deny","default_ingress":"deny","rules":[]},"strict":true},"env":[{"key":"A","value":"1"}],"rlimits":[{"resource":"nofile","soft":1,"hard":2}]}`)
	f.Fuzz(func(t *testing.T, body string) {
		var s Spec
		if decodeStrict([]byte(body), &s) != nil {
			return
		}
		cfg, err := s.config()
		if err != nil {
			var ce *codedError
			if !errdefs.Is(err, errdefs.Invalid) || !errors.As(err, &ce) || ce.code != codeInvalidConfig {
				t.Fatalf("refusal %v is not an invalid_sandbox_config", err)
			}
			return
		}
		echo, err := json.Marshal(specOf("a", cfg, false))
		if err != nil {
			t.Fatal(err)
		}
		var again Spec
		if err := decodeStrict(echo, &again); err != nil {
			t.Fatalf("the echoed spec %s does not decode: %v", echo, err)
		}
		if _, err := again.config(); err != nil && !strings.Contains(err.Error(), "image") {
			t.Fatalf("the echoed spec %s is refused: %v", echo, err)
		}
	})
}

// FuzzCursor: a Last-Event-ID either decodes into what encodes back to
// it, or is refused.
func FuzzCursor(f *testing.F) {
	f.Add("AQEAAAAAAAAABwAAAAAAAAA=")
	f.Add("AA==")
	f.Fuzz(func(t *testing.T, s string) {
		c, err := decodeCursor(s)
		if err != nil || c.Run == 0 && c.Offset == 0 {
			return
		}
		if encodeCursor(c) != s {
			t.Fatalf("%q decodes to %v, which encodes to %q", s, c, encodeCursor(c))
		}
	})
}
