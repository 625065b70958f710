package sandbox_test

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

func TestNormalizeDefaults(t *testing.T) {
	got, err := sandbox.Normalize(sandbox.Config{Scripts: map[string]string{}, Envs: []string{}}, sandbox.Bounds{})
	if err != nil {
		t.Fatal(err)
	}
	want := sandbox.Config{Image: sandbox.DefaultImage, Memory: sandbox.DefaultMemory, CPUs: sandbox.DefaultCPUs, Disk: sandbox.DefaultDisk, Shell: sandbox.DefaultShell}
	if !got.Equal(want) || got.Scripts != nil || got.Envs != nil {
		t.Fatalf("Normalize of an empty config = %+v, want %+v", got, want)
	}
}

// A config's disk is the server's default when it has none, and is
// refused below sandbox.MinDisk and above the operator's maximum, naming
// the setting.
func TestNormalizeDisk(t *testing.T) {
	b := sandbox.Bounds{DefaultDisk: 1024, MaxDisk: 4096}
	if got, err := sandbox.Normalize(sandbox.Config{}, b); err != nil || got.Disk != 1024 {
		t.Fatalf("default disk: %d, %v", got.Disk, err)
	}
	if got, err := sandbox.Normalize(sandbox.Config{Disk: 4096}, b); err != nil || got.Disk != 4096 {
		t.Fatalf("disk at the maximum: %d, %v", got.Disk, err)
	}
	for _, d := range []int{-1, sandbox.MinDisk - 1, 4097} {
		_, err := sandbox.Normalize(sandbox.Config{Disk: d}, b)
		if !errdefs.Is(err, errdefs.Invalid) || !strings.Contains(err.Error(), "config.disk") || !strings.Contains(err.Error(), "max_disk in config.toml") {
			t.Errorf("disk %d: %v", d, err)
		}
	}
}

func TestNormalizeCanonicalForms(t *testing.T) {
	got, err := sandbox.Normalize(sandbox.Config{
		Volumes: []sandbox.Volume{{Host: "data/./x", Guest: "/data/"}},
		Workdir: "/srv/app/../app",
		Tmpfs:   []sandbox.Tmpfs{{Guest: "/scratch/"}},
	}, sandbox.Bounds{})
	if err != nil {
		t.Fatal(err)
	}
	if got.Volumes[0] != (sandbox.Volume{Host: "data/x", Guest: "/data"}) || got.Workdir != "/srv/app" ||
		got.Tmpfs[0] != (sandbox.Tmpfs{Guest: "/scratch", SizeMiB: sandbox.DefaultMemory / 2}) {
		t.Fatalf("not canonical: %+v", got)
	}
	again, _ := sandbox.Normalize(got, sandbox.Bounds{})
	if !again.Equal(got) {
		t.Fatal("Normalize is not idempotent")
	}
}

