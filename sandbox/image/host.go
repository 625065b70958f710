// Package image describes the root file systems sandboxes are built from.
// An image here is a sandbox.RootFS: which host paths are bind-mounted,
// which links and small files are generated, which directories start empty.
// The built-in "host" image lends the sandbox the host's own userland
// read-only; everything the sandbox writes lands in its own directory.
package image

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
)

// HostName is the name of the built-in image that reuses the host's userland.
const HostName = "host"

// hostTopDirs are the top-level directories of a Debian-like userland beside
// /usr. On merged-usr systems they are symlinks into /usr and are recreated
// as the same symlinks; on older layouts they are real directories and are
// bind-mounted read-only.
var hostTopDirs = []string{"bin", "sbin", "lib", "lib32", "lib64", "libx32"}

// aliasDir holds the host image's names for host commands, such as
// python for python3; it is the last directory of the image's PATH.
const aliasDir = "opt/msb/bin"

// caCerts holds only public certificates, so it is the one piece of the
// host's /etc a sandbox sees.
const caCerts = "/etc/ssl/certs"

// Host returns the root file system of the built-in host image: /usr and
// the top-level library and binary directories of the host, read-only; a
// minimal generated /etc (users root and nobody, localhost, no DNS); the
// host's CA certificates, read-only; and empty writable /tmp (1777),
// /workspace and /root. Nothing else of the host is visible. It returns an
// error wrapping errdefs.ErrUnavailable when the host has no /usr, and the
// underlying error when the host's layout cannot be read.
func Host() (sandbox.RootFS, error) {
	return hostFrom("/")
}

// hostFrom builds the host image from the userland rooted at root; tests
// point it at a fake host.
func hostFrom(root string) (sandbox.RootFS, error) {
	usr := filepath.Join(root, "usr")
	if fi, err := os.Stat(usr); err != nil || !fi.IsDir() {
		return sandbox.RootFS{}, fmt.Errorf("host image: %s is not a directory: %w", usr, errdefs.ErrUnavailable)
	}
	rfs := sandbox.RootFS{
		Mounts: []sandbox.Mount{{Source: usr, Target: "/usr", ReadOnly: true}},
		Dirs:   []string{"tmp", "var/tmp", "workspace", "root", "etc"},
	}
	for _, name := range hostTopDirs {
		p := filepath.Join(root, name)
		fi, err := os.Lstat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			continue
		case err != nil:
			return sandbox.RootFS{}, fmt.Errorf("host image: %w", err)
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return sandbox.RootFS{}, fmt.Errorf("host image: %w", err)
			}
			rfs.Links = append(rfs.Links, sandbox.Link{Path: name, Target: target})
		case fi.IsDir():
			rfs.Mounts = append(rfs.Mounts, sandbox.Mount{Source: p, Target: "/" + name, ReadOnly: true})
		}
	}
	// The SDKs' examples run `python` (their image is python:latest); the
	// host may only have python3. Names for it, inside the sandbox only,
	// in a directory of msb's own at the end of PATH, so a real python of
	// the host is found first.
	for _, alias := range [][2]string{{"python", "python3"}, {"pip", "pip3"}} { // in a fixed order: a root's content names its template
		name, target := alias[0], alias[1]
		if fi, err := os.Stat(filepath.Join(usr, "bin", target)); err == nil && fi.Mode().IsRegular() {
			rfs.Links = append(rfs.Links, sandbox.Link{Path: aliasDir + "/" + name, Target: "/usr/bin/" + target})
		}
	}
	certs := filepath.Join(root, caCerts)
	if fi, err := os.Stat(certs); err == nil && fi.IsDir() {
		rfs.Mounts = append(rfs.Mounts, sandbox.Mount{Source: certs, Target: caCerts, ReadOnly: true})
	}
	rfs.Files = etcFiles()
	return rfs, nil
}

// The users and groups of the host image.
const (
	hostPasswd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
	hostGroup  = "root:x:0:\nnogroup:x:65534:\n"
)

// etcFiles is the generated /etc: just enough for libc, Python and Node to
// resolve users, localhost and, when the sandbox has network, names
// through msb's DNS.
func etcFiles() []sandbox.File {
	f := func(path, content string) sandbox.File {
		return sandbox.File{Path: path, Mode: 0o644, Content: []byte(content)}
	}
	return []sandbox.File{
		f("etc/passwd", hostPasswd),
		f("etc/group", hostGroup),
		f("etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
		f("etc/resolv.conf", string(network.DefaultResolvConf())),
		f("etc/nsswitch.conf", "passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\nprotocols: files\nservices: files\n"),
		f("etc/hostname", "sandbox\n"),
	}
}

// HostEnv returns the environment defaults of the host image: a standard
// PATH (so /usr/bin/python3 and /usr/bin/node are found), HOME=/root and a
// UTF-8 locale that needs no locale files.
func HostEnv() []string {
	return []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/" + aliasDir,
		"HOME=/root",
		"LANG=C.UTF-8",
	}
}
