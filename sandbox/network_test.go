package sandbox_test

import (
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
	"github.com/msb-dev/msb/sandbox/sandboxtest"
	"github.com/msb-dev/msb/storage"
)

// netFixture is a Service on the in-memory engine with the network bounds
// of bounds, recording the denials it reports.
type netFixture struct {
	fixture
	mu      sync.Mutex
	reports []sandbox.NetworkDenial
}

func newNetService(t *testing.T, bounds map[string]sandbox.NetworkBounds) *netFixture {
	t.Helper()
	ctx := context.Background()
	db, err := storage.Open(ctx, filepath.Join(t.TempDir(), "msb.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	f := &netFixture{}
	eng := sandboxtest.NewMemory()
	svc := sandbox.NewService(sandbox.ServiceOptions{
		Engine: eng, Store: db, Images: hostImage{}, LogDir: t.TempDir(), Pids: 64,
		Log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		Network: func(ns string) sandbox.NetworkBounds {
			if b, ok := bounds[ns]; ok {
				return b
			}
			return sandbox.DefaultNetworkBounds()
		},
		OnNetworkDenial: func(d sandbox.NetworkDenial) {
			f.mu.Lock()
			f.reports = append(f.reports, d)
			f.mu.Unlock()
		},
	})
	t.Cleanup(func() { svc.Close(context.Background()) })
	f.fixture = fixture{svc, eng, db, ctx}
	return f
}

func (f *netFixture) denials() []sandbox.NetworkDenial {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.reports)
}

func rules(p network.Policy) []string {
	var out []string
	for _, r := range p.Rules {
		out = append(out, r.String())
	}
	return out
}

// Without a word about network a sandbox has none; asking for it gives
// its deny rules, then its allow rules, then deny for everything else,
// and the namespace's limits.
func TestNetworkAtStart(t *testing.T) {
	f := newNetService(t, nil)
	none := sandboxtest.ID(t, "ns", "none")
	if err := f.svc.Start(f.ctx, none, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if spec, _ := f.eng.Spec(none); spec.Network != nil || f.eng.Network(none) != nil {
		t.Fatalf("a sandbox without a network config has one: %+v", spec.Network)
	}
	on := sandboxtest.ID(t, "ns", "on")
	err := f.svc.Start(f.ctx, on, &sandbox.Config{Network: sandbox.Network{Allow: []string{"*.pypi.org:443", "files.pythonhosted.org:443"}, Deny: []string{"evil.pypi.org"}}})
	if err != nil {
		t.Fatal(err)
	}
	cfg := f.eng.Network(on)
	if cfg == nil {
		t.Fatal("no network attached")
	}
	if got := rules(cfg.Policy); !slices.Equal(got, []string{"deny evil.pypi.org", "allow *.pypi.org:443", "allow files.pythonhosted.org:443"}) || cfg.Policy.Default != network.Deny {
		t.Errorf("policy %q, default %v", got, cfg.Policy.Default)
	}
	if cfg.Limits.MaxConns != sandbox.DefaultNetworkConnections || cfg.Limits.DownBytesPerSec != 0 || len(cfg.Exempt) != 0 {
		t.Errorf("limits %+v, exempt %v", cfg.Limits, cfg.Exempt)
	}
	// Enabled without a list: every public destination, by default.
	all := sandboxtest.ID(t, "ns", "all")
	if err := f.svc.Start(f.ctx, all, &sandbox.Config{Network: sandbox.Network{Mode: sandbox.NetworkOn}}); err != nil {
		t.Fatal(err)
	}
	if got := rules(f.eng.Network(all).Policy); !slices.Equal(got, []string{"allow *"}) {
		t.Errorf("enabled without a list: %q", got)
	}
	// Strict without a list: nothing.
	strict := sandboxtest.ID(t, "ns", "strict")
	if err := f.svc.Start(f.ctx, strict, &sandbox.Config{Network: sandbox.Network{Strict: true}}); err != nil {
		t.Fatal(err)
	}
	if got := f.eng.Network(strict); got == nil || len(got.Policy.Rules) != 0 || got.Policy.Default != network.Deny {
		t.Errorf("strict without a list: %+v", got)
	}
	// The stored config keeps what was asked, not the defaults.
	rec, err := f.svc.Get(f.ctx, all)
	if err != nil || rec.Config.Network.Mode != sandbox.NetworkOn || rec.Config.Network.Allow != nil {
		t.Errorf("record %+v, %v", rec.Config.Network, err)
	}
}

// The operator's bounds of a namespace: whether its sandboxes may have
// network, what they get by default, what their rules may reach, and
// their limits.
func TestNetworkBounds(t *testing.T) {
	f := newNetService(t, map[string]sandbox.NetworkBounds{
		"pypi": {Permitted: true, DefaultOn: true, Allow: []string{"*.pypi.org:443", "files.pythonhosted.org:443", "203.0.113.0/24"},
			DefaultAllow: []string{"*.pypi.org:443"}, Deny: []string{"203.0.113.128/25"}, Exempt: []string{"10.1.2.3:5432"},
			MaxConnections: 8, MaxBandwidth: 1 << 20},
		"closed": {Permitted: false},
	})
	start := func(ns, name string, n sandbox.Network) error {
		return f.svc.Start(f.ctx, sandboxtest.ID(t, ns, name), &sandbox.Config{Network: n})
	}
	// Default on, with the namespace's default list and limits.
	if err := start("pypi", "default", sandbox.Network{}); err != nil {
		t.Fatal(err)
	}
	cfg := f.eng.Network(sandboxtest.ID(t, "pypi", "default"))
	if cfg == nil || !slices.Equal(rules(cfg.Policy), []string{"deny 203.0.113.128/25", "allow *.pypi.org:443"}) || cfg.Limits.MaxConns != 8 || cfg.Limits.UpBytesPerSec != 1<<20 {
		t.Fatalf("default network: %+v", cfg)
	}
	if len(cfg.Exempt) != 1 || cfg.Exempt[0].Target() != "10.1.2.3/32:5432" {
		t.Errorf("exempt %v", cfg.Exempt)
	}
	// Asked off.
	if err := start("pypi", "off", sandbox.Network{Mode: sandbox.NetworkNone}); err != nil || f.eng.Network(sandboxtest.ID(t, "pypi", "off")) != nil {
		t.Errorf("off: %v", err)
	}
	// Within the ceiling, narrower limits.
	if err := start("pypi", "narrow", sandbox.Network{Allow: []string{"files.pythonhosted.org:443", "203.0.113.7:80"}, MaxConnections: 2}); err != nil {
		t.Error(err)
	} else if cfg := f.eng.Network(sandboxtest.ID(t, "pypi", "narrow")); cfg.Limits.MaxConns != 2 || cfg.Limits.UpBytesPerSec != 1<<20 {
		t.Errorf("narrow limits: %+v", cfg.Limits)
	}
	for _, c := range []struct {
		ns   string
		n    sandbox.Network
		want string
	}{
		{"pypi", sandbox.Network{Allow: []string{"*"}}, `"*" is more than sandboxes of namespace "pypi" may reach`},
		{"pypi", sandbox.Network{Allow: []string{"pypi.org:443"}}, "is more than"},
		{"pypi", sandbox.Network{Allow: []string{"*.pypi.org"}}, "is more than"},
		{"pypi", sandbox.Network{Allow: []string{"10.1.2.3:5432"}}, "is more than"}, // exempt is not allow
		{"pypi", sandbox.Network{MaxConnections: 9}, "max_connections 9"},
		{"pypi", sandbox.Network{MaxBandwidth: 2 << 20}, "max_bandwidth"},
		{"closed", sandbox.Network{Mode: sandbox.NetworkOn}, "may not have network"},
	} {
		err := start(c.ns, "refused", c.n)
		if !errdefs.Is(err, errdefs.Forbidden) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s %+v: %v, want Forbidden with %q", c.ns, c.n, err, c.want)
		}
	}
	// Refused requests leave nothing behind: no record, no engine call.
	if _, err := f.svc.Get(f.ctx, sandboxtest.ID(t, "pypi", "refused")); !errdefs.Is(err, errdefs.NotFound) {
		t.Errorf("refused start left a record: %v", err)
	}
	// A namespace that may not have network still runs sandboxes without.
	if err := start("closed", "plain", sandbox.Network{}); err != nil {
		t.Error(err)
	}
}

// A running sandbox's network changes at once and for its next starts,
// within the same bounds as at start.
func TestSetNetwork(t *testing.T) {
	f := newNetService(t, map[string]sandbox.NetworkBounds{"ns": {Permitted: true, Allow: []string{"*.test:80,443"}}})
	id := sandboxtest.ID(t, "ns", "box")
	if _, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Mode: sandbox.NetworkOn}); !errdefs.Is(err, errdefs.NotFound) {
		t.Fatalf("unknown sandbox: %v", err)
	}
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Network: sandbox.Network{Allow: []string{"a.test:443"}}}); err != nil {
		t.Fatal(err)
	}
	up, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Allow: []string{"b.test:443", "c.test:80"}, MaxConnections: 3})
	if err != nil || !up.Running || !slices.Equal(up.Network.Allow, []string{"b.test:443", "c.test:80"}) || up.Network.MaxConnections != 3 {
		t.Fatalf("update: %+v, %v", up, err)
	}
	cfg := f.eng.Network(id)
	if got := rules(cfg.Policy); !slices.Equal(got, []string{"allow b.test:443", "allow c.test:80"}) || cfg.Limits.MaxConns != 3 {
		t.Errorf("engine's network after the update: %q %+v", got, cfg.Limits)
	}
	// Over the ceiling: refused, nothing changes.
	if _, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Allow: []string{"*"}}); !errdefs.Is(err, errdefs.Forbidden) {
		t.Errorf("over the ceiling: %v", err)
	}
	if _, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Allow: []string{"a..test"}}); !errdefs.Is(err, errdefs.Invalid) {
		t.Errorf("malformed: %v", err)
	}
	if got := rules(f.eng.Network(id).Policy); !slices.Equal(got, []string{"allow b.test:443", "allow c.test:80"}) {
		t.Errorf("refused update changed the network: %q", got)
	}
	// Kept for the next start (sandbox.start without a config).
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.Start(f.ctx, id, nil); err != nil {
		t.Fatal(err)
	}
	if got := rules(f.eng.Network(id).Policy); !slices.Equal(got, []string{"allow b.test:443", "allow c.test:80"}) {
		t.Errorf("after a restart: %q", got)
	}
	// Off on the running sandbox, then on again.
	if up, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Mode: sandbox.NetworkNone}); err != nil || up.Network.Mode != sandbox.NetworkNone || f.eng.Network(id) != nil {
		t.Errorf("off: %+v, %v, %v", up, err, f.eng.Network(id))
	}
	if _, err := f.svc.SetNetwork(f.ctx, id, sandbox.Network{Allow: []string{"a.test:80"}}); err != nil || f.eng.Network(id) == nil {
		t.Errorf("on again: %v", err)
	}
	// A stopped sandbox: recorded only.
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	up, err = f.svc.SetNetwork(f.ctx, id, sandbox.Network{Allow: []string{"d.test:443"}})
	if err != nil || up.Running {
		t.Fatalf("stopped: %+v, %v", up, err)
	}
	if rec, _ := f.svc.Get(f.ctx, id); !slices.Equal(rec.Config.Network.Allow, []string{"d.test:443"}) {
		t.Errorf("record after an update while stopped: %+v", rec.Config.Network)
	}
}