func TestNormalizeRefuses(t *testing.T) {
	bounds := sandbox.Bounds{MaxCPUs: 2, MaxMemory: 1024}
	for _, c := range []struct {
		name string
		cfg  sandbox.Config
		b    sandbox.Bounds
		want string
	}{
		{"image with space", sandbox.Config{Image: "a b"}, bounds, "config.image"},
		{"image too long", sandbox.Config{Image: strings.Repeat("a", 513)}, bounds, "config.image"},
		{"memory too low", sandbox.Config{Memory: 8}, bounds, "config.memory 8 MiB is out of range: use 32 to 1024"},
		{"memory too high", sandbox.Config{Memory: 2048}, bounds, "config.memory"},
		{"negative memory", sandbox.Config{Memory: -1}, bounds, "config.memory"},
		{"cpus too many", sandbox.Config{CPUs: 3}, bounds, "config.cpus 3 is out of range: use 1 to 2"},
		{"negative cpus", sandbox.Config{CPUs: -1}, bounds, "config.cpus"},
		{"volume to /proc", sandbox.Config{Volumes: []sandbox.Volume{{Host: "d", Guest: "/proc/x"}}}, bounds, "reserved"},
		{"volume to /", sandbox.Config{Volumes: []sandbox.Volume{{Host: "d", Guest: "/"}}}, bounds, "reserved"},
		{"volume with ..", sandbox.Config{Volumes: []sandbox.Volume{{Host: "../etc", Guest: "/x"}}}, bounds, `may not contain ".."`},
		{"relative guest", sandbox.Config{Volumes: []sandbox.Volume{{Host: "d", Guest: "x"}}}, bounds, "must be absolute"},
		{"colon in a host path", sandbox.Config{Volumes: []sandbox.Volume{{Host: "a:b", Guest: "/x"}}}, bounds, "may not contain ':'"},
		{"guest twice", sandbox.Config{Volumes: []sandbox.Volume{{Host: "a", Guest: "/x"}, {Host: "b", Guest: "/x/"}}}, bounds, "used twice"},
		{"port out of range", sandbox.Config{Ports: []sandbox.Port{{Host: 70000, Guest: 80}}}, bounds, "1 to 65535"},
		{"privileged port", sandbox.Config{Ports: []sandbox.Port{{Host: 80, Guest: 80}}}, bounds, "allow_privileged_ports"},
		{"host port twice", sandbox.Config{Ports: []sandbox.Port{{Host: 8080, Guest: 80}, {Host: 8080, Guest: 81}}}, bounds, "used twice"},
		{"no ports on this engine", sandbox.Config{Ports: []sandbox.Port{{Host: 8080, Guest: 80}}}, sandbox.Bounds{NoPorts: true}, "cannot forward ports"},
		{"env without =", sandbox.Config{Envs: []string{"A"}}, bounds, "not KEY=VALUE"},
		{"env with NUL", sandbox.Config{Envs: []string{"A=\x00"}}, bounds, "not KEY=VALUE"},
		{"bad dependency", sandbox.Config{DependsOn: []string{"-x"}}, bounds, "depends_on"},
		{"dependency twice", sandbox.Config{DependsOn: []string{"a", "a"}}, bounds, "listed twice"},
		{"relative workdir", sandbox.Config{Workdir: "work"}, bounds, "config.workdir"},
		{"workdir in /dev", sandbox.Config{Workdir: "/dev/shm"}, bounds, "reserved"},
		{"relative shell", sandbox.Config{Shell: "sh"}, bounds, "config.shell"},
		{"script without a name", sandbox.Config{Scripts: map[string]string{"": "x"}}, bounds, "config.scripts"},
		{"exec too long", sandbox.Config{Exec: strings.Repeat("x", 1<<20+1)}, bounds, "config.exec"},
		{"relative tmpfs", sandbox.Config{Tmpfs: []sandbox.Tmpfs{{Guest: "scratch"}}}, bounds, "config.tmpfs"},
		{"tmpfs on /", sandbox.Config{Tmpfs: []sandbox.Tmpfs{{Guest: "/"}}}, bounds, "reserved"},
		{"tmpfs in /.msb", sandbox.Config{Tmpfs: []sandbox.Tmpfs{{Guest: "/.msb/x"}}}, bounds, "reserved"},
		{"tmpfs over a volume", sandbox.Config{Volumes: []sandbox.Volume{{Host: "d", Guest: "/data/x"}}, Tmpfs: []sandbox.Tmpfs{{Guest: "/data"}}}, bounds, "overlaps"},
		{"tmpfs twice", sandbox.Config{Tmpfs: []sandbox.Tmpfs{{Guest: "/s"}, {Guest: "/s/"}}}, bounds, "overlaps"},
		{"tmpfs larger than memory", sandbox.Config{Memory: 64, Tmpfs: []sandbox.Tmpfs{{Guest: "/s", SizeMiB: 65}}}, bounds, "out of range"},
		{"negative tmpfs", sandbox.Config{Tmpfs: []sandbox.Tmpfs{{Guest: "/s", SizeMiB: -1}}}, bounds, "out of range"},
		{"network rule", sandbox.Config{Network: sandbox.Network{Allow: []string{"*.*.org"}}}, bounds, "config.network.allow"},
		{"network deny rule", sandbox.Config{Network: sandbox.Network{Deny: []string{"x.org:0"}}}, bounds, "config.network.deny"},
		{"network rules without network", sandbox.Config{Network: sandbox.Network{Mode: sandbox.NetworkNone, Allow: []string{"x.org"}}}, bounds, "set enabled to true"},
		{"network mode", sandbox.Config{Network: sandbox.Network{Mode: "maybe"}}, bounds, "config.network.mode"},
		{"network connections", sandbox.Config{Network: sandbox.Network{MaxConnections: -1}}, bounds, "config.network.max_connections"},
		{"network bandwidth", sandbox.Config{Network: sandbox.Network{MaxBandwidth: -1}}, bounds, "config.network.max_bandwidth"},
		{"network rules too many", sandbox.Config{Network: sandbox.Network{Allow: make([]string, 257)}}, bounds, "too many"},
		{"no network on this engine", sandbox.Config{Network: sandbox.Network{Mode: sandbox.NetworkOn}}, sandbox.Bounds{NoNetwork: true}, "cannot give sandboxes network"},
	} {
		_, err := sandbox.Normalize(c.cfg, c.b)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want class Invalid containing %q", c.name, err, c.want)
		}
	}
}

