package v1

import (
	"encoding/json"
	"testing"

	"github.com/msb-dev/msb/sandbox"
)

// A spec's network maps onto msb's: enabled alone follows the namespace,
// disabled is none, a policy becomes msb's lists.
func TestNetworkMapping(t *testing.T) {
	rule := func(action string, dest map[string]any, protocols []any, ports []any) map[string]any {
		return map[string]any{"direction": "egress", "destination": dest, "protocols": protocols, "ports": ports, "action": action}
	}
	for _, c := range []struct {
		name string
		net  map[string]any
		want sandbox.Network
	}{
		{"the SDK's default", map[string]any{"enabled": true, "strict": false}, sandbox.Network{}},
		{"disabled", map[string]any{"enabled": false, "strict": false}, sandbox.Network{Mode: sandbox.NetworkNone}},
		{"allow all", map[string]any{"enabled": true, "strict": false, "max_connections": 10,
			"policy": map[string]any{"default_egress": "allow", "default_ingress": "allow", "rules": []any{
				rule("deny", map[string]any{"domain": "evil.example"}, []any{}, []any{}),
				rule("deny", map[string]any{"group": "private"}, []any{}, []any{})}}},
			sandbox.Network{Mode: sandbox.NetworkOn, Strict: true, Allow: []string{"*"}, Deny: []string{"evil.example"}, MaxConnections: 10}},
		{"PyPI only", map[string]any{"enabled": true, "strict": true,
			"policy": map[string]any{"default_egress": "deny", "default_ingress": "allow", "rules": []any{
				rule("allow", map[string]any{"domain_suffix": "pypi.org"}, []any{"tcp"}, []any{map[string]any{"start": 443, "end": 443}}),
				rule("allow", map[string]any{"domain": "files.pythonhosted.org"}, []any{}, []any{map[string]any{"start": 443, "end": 443}}),
				rule("allow", map[string]any{"cidr": "2001:db8::/32"}, []any{"tcp", "udp"}, []any{map[string]any{"start": 8000, "end": 8100}}),
				rule("allow", map[string]any{"group": "public"}, []any{"udp"}, []any{map[string]any{"start": 53, "end": 53}})}}},
			sandbox.Network{Mode: sandbox.NetworkOn, Strict: true, Allow: []string{"tcp pypi.org:443", "tcp *.pypi.org:443",
				"files.pythonhosted.org:443", "tcp [2001:db8::/32]:8000-8100", "udp [2001:db8::/32]:8000-8100", "udp *:53"}}},
	} {
		raw, _ := json.Marshal(c.net)
		var n Network
		if err := json.Unmarshal(raw, &n); err != nil {
			t.Fatal(err)
		}
		got, err := network(&n)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("%s: %+v, %v; want %+v", c.name, got, err, c.want)
		}
	}
}
