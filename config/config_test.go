package config_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/msb-dev/msb/config"
)

// clearEnv makes the test independent of the caller's environment
// (loadEnv treats an empty variable as unset).
func clearEnv(t *testing.T) {
	t.Helper()
	for _, v := range []string{"MSB_HOST", "MSB_PORT", "MSB_TLS_CERT", "MSB_TLS_KEY"} {
		t.Setenv(v, "")
	}
}

func writeConfig(t *testing.T, home, body string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(home, config.FileName), []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

// loadChecked writes body as home's config file and loads and validates
// it.
func loadChecked(t *testing.T, home, body string) (config.Config, error) {
	t.Helper()
	writeConfig(t, home, body)
	c, err := config.Load(home)
	if err == nil {
		err = c.Validate()
	}
	return c, err
}

// invalidFile is a config file that must be refused, with an error
// wrapping ErrInvalid that mentions mention.
type invalidFile struct{ file, mention string }

func checkInvalid(t *testing.T, home string, files []invalidFile) {
	t.Helper()
	for _, bad := range files {
		if _, err := loadChecked(t, home, bad.file); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), bad.mention) {
			t.Errorf("%q: %v, want an error mentioning %q", bad.file, err, bad.mention)
		}
	}
}

func TestDefault(t *testing.T) {
	home := t.TempDir()
	c := config.Default(home)
	want := config.Config{
		Home:           home,
		Host:           "127.0.0.1",
		Port:           5555,
		Images:         map[string]string{"microsandbox/python": "host", "microsandbox/node": "host"},
		SandboxPids:    1024,
		DefaultDisk:    2048,
		UserNamespaces: true,
		ReadyInits:     2,
		Engine:         "linux",
		MaxTimeout:     "24h",

		MaxConnections:           8192,
		MaxConnectionsPerAddress: 512,
		MaxCallsPerKey:           32,
		OutputMemory:             512,

		Pool: config.Pool{Enabled: true, Memory: 128, Images: map[string]int{"microsandbox/python": 2}},

		RateLimit:      "600/m",
		StartRateLimit: "60/m",
		AuditRetention: "90d",
	}
	if !reflect.DeepEqual(c, want) {
		t.Fatalf("Default = %+v, want %+v", c, want)
	}
	if c.Dev || c.TLSCert != "" || c.TLSKey != "" {
		t.Fatalf("Default turns on dev or TLS: %+v", c)
	}
	if err := c.Validate(); err != nil {
		t.Fatalf("Default does not validate: %v", err)
	}
	if c.Addr() != "127.0.0.1:5555" {
		t.Fatalf("Addr = %q", c.Addr())
	}
	// Each Default has its own alias table.
	c.Images["mine"] = "host"
	delete(c.Images, "microsandbox/python")
	if d := config.Default(home); !reflect.DeepEqual(d.Images, config.DefaultImages()) || len(d.Images) != 2 {
		t.Fatalf("changing one Default's Images changed another's: %v", d.Images)
	}
	for name, got := range map[string]string{
		"KeyPath":        c.KeyPath(),
		"DBPath":         c.DBPath(),
		"KeyChangesPath": c.KeyChangesPath(),
	} {
		if filepath.Dir(got) != home {
			t.Errorf("%s = %q, want a file directly in the home", name, got)
		}
	}
	if c.KeyPath() != filepath.Join(home, "server.key") || c.DBPath() != filepath.Join(home, "msb.db") {
		t.Errorf("KeyPath %q DBPath %q", c.KeyPath(), c.DBPath())
	}
	if v6 := (config.Config{Host: "::1", Port: 80}); v6.Addr() != "[::1]:80" {
		t.Errorf("Addr for ::1 = %q", v6.Addr())
	}
}

func TestLoadWithoutFile(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	c, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(c, config.Default(home)) {
		t.Fatalf("Load without a file = %+v, want the defaults", c)
	}
	if _, err := os.Stat(filepath.Join(home, config.FileName)); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Load created a config file")
	}
}

