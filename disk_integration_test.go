package main_test

import (
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/msb-dev/msb/sandbox/linux"
)

// waitLoopsGone waits a little for the loop devices of images under dir
// (but those skip says to leave) to detach, and returns those that stay.
func waitLoopsGone(dir string, skip func(loop string) bool) []string {
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		var left []string
		for _, l := range linux.LoopsUnder(dir) {
			if skip == nil || !skip(l) {
				left = append(left, l)
			}
		}
		if len(left) == 0 || time.Now().After(deadline) {
			return left
		}
	}
}

// diskUsage is a sandbox's disk_usage as sandbox.metrics.get reports it.
func (b *sb) diskUsage() int64 {
	b.srv.t.Helper()
	var m metricsResult
	b.srv.mustCall(b.key, "sandbox.metrics.get", b.params(nil), &m)
	if len(m.Sandboxes) != 1 || m.Sandboxes[0].DiskUsage == nil {
		b.srv.t.Fatalf("metrics: %s", mustJSON(m))
	}
	return *m.Sandboxes[0].DiskUsage
}

// loopOf returns the loop device whose image is img, or "".
func loopOf(dir, img string) string {
	for _, l := range linux.LoopsUnder(dir) {
		if dev, back, _ := strings.Cut(l, " "); back == img {
			return dev
		}
	}
	return ""
}

// backingOf returns the image of loop device dev, or "".
func backingOf(dir, dev string) string {
	for _, l := range linux.LoopsUnder(dir) {
		if d, back, _ := strings.Cut(l, " "); d == dev {
			return back
		}
	}
	return ""
}

// TestDiskRecycled follows a disk from one tenant to the next: the disk of
// a deleted sandbox that left little on it is wiped and handed to the next
// sandbox, which finds none of the first one's files, and the image on the
// host holds none of their data.
func TestDiskRecycled(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "default_disk = 128\n[pool]\nenabled = false\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	sandboxes := filepath.Join(home, "sandboxes")

	a := srv.sandbox(key, "tenant-a", "s", map[string]any{"image": "host"})
	loop := loopOf(sandboxes, filepath.Join(sandboxes, "tenant-a.s", "disk.img"))
	if loop == "" {
		t.Fatalf("no loop device for tenant-a's disk among %v", linux.LoopsUnder(sandboxes))
	}
	if r := a.sh("mkdir -p /root/d && for f in /root/secret /tmp/secret /root/d/secret; do yes tenant-a-secret | head -c 65536 > $f; done && sync"); r.ExitCode != 0 {
		t.Fatalf("writing: %s", mustJSON(r))
	}
	a.stop()
	// The wipe runs after the stop, once the sandbox's mounts are gone:
	// the disk is ready again when its image is among the disks made
	// ahead.
	waitFor(t, func() bool {
		return strings.HasPrefix(backingOf(sandboxes, loop), filepath.Join(sandboxes, ".disks")+"/")
	})

	b := srv.sandbox(key, "tenant-b", "s", map[string]any{"image": "host"})
	if got := loopOf(sandboxes, filepath.Join(sandboxes, "tenant-b.s", "disk.img")); got != loop {
		t.Fatalf("tenant-b's disk is on %q, not on tenant-a's recycled %s", got, loop)
	}
	if r := b.sh("ls -A /root /tmp; cat /root/secret /tmp/secret /root/d/secret 2>/dev/null; true"); strings.Contains(text(r.Output, ""), "secret") {
		t.Fatalf("tenant-b sees tenant-a's files: %s", mustJSON(r))
	}
	// What tenant-a synced reached its image; the wipe punched it out.
	img, err := os.ReadFile(filepath.Join(sandboxes, "tenant-b.s", "disk.img"))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(img, []byte("tenant-a-secret")) {
		t.Fatal("tenant-a's data is still in the image of the disk tenant-b got")
	}
	b.stop()
	srv.Stop()
	assertNoLeftovers(t, home)
}

// TestDiskNamesHidden: a sandbox cannot learn from the kernel's files
// which other sandboxes run (their disks' loop devices name them), nor
// where the server keeps them. (That loop devices exist is no secret:
// /proc/partitions lists them.)
func TestDiskNamesHidden(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "default_disk = 128\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	victim := srv.sandbox(key, "tenant-a", "victim", map[string]any{"image": "host"})
	spy := srv.sandbox(key, "tenant-b", "spy", map[string]any{"image": "host"})
	r := spy.sh("cat /sys/block/*/loop/backing_file /sys/devices/virtual/block/*/loop/backing_file /sys/class/block/*/loop/backing_file /sys/dev/block/*/loop/backing_file; " +
		"ls /sys/fs/ext4 /proc/fs/ext4; cat /proc/self/mountinfo; true")
	out := text(r.Output, "")
	for _, leak := range []string{"tenant-a", "victim", home} {
		if strings.Contains(out, leak) {
			t.Errorf("a sandbox sees %q:\n%s", leak, out)
		}
	}
	// The masked directories are empty and read-only (one tmpfs, bound
	// over each).
	for _, dir := range []string{"/proc/acpi", "/sys/firmware", "/sys/devices/virtual/block", "/sys/fs/ext4", "/proc/fs/ext4"} {
		r := spy.sh("[ -d " + dir + " ] || { echo absent; exit 0; }; ls -A " + dir + "; touch " + dir + "/x 2>&1; echo status $?")
		out := text(r.Output, "")
		if out == "absent\n" {
			continue // not on this kernel (the host has no ACPI, say)
		}
		if out != "touch: cannot touch '"+dir+"/x': Read-only file system\nstatus 1\n" {
			t.Errorf("masked %s: %q", dir, out)
		}
	}
	spy.stop()
	victim.stop()
}