func TestParseVolumeAndPort(t *testing.T) {
	v, err := sandbox.ParseVolume("data:/data:ro")
	if err != nil || v != (sandbox.Volume{Host: "data", Guest: "/data", ReadOnly: true}) || v.String() != "data:/data:ro" {
		t.Fatalf("ParseVolume = %+v, %v", v, err)
	}
	for _, bad := range []string{"data", ":/x", "a:b:c:d", "a:/b:rx"} {
		if _, err := sandbox.ParseVolume(bad); err == nil {
			t.Errorf("ParseVolume(%q) succeeded", bad)
		}
	}
	p, err := sandbox.ParsePort("8080:80")
	if err != nil || p != (sandbox.Port{Host: 8080, Guest: 80}) || p.String() != "8080:80" {
		t.Fatalf("ParsePort = %+v, %v", p, err)
	}
	for _, bad := range []string{"8080", "a:80", "80:b", ""} {
		if _, err := sandbox.ParsePort(bad); err == nil {
			t.Errorf("ParsePort(%q) succeeded", bad)
		}
	}
}

func TestParseID(t *testing.T) {
	id, err := sandbox.ParseID("team-a", "box_1")
	if err != nil || id.Namespace() != "team-a" || id.Name() != "box_1" || id.Key() != "team-a.box_1" {
		t.Fatalf("ParseID = %v, %v", id, err)
	}
	if back, err := sandbox.ParseKey(id.Key()); err != nil || back != id {
		t.Fatalf("ParseKey(Key) = %v, %v", back, err)
	}
	for _, c := range [][2]string{{"", "a"}, {"a", ""}, {"*", "a"}, {"a", "b.c"}, {"a", strings.Repeat("x", 64)}, {"-a", "b"}} {
		if _, err := sandbox.ParseID(c[0], c[1]); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("ParseID(%q, %q) = %v, want class Invalid", c[0], c[1], err)
		}
	}
	if !(sandbox.ID{}).IsZero() {
		t.Error("zero ID is not zero")
	}
}

// TestConfigEqualSeesEveryField changes each field of a config in turn:
// Equal must tell every change, so that a field added later and left out of
// Equal fails here rather than making a restart with a new config a no-op.
func TestConfigEqualSeesEveryField(t *testing.T) {
	base := sandbox.Config{}
	typ := reflect.TypeOf(base)
	for i := range typ.NumField() {
		f := typ.Field(i)
		var changed sandbox.Config
		v := reflect.ValueOf(&changed).Elem().Field(i)
		if f.Anonymous {
			// Embedded structs: every field of theirs in turn.
			for j := range v.NumField() {
				c := sandbox.Config{}
				setAny(t, reflect.ValueOf(&c).Elem().Field(i).Field(j))
				if c.Equal(base) {
					t.Errorf("Equal ignores %s.%s", f.Name, v.Type().Field(j).Name)
				}
			}
			continue
		}
		setAny(t, v)
		if changed.Equal(base) {
			t.Errorf("Equal ignores %s", f.Name)
		}
	}
}