func TestLoadFile(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	writeConfig(t, home, `
host = "0.0.0.0"
port = 6000
sandbox_pids = 64

[images]
"microsandbox/python" = "host"
"custom/img" = "host"
`)
	c, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "0.0.0.0" || c.Port != 6000 || c.SandboxPids != 64 || c.Home != home {
		t.Fatalf("Load = %+v", c)
	}
	// The file's table replaces the default one (node is gone).
	want := map[string]string{"microsandbox/python": "host", "custom/img": "host"}
	if !reflect.DeepEqual(c.Images, want) {
		t.Fatalf("Images = %v, want %v", c.Images, want)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}

	// A file without [images] keeps the built-in aliases (the SDKs'
	// default images), rather than dropping them.
	writeConfig(t, home, "port = 6001\n")
	c, err = config.Load(home)
	if err != nil || c.Port != 6001 || !reflect.DeepEqual(c.Images, config.DefaultImages()) {
		t.Fatalf("Load(no images) = %+v, %v", c, err)
	}
	// An empty [images] table removes every alias.
	writeConfig(t, home, "port = 6001\n[images]\n")
	if c, err = config.Load(home); err != nil || c.Images == nil || len(c.Images) != 0 {
		t.Fatalf("Load(empty images) = %+v, %v", c, err)
	}
	// Settings the file leaves out keep their defaults.
	if c.Host != config.DefaultHost || c.SandboxPids != 1024 {
		t.Fatalf("defaults lost: %+v", c)
	}
}

// A setting appended to the generated file lands in its [images] table:
// it is an error naming the line, not a silent image alias; so is an
// alias whose value is no image reference.
func TestAliasThatIsASetting(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	c := config.Default(home)
	if _, err := c.WriteDefaultFile(); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(home, config.FileName)
	generated, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Count(string(generated), "\n")
	for _, c := range []struct{ appended, want string }{
		{"rate_limit = \"10/m\"\n", fmt.Sprintf("config.toml:%d: \"rate_limit\" is a setting, but it is inside the [images] table", lines+1)},
		{"\"my/img\" = \"Not A Reference\"\n", fmt.Sprintf("config.toml:%d: image alias \"my/img\" maps to \"Not A Reference\"", lines+1)},
	} {
		if err := os.WriteFile(path, append(append([]byte(nil), generated...), c.appended...), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := config.Load(home)
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), c.want) {
			t.Errorf("appended %q: error %v, want one containing %q", c.appended, err, c.want)
		}
	}
}

func TestLoadFileErrors(t *testing.T) {
	clearEnv(t)
	for _, tc := range []struct {
		name, body string
		mention    []string
	}{
		{"unknown key", "hots = \"0.0.0.0\"\n", []string{"hots", "unknown"}},
		{"unknown key among good ones", "host = \"::1\"\nprot = 1\nport = 2\n", []string{"prot"}},
		{"unknown table", "[server]\nport = 1\n", []string{"server"}},
		{"dev is flag-only", "dev = true\n", []string{"dev"}},
		{"wrong type", "port = \"5555\"\n", []string{config.FileName}},
		{"not toml", "host = \n", []string{config.FileName}},
		{"alias target not a string", "[images]\n\"x\" = 5\n", []string{config.FileName}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			home := t.TempDir()
			writeConfig(t, home, tc.body)
			_, err := config.Load(home)
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("Load(%q) = %v, want an error wrapping ErrInvalid", tc.body, err)
			}
			for _, m := range tc.mention {
				if !strings.Contains(err.Error(), m) {
					t.Fatalf("error %q does not mention %q", err, m)
				}
			}
		})
	}
}

// An [images] setting that is not a table must be refused: the TOML decoder
// alone would accept it and leave an empty alias table.
func TestImagesNotATableRefused(t *testing.T) {
	clearEnv(t)
	for _, body := range []string{"images = \"host\"\n", "images = 5\n", "images = []\n"} {
		home := t.TempDir()
		writeConfig(t, home, body)
		c, err := config.Load(home)
		if !errors.Is(err, config.ErrInvalid) {
			t.Errorf("Load(%q) = Images %v, err %v; want an error wrapping ErrInvalid", body, c.Images, err)
		}
	}
}

