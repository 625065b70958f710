package image

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

func TestHostFrom(t *testing.T) {
	t.Parallel()
	root := t.TempDir()
	for _, d := range []string{"usr/bin", "usr/lib", "lib64", "etc/ssl/certs", "root/.pyenv"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("usr/bin", filepath.Join(root, "bin")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/lib", filepath.Join(root, "lib")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(root, "etc/shadow"), []byte("root:secret"), 0o600); err != nil {
		t.Fatal(err)
	}
	// The host has python3 but neither python nor pip3.
	if err := os.WriteFile(filepath.Join(root, "usr/bin/python3"), []byte("#!"), 0o755); err != nil {
		t.Fatal(err)
	}

	rfs, err := hostFrom(root)
	if err != nil {
		t.Fatal(err)
	}
	mounts := map[string]sandbox.Mount{}
	for _, m := range rfs.Mounts {
		if !m.ReadOnly {
			t.Errorf("mount %+v is writable", m)
		}
		mounts[m.Target] = m
	}
	for target, source := range map[string]string{"/usr": "usr", "/lib64": "lib64", "/etc/ssl/certs": "etc/ssl/certs"} {
		if m, ok := mounts[target]; !ok || m.Source != filepath.Join(root, source) {
			t.Errorf("mount of %s = %+v", target, m)
		}
	}
	if len(mounts) != 3 {
		t.Errorf("mounts = %+v, want only /usr, /lib64 and the CA certificates", rfs.Mounts)
	}
	links := map[string]string{}
	for _, l := range rfs.Links {
		links[l.Path] = l.Target
	}
	if links["bin"] != "usr/bin" || links["lib"] != "usr/lib" || links["opt/msb/bin/python"] != "/usr/bin/python3" || len(links) != 3 {
		t.Errorf("links = %+v", rfs.Links)
	}
	files := map[string]string{}
	for _, f := range rfs.Files {
		files[f.Path] = string(f.Content)
	}
	if _, ok := files["etc/shadow"]; ok {
		t.Error("the host's /etc/shadow reaches the image")
	}
	if !strings.Contains(files["etc/passwd"], "root:x:0:0:") || !strings.Contains(files["etc/hosts"], "127.0.0.1") {
		t.Errorf("generated /etc: %v", files)
	}
	dirs := strings.Join(rfs.Dirs, " ")
	for _, d := range []string{"tmp", "workspace", "root"} {
		if !strings.Contains(" "+dirs+" ", " "+d+" ") {
			t.Errorf("dirs %q lack %s", dirs, d)
		}
	}
}

func TestHostFromWithoutUsr(t *testing.T) {
	t.Parallel()
	if _, err := hostFrom(t.TempDir()); err == nil {
		t.Error("a host without /usr gave an image")
	}
}

func TestHostEnv(t *testing.T) {
	t.Parallel()
	env := strings.Join(HostEnv(), "\n")
	for _, want := range []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/opt/msb/bin\n", "HOME=/root", "LANG=C.UTF-8"} {
		if !strings.Contains(env, want) {
			t.Errorf("HostEnv lacks %s", want)
		}
	}
}

func TestResolver(t *testing.T) {
	t.Parallel()
	r := Resolver{Aliases: map[string]string{"microsandbox/python": HostName, "odd": "docker.io/library/alpine"}}
	for _, ref := range []string{"microsandbox/python", "microsandbox/python:latest", HostName} {
		img, err := r.Resolve(context.Background(), ref, "")
		if err != nil || img.Ref != ref || len(img.Root.Mounts) == 0 || img.Workdir != "/workspace" || len(img.Env) == 0 {
			t.Errorf("Resolve(%q) = %+v, %v", ref, img, err)
		}
	}
	for _, ref := range []string{"alpine:3.20", "odd", "microsandbox/node"} {
		if _, err := r.Resolve(context.Background(), ref, ""); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), ref) {
			t.Errorf("Resolve(%q) = %v, want ErrInvalidArgument naming it", ref, err)
		}
	}
	// Another user than the image's: the host image knows root, nobody
	// and any uid.
	for user, want := range map[string]sandbox.User{"nobody": {UID: 65534, GID: 65534}, "1000:1000": {UID: 1000, GID: 1000}, "root": {}} {
		img, err := r.Resolve(context.Background(), HostName, user)
		if err != nil || img.User.UID != want.UID || img.User.GID != want.GID {
			t.Errorf("Resolve(host, %q) = %+v, %v; want %+v", user, img.User, err, want)
		}
	}
	if _, err := r.Resolve(context.Background(), HostName, "alice"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "alice") {
		t.Errorf("Resolve(host, alice) = %v, want class Invalid naming her", err)
	}
}