// setAny sets v to a value other than its zero value.
func setAny(t *testing.T, v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Int, reflect.Int64:
		v.SetInt(1)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		s := reflect.MakeSlice(v.Type(), 1, 1)
		setAny(t, s.Index(0))
		v.Set(s)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		m.SetMapIndex(reflect.ValueOf("k").Convert(v.Type().Key()), reflect.ValueOf("v").Convert(v.Type().Elem()))
		v.Set(m)
	case reflect.Struct:
		setAny(t, v.Field(0))
	case reflect.Uint64, reflect.Uint32:
		v.SetUint(1)
	default:
		t.Fatalf("setAny: no value for a %s: extend the test", v.Type())
	}
}

// Network rules are parsed, rewritten, sorted and deduplicated, so that
// two configs asking for the same network compare equal; rules or limits
// without a mode ask for network.
func TestNormalizeNetwork(t *testing.T) {
	got, err := sandbox.Normalize(sandbox.Config{Network: sandbox.Network{
		Allow: []string{"files.pythonhosted.org:443", "*.PyPI.org:443", "files.pythonhosted.org:443", "::ffff:203.0.113.7"},
		Deny:  []string{"TCP evil.test"},
	}}, sandbox.Bounds{})
	if err != nil {
		t.Fatal(err)
	}
	want := sandbox.Network{Mode: sandbox.NetworkOn, Allow: []string{"*.pypi.org:443", "203.0.113.7/32", "files.pythonhosted.org:443"}, Deny: []string{"tcp evil.test"}}
	if !got.Network.Equal(want) {
		t.Fatalf("network %+v, want %+v", got.Network, want)
	}
	again, _ := sandbox.Normalize(got, sandbox.Bounds{})
	if !again.Equal(got) {
		t.Fatal("Normalize is not idempotent")
	}
	for _, n := range []sandbox.Network{{}, {Mode: sandbox.NetworkNone}, {Mode: sandbox.NetworkOn}} {
		got, err := sandbox.NormalizeNetwork(n, "network")
		if err != nil || !got.Equal(n) {
			t.Errorf("NormalizeNetwork(%+v) = %+v, %v", n, got, err)
		}
	}
	if got, _ := sandbox.NormalizeNetwork(sandbox.Network{Strict: true}, "network"); got.Mode != sandbox.NetworkOn {
		t.Errorf("strict without a mode: %+v", got)
	}
}

func TestNetworkBoundsCheck(t *testing.T) {
	if err := sandbox.DefaultNetworkBounds().Check("network"); err != nil {
		t.Fatal(err)
	}
	good := sandbox.NetworkBounds{Permitted: true, Allow: []string{"*.pypi.org:443", "files.pythonhosted.org:443"}, DefaultAllow: []string{"*.pypi.org:443"}, Exempt: []string{"10.1.2.0/24:5432"}}
	if err := good.Check("network"); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		b    sandbox.NetworkBounds
		want string
	}{
		{sandbox.NetworkBounds{Allow: []string{"x..org"}}, "network.namespaces.a.allow"},
		{sandbox.NetworkBounds{Exempt: []string{"internal.example:80"}}, "only addresses can be exempt"},
		{sandbox.NetworkBounds{Allow: []string{"*.pypi.org:443"}, DefaultAllow: []string{"*"}}, "not within"},
		{sandbox.NetworkBounds{MaxConnections: -1}, "max_connections"},
	} {
		if err := c.b.Check("network.namespaces.a"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want %q", c.b, err, c.want)
		}
	}
}