func TestEnvironmentOverridesFile(t *testing.T) {
	home := t.TempDir()
	writeConfig(t, home, "host = \"127.0.0.1\"\nport = 6000\n")
	clearEnv(t)
	t.Setenv("MSB_HOST", "::1")
	t.Setenv("MSB_PORT", "7000")
	c, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if c.Host != "::1" || c.Port != 7000 {
		t.Fatalf("Load with MSB_HOST/MSB_PORT = %s:%d, want ::1:7000", c.Host, c.Port)
	}
	// Only the variables that are set override.
	t.Setenv("MSB_HOST", "")
	c, err = config.Load(home)
	if err != nil || c.Host != "127.0.0.1" || c.Port != 7000 {
		t.Fatalf("Load with only MSB_PORT = %+v, %v", c, err)
	}
	// Without a file, the environment overrides the defaults.
	c, err = config.Load(t.TempDir())
	if err != nil || c.Port != 7000 {
		t.Fatalf("Load(no file) with MSB_PORT = %+v, %v", c, err)
	}
	t.Setenv("MSB_TLS_CERT", "/c.pem")
	t.Setenv("MSB_TLS_KEY", "/k.pem")
	c, err = config.Load(home)
	if err != nil || c.TLSCert != "/c.pem" || c.TLSKey != "/k.pem" {
		t.Fatalf("Load with MSB_TLS_* = %+v, %v", c, err)
	}
}

func TestBadPortEnvironment(t *testing.T) {
	clearEnv(t)
	for _, v := range []string{"abc", "55 55", "5555x", "0x15b3", "1e3"} {
		t.Setenv("MSB_PORT", v)
		_, err := config.Load(t.TempDir())
		if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "MSB_PORT") || !strings.Contains(err.Error(), v) {
			t.Fatalf("MSB_PORT=%q: Load = %v, want an ErrInvalid naming MSB_PORT and the value", v, err)
		}
	}
	// Numeric but out of range: Load passes it on, Validate refuses it.
	t.Setenv("MSB_PORT", "70000")
	c, err := config.Load(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "70000") {
		t.Fatalf("Validate(port 70000) = %v", err)
	}
}