// Refusals are counted in the metrics and reported at most once a second
// per sandbox, with how many were left out; the last ones are reported
// when the sandbox stops.
func TestNetworkDenials(t *testing.T) {
	f := newNetService(t, nil)
	id := sandboxtest.ID(t, "ns", "box")
	if err := f.svc.Start(f.ctx, id, &sandbox.Config{Network: sandbox.Network{Allow: []string{"a.test"}}}); err != nil {
		t.Fatal(err)
	}
	d := network.Denial{Proto: "tcp", Dst: netip.MustParseAddrPort("169.254.169.254:80"), Reason: network.ReasonProtected, Rule: -1}
	for range 5 {
		if !f.eng.Deny(id, d) {
			t.Fatal("no network")
		}
	}
	if r := f.denials(); len(r) != 1 || r[0].ID != id || r[0].Suppressed != 0 || r[0].Denial.Reason != network.ReasonProtected {
		t.Fatalf("first report: %+v", r)
	}
	deadline := time.Now().Add(3 * time.Second)
	for len(f.denials()) < 2 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	r := f.denials()
	if len(r) != 2 || r[1].Suppressed != 3 {
		t.Fatalf("reports after a second: %+v", r)
	}
	if got := sandbox.DescribeDenial(r[1]); !strings.Contains(got, "tcp protected 169.254.169.254:80") || !strings.Contains(got, "3 more") {
		t.Errorf("description %q", got)
	}
	m, err := f.svc.SandboxMetrics(f.ctx, id)
	if err != nil || m.Network == nil || m.Network.Denied != 5 {
		t.Fatalf("metrics %+v, %v", m.Network, err)
	}
	f.eng.Deny(id, d)
	f.eng.Deny(id, d)
	if err := f.svc.Stop(f.ctx, id); err != nil {
		t.Fatal(err)
	}
	if r := f.denials(); len(r) != 3 || r[2].Suppressed != 1 {
		t.Errorf("report at stop: %+v", r)
	}
	none := sandboxtest.ID(t, "ns", "none")
	if err := f.svc.Start(f.ctx, none, &sandbox.Config{}); err != nil {
		t.Fatal(err)
	}
	if m, _ := f.svc.SandboxMetrics(f.ctx, none); m.Network != nil {
		t.Errorf("metrics of a sandbox without network: %+v", m.Network)
	}
}