// TestDiskQuota reproduces the attack of a sandbox that filled the host's
// disk (2 GiB to /workspace, 512 MiB to /tmp, 300,000 empty files): every
// sandbox now writes to a disk of its own size, so writing past it, or
// past its inodes, fails with ENOSPC inside the sandbox while the host and
// the other sandboxes are unaffected; df inside shows the disk, and
// disk_usage follows the writes without walking the files.
func TestDiskQuota(t *testing.T) {
	t.Parallel()
	home := homeWith(t, "default_disk = 96\nmax_disk = 256\n[quotas]\ndisk = 400\n")
	srv := startServer(t, home)
	key := keygen(t, home)
	a := srv.sandbox(key, "disk", "a", map[string]any{"image": "host", "disk": 64})
	other := srv.sandbox(key, "disk", "other", map[string]any{"image": "host"})

	// df inside shows the sandbox's own disk, for / and what is under it.
	for _, dir := range []string{"/", "/tmp", "/workspace", "/root"} {
		r := a.sh("df -k " + dir + " | tail -1")
		f := strings.Fields(text(r.Output, "stdout"))
		if len(f) < 2 {
			t.Fatalf("df %s: %s", dir, mustJSON(r))
		}
		if kib, _ := strconv.Atoi(f[1]); kib < 50<<10 || kib > 64<<10 {
			t.Fatalf("df %s inside a sandbox of a 64 MiB disk: %s KiB", dir, f[1])
		}
	}

	before := a.diskUsage()
	if r := a.sh("head -c 20971520 /dev/urandom > /workspace/blob && sync"); r.ExitCode != 0 {
		t.Fatalf("writing 20 MiB: %s", mustJSON(r))
	}
	// (How fast: BenchmarkSandbox's metrics-p99-ms@N, with up to 1,000
	// sandboxes running; a test does not time it.)
	after := a.diskUsage()
	if after-before < 20<<20 || after-before > 24<<20 {
		t.Fatalf("disk_usage went from %d to %d after writing 20 MiB", before, after)
	}

	// Writing past the disk, as root, to /tmp: ENOSPC inside.
	r := a.sh("head -c 209715200 /dev/zero > /tmp/big; echo status $?")
	if out := text(r.Output, ""); !strings.Contains(out, "No space left on device") || strings.Contains(out, "status 0") {
		t.Fatalf("writing 200 MiB to a 64 MiB disk: %s", mustJSON(r))
	}
	// The host holds no more than the disk's size for it.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(home, "sandboxes", "disk.a", "disk.img"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 > 66<<20 {
		t.Fatalf("the disk's image takes %d bytes on the host, more than its 64 MiB", st.Blocks*512)
	}
	// The other sandbox is not affected.
	if r := other.sh("head -c 10485760 /dev/zero > /workspace/ten && stat -c %s /workspace/ten"); text(r.Output, "stdout") != "10485760\n" {
		t.Fatalf("another sandbox's write: %s", mustJSON(r))
	}
	a.sh("rm -f /tmp/big")

	// Many empty files: the inodes (64 per MiB) run out, with ENOSPC.
	r = a.run("python3", "-c", `
import errno, os
n = 0
try:
    while n < 300000:
        open("/tmp/f%d" % n, "w").close()
        n += 1
except OSError as e:
    print(errno.errorcode[e.errno], n)
`)
	m := regexp.MustCompile(`^ENOSPC (\d+)\n$`).FindStringSubmatch(text(r.Output, "stdout"))
	if m == nil {
		t.Fatalf("300,000 empty files on a 64 MiB disk: %s", mustJSON(r))
	}
	if n, _ := strconv.Atoi(m[1]); n > 64*64 {
		t.Fatalf("%d files made on a disk of %d inodes", n, 64*64)
	}
	if r := a.run("echo", "alive"); text(r.Output, "stdout") != "alive\n" {
		t.Fatalf("the sandbox after filling its disk: %s", mustJSON(r))
	}

	// A config's disk is bounded by max_disk, and a namespace's disks by
	// quotas.disk; both are shown with the namespace's usage.
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "disk", "sandbox": "big", "config": map[string]any{"image": "host", "disk": 512}},
		200, -32602, "max_disk in config.toml")
	srv.wantError(key, "sandbox.start", map[string]any{"namespace": "disk", "sandbox": "big", "config": map[string]any{"image": "host", "disk": 256}},
		200, -32001, "over its quota of 400 MiB (quotas.disk in config.toml)")
	var q metricsResult
	srv.mustCall(key, "sandbox.metrics.get", map[string]any{"namespace": "disk"}, &q)
	if len(q.Quotas) != 1 || q.Quotas[0].DiskMiB.Used != 64+96 || q.Quotas[0].DiskMiB.Limit == nil || *q.Quotas[0].DiskMiB.Limit != 400 {
		t.Fatalf("disk quota: %s", mustJSON(q))
	}
	out, errOut, err := msb(t, home, "server", "status")
	if err != nil || !regexp.MustCompile(`disk\s+2 / -\s+\d+ / -\s+2 / -\s+160 / 400`).MatchString(out) {
		t.Fatalf("status: %v\n%s%s", err, out, errOut)
	}
	// Writing more than the sandbox's memory to its disk is not an OOM:
	// the page cache of the disk and of its image is reclaimable.
	small := srv.sandbox(key, "disk2", "small", map[string]any{"image": "host", "memory": 64, "disk": 256})
	if r := small.sh("head -c 157286400 /dev/zero > /workspace/big && sync && stat -c %s /workspace/big"); text(r.Output, "stdout") != "157286400\n" {
		t.Fatalf("writing 150 MiB in a sandbox of 64 MiB: %s", mustJSON(r))
	}
	small.stop()
	a.stop()
	other.stop()
	srv.Stop()
	assertNoLeftovers(t, home)
}