func TestValidate(t *testing.T) {
	home := t.TempDir()
	for _, tc := range []struct {
		name    string
		edit    func(*config.Config)
		ok      bool
		mention string
	}{
		{"defaults", func(*config.Config) {}, true, ""},
		{"port 0 (any free port)", func(c *config.Config) { c.Port = 0 }, true, ""},
		{"port 1", func(c *config.Config) { c.Port = 1 }, true, ""},
		{"port 65535", func(c *config.Config) { c.Port = 65535 }, true, ""},
		{"port -1", func(c *config.Config) { c.Port = -1 }, false, "port"},
		{"port 65536", func(c *config.Config) { c.Port = 65536 }, false, "port"},
		{"tls cert without key", func(c *config.Config) { c.TLSCert = "/c.pem" }, false, "--tls-key"},
		{"tls key without cert", func(c *config.Config) { c.TLSKey = "/k.pem" }, false, "--tls-cert"},
		{"tls both", func(c *config.Config) { c.TLSCert, c.TLSKey = "/c.pem", "/k.pem" }, true, ""},
		{"empty host", func(c *config.Config) { c.Host = "" }, false, "host"},
		{"relative home", func(c *config.Config) { c.Home = "rel" }, false, "home"},
		{"empty home", func(c *config.Config) { c.Home = "" }, false, "home"},
		{"public host without dev", func(c *config.Config) { c.Host = "0.0.0.0" }, true, ""},
		{"dev on 0.0.0.0", func(c *config.Config) { c.Dev, c.Host = true, "0.0.0.0" }, false, "--dev"},
		{"dev on ::", func(c *config.Config) { c.Dev, c.Host = true, "::" }, false, "--dev"},
		{"dev on a LAN address", func(c *config.Config) { c.Dev, c.Host = true, "192.168.1.10" }, false, "--dev"},
		{"dev on a host name", func(c *config.Config) { c.Dev, c.Host = true, "example.com" }, false, "--dev"},
		{"dev on localhost.evil", func(c *config.Config) { c.Dev, c.Host = true, "localhost.example.com" }, false, "--dev"},
		{"dev on 127.0.0.1", func(c *config.Config) { c.Dev, c.Host = true, "127.0.0.1" }, true, ""},
		{"dev on ::1", func(c *config.Config) { c.Dev, c.Host = true, "::1" }, true, ""},
		{"dev on [::1]", func(c *config.Config) { c.Dev, c.Host = true, "[::1]" }, true, ""},
		{"dev on localhost", func(c *config.Config) { c.Dev, c.Host = true, "localhost" }, true, ""},
		{"sandbox_pids too low", func(c *config.Config) { c.SandboxPids = 15 }, false, "sandbox_pids"},
		{"empty alias target", func(c *config.Config) { c.Images = map[string]string{"x": ""} }, false, "images"},
		{"empty alias name", func(c *config.Config) { c.Images = map[string]string{"": "host"} }, false, "images"},
		{"no aliases", func(c *config.Config) { c.Images = map[string]string{} }, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := config.Default(home)
			tc.edit(&c)
			err := c.Validate()
			if tc.ok {
				if err != nil {
					t.Fatalf("Validate = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Fatalf("Validate = %v, want an error wrapping ErrInvalid", err)
			}
			if !strings.Contains(err.Error(), tc.mention) {
				t.Fatalf("Validate error %q does not mention %q", err, tc.mention)
			}
		})
	}
}

func TestIsLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "[::1]": true, "localhost": true,
		"0.0.0.0": false, "::": false, "10.0.0.1": false, "": false, "example.com": false,
		"localhost.example.com": false, "127.0.0.1.example.com": false,
	} {
		if got := config.IsLoopback(host); got != want {
			t.Errorf("IsLoopback(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestWriteDefaultFile(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	c := config.Default(home)
	wrote, err := c.WriteDefaultFile()
	if err != nil || !wrote {
		t.Fatalf("WriteDefaultFile = %v, %v; want true", wrote, err)
	}
	path := filepath.Join(home, config.FileName)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("config file mode %o, want 0600", fi.Mode().Perm())
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	comments := 0
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			comments++
		}
	}
	if comments < 5 || !strings.Contains(text, "# host =") || !strings.Contains(text, "# port =") {
		t.Fatalf("config file is not a commented template (%d comment lines):\n%s", comments, text)
	}
	// The alias table, read by a plain TOML decoder.
	var raw struct {
		Host   *string           `toml:"host"`
		Port   *int              `toml:"port"`
		Images map[string]string `toml:"images"`
	}
	if _, err := toml.Decode(text, &raw); err != nil {
		t.Fatalf("written file is not valid TOML: %v", err)
	}
	if raw.Images["microsandbox/python"] != "host" || raw.Images["microsandbox/node"] != "host" || len(raw.Images) != 2 {
		t.Fatalf("[images] = %v, want microsandbox/python and microsandbox/node -> host", raw.Images)
	}
	if raw.Host != nil || raw.Port != nil {
		t.Fatalf("host/port are set in the template; they should only be commented examples")
	}
	// Reloading gives exactly the defaults.
	loaded, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(loaded, config.Default(home)) {
		t.Fatalf("Load after WriteDefaultFile = %+v, want %+v", loaded, config.Default(home))
	}
	if err := loaded.Validate(); err != nil {
		t.Fatal(err)
	}

	// A second call leaves the operator's file alone.
	edited := text + "\n\"custom/img\" = \"host\"\n"
	if err := os.WriteFile(path, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	wrote, err = c.WriteDefaultFile()
	if err != nil || wrote {
		t.Fatalf("second WriteDefaultFile = %v, %v; want false, nil", wrote, err)
	}
	if after, _ := os.ReadFile(path); string(after) != edited {
		t.Fatalf("second WriteDefaultFile overwrote the file")
	}
	loaded, err = config.Load(home)
	if err != nil || loaded.Images["custom/img"] != "host" {
		t.Fatalf("edited file: %+v, %v", loaded.Images, err)
	}

	// No home yet: an error, not a panic or a file elsewhere.
	missing := config.Default(filepath.Join(t.TempDir(), "nope"))
	if _, err := missing.WriteDefaultFile(); err == nil {
		t.Fatal("WriteDefaultFile into a missing home succeeded")
	}
}

func TestEnsureHome(t *testing.T) {
	home := filepath.Join(t.TempDir(), "a", "msb")
	c := config.Default(home)
	if err := c.EnsureHome(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(home)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("home %v mode %v, want a 0700 directory", err, fi.Mode().Perm())
	}
	if err := os.Chmod(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := c.EnsureHome(); err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(home); fi.Mode().Perm() != 0o700 {
		t.Fatalf("EnsureHome left a loosened home at %o", fi.Mode().Perm())
	}
}

func TestHomeFromEnv(t *testing.T) {
	abs := t.TempDir()
	t.Setenv("MSB_HOME", abs)
	if got, err := config.HomeFromEnv(); err != nil || got != abs {
		t.Fatalf("HomeFromEnv with MSB_HOME=%q = %q, %v", abs, got, err)
	}
	t.Setenv("MSB_HOME", abs+"/x/../y/")
	if got, err := config.HomeFromEnv(); err != nil || got != filepath.Join(abs, "y") {
		t.Fatalf("HomeFromEnv does not clean MSB_HOME: %q, %v", got, err)
	}
	t.Setenv("MSB_HOME", "rel/home")
	wd, _ := os.Getwd()
	if got, err := config.HomeFromEnv(); err != nil || got != filepath.Join(wd, "rel", "home") || !filepath.IsAbs(got) {
		t.Fatalf("HomeFromEnv with a relative MSB_HOME = %q, %v; want it made absolute", got, err)
	}
	user := t.TempDir()
	t.Setenv("MSB_HOME", "")
	t.Setenv("HOME", user)
	if got, err := config.HomeFromEnv(); err != nil || got != filepath.Join(user, ".microsandbox") {
		t.Fatalf("HomeFromEnv without MSB_HOME = %q, %v; want %q", got, err, filepath.Join(user, ".microsandbox"))
	}
}

// [network] and [network.namespaces.NAME]: a namespace's unset settings
// are those of [network], whose unset ones are the defaults.
func TestNetworkSettings(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	writeConfig(t, home, `
[network]
default_enabled = true
allow = ["*.pypi.org:443", "files.pythonhosted.org:443"]
default_allow = ["*.pypi.org:443"]
max_bandwidth = 1048576
dns = ["192.0.2.53", "[2001:db8::53]:5353"]
interface = "eth1"
[network.namespaces.team-a]
allow = ["pypi.org:443"]
deny = ["203.0.113.0/24"]
exempt = []
max_connections = 8
[network.namespaces.closed]
permitted = false
`)
	c, err := config.Load(home)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	def := c.Network.Of("other")
	want := config.NetworkBounds{Permitted: true, DefaultEnabled: true, Allow: []string{"*.pypi.org:443", "files.pythonhosted.org:443"},
		DefaultAllow: []string{"*.pypi.org:443"}, MaxConnections: config.DefaultNetworkConnections, MaxBandwidth: 1 << 20}
	if !reflect.DeepEqual(def, want) {
		t.Errorf("Of(other) = %+v, want %+v", def, want)
	}
	a := c.Network.Of("team-a")
	want = config.NetworkBounds{Permitted: true, DefaultEnabled: true, Allow: []string{"pypi.org:443"}, Deny: []string{"203.0.113.0/24"}, Exempt: []string{},
		MaxConnections: 8, MaxBandwidth: 1 << 20}
	if !reflect.DeepEqual(a, want) {
		t.Errorf("Of(team-a) = %+v, want %+v", a, want)
	}
	if c.Network.Of("closed").Permitted {
		t.Error("closed is permitted")
	}
	if got := c.Network.DNSServers(); len(got) != 2 || got[0].String() != "192.0.2.53:53" || got[1].String() != "[2001:db8::53]:5353" {
		t.Errorf("DNS servers %v", got)
	}
	if c.Network.Interface != "eth1" {
		t.Errorf("interface %q", c.Network.Interface)
	}
	// Without [network]: network on request, to every public destination.
	if got := config.Default(home).Network.Of("x"); !got.Permitted || got.DefaultEnabled || got.Allow != nil || got.MaxConnections != config.DefaultNetworkConnections {
		t.Errorf("default bounds %+v", got)
	}
	checkInvalid(t, home, []invalidFile{
		{"[network]\ndns = [\"resolver.example\"]\n", "network.dns"},
		{"[network]\ndns = [\"192.0.2.1:0\"]\n", "network.dns"},
		{"[network]\ninterface = \"a/b\"\n", "network.interface"},
		{"[network]\nmax_connections = -1\n", "network:"},
		{"[network.namespaces.\"-x\"]\nallow = []\n", "network.namespaces"},
		{"[network.namespaces.a]\nmax_bandwidth = -5\n", "network.namespaces.a"},
	})
	writeConfig(t, home, "[network]\nallowed = true\n")
	if _, err := config.Load(home); err == nil || !strings.Contains(err.Error(), "network.allowed") {
		t.Errorf("unknown network setting: %v", err)
	}
}

// The warm pool: on by default for the default image only; a file's
// [pool.images] replaces the default table, enabled = false turns it off,
// and memory is split evenly between the waiting sandboxes.
func TestPoolSettings(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	def := config.Default(home).Pool
	if def.Sandboxes() != 2 || def.Share() != 64 || !reflect.DeepEqual(def.Images, config.DefaultPoolImages()) {
		t.Errorf("default pool %+v: %d sandboxes of %d MiB", def, def.Sandboxes(), def.Share())
	}
	for _, tc := range []struct {
		file      string
		images    map[string]int
		sandboxes int
		share     int
	}{
		{"port = 6001\n", map[string]int{"microsandbox/python": 2}, 2, 64},
		{"[pool]\nenabled = false\n", map[string]int{"microsandbox/python": 2}, 0, 0},
		{"[pool]\nmemory = 600\n[pool.images]\n\"python:3.12-slim\" = 1\n\"microsandbox/node\" = 2\n",
			map[string]int{"python:3.12-slim": 1, "microsandbox/node": 2}, 3, 200},
		{"[pool.images]\n", map[string]int{}, 0, 0},
		{"[pool.images]\n\"microsandbox/python\" = 0\n", map[string]int{"microsandbox/python": 0}, 0, 0},
	} {
		c, err := loadChecked(t, home, tc.file)
		if err != nil {
			t.Errorf("%q: %v", tc.file, err)
			continue
		}
		if !reflect.DeepEqual(c.Pool.Images, tc.images) || c.Pool.Sandboxes() != tc.sandboxes || c.Pool.Share() != tc.share {
			t.Errorf("%q: pool %+v: %d sandboxes of %d MiB; want %v, %d of %d", tc.file, c.Pool, c.Pool.Sandboxes(), c.Pool.Share(), tc.images, tc.sandboxes, tc.share)
		}
	}
	checkInvalid(t, home, []invalidFile{
		{"[pool]\nmemory = 100\n[pool.images]\n\"a\" = 4\n", "set pool.memory to at least 128"},
		{"[pool]\nmemory = -1\n", "pool.memory"},
		{"[pool.images]\n\"a\" = -1\n", "pool.images"},
		{"[pool.images]\n\"a\" = 1001\n[pool]\nmemory = 100000\n", "more than 1000"},
		{"[pool]\nsize = 3\n", "pool.size"},
		{"max_memory = 100\n[pool]\nmemory = 400\n", "lower pool.memory to at most 200"},
		{"[pool.images]\n\"a\" = \"two\"\n", config.FileName},
	})
	// A pool too big for its memory is fine when it is off.
	if _, err := loadChecked(t, home, "[pool]\nenabled = false\nmemory = 1\n"); err != nil {
		t.Errorf("a pool that is off is still checked: %v", err)
	}
}

// Disks and the ceilings of all the sandboxes together: sizes and
// totals a server could not run with are refused, naming the setting.
func TestDiskAndCeilingSettings(t *testing.T) {
	clearEnv(t)
	home := t.TempDir()
	for _, ok := range []string{
		"default_disk = 64\n",
		"default_disk = 1024\nmax_disk = 1024\n",
		"total_pids = 0\ntotal_memory = 0\n",
		"total_pids = 64\nsandbox_pids = 64\ntotal_memory = 64\n",
		"user_namespaces = false\n",
		"ready_inits = 0\n",
		"ready_inits = 64\n",
	} {
		if _, err := loadChecked(t, home, ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	if c, err := loadChecked(t, home, "ready_inits = 5\n"); err != nil || c.ReadyInits != 5 {
		t.Errorf("ready_inits = 5: %d, %v", c.ReadyInits, err)
	}
	checkInvalid(t, home, []invalidFile{
		{"ready_inits = -1\n", "ready_inits -1"},
		{"ready_inits = 65\n", "ready_inits 65: use 0 (none) to 64"},
		{"default_disk = 63\n", "default_disk 63 MiB"},
		{"default_disk = 2048\nmax_disk = 1024\n", "max_disk 1024 MiB"},
		{"total_pids = 63\n", "total_pids 63"},
		{"total_pids = -1\n", "total_pids -1"},
		{"total_pids = 100\nsandbox_pids = 200\n", "below sandbox_pids 200"},
		{"total_memory = 63\n", "total_memory 63 MiB"},
		{"total_memory = -1\n", "total_memory -1 MiB"},
	})
}
