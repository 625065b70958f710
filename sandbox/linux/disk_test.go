package linux

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// testDisks returns the disks of a sandbox directory of its own, made
// ahead at readyMiB (none if 0), released when t ends.
func testDisks(t *testing.T, readyMiB int) (*disks, string) {
	t.Helper()
	root := t.TempDir()
	d, err := newDisks(root, readyMiB, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.drain(); d.remove() })
	return d, root
}

// waitReady waits until the background refill has made diskPoolSize
// ready disks of mib MiB and stopped.
func waitReady(t *testing.T, d *disks, mib int) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		d.mu.Lock()
		full := len(d.pool[mib]) == diskPoolSize && !d.refilling[mib]
		d.mu.Unlock()
		if full {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the ready disks were not made in 20 s")
		}
	}
}

// A tenant asking for many disk sizes leaves nothing behind: disks are
// made ahead for the default size only, and the templates of other sizes
// are bounded (maxTemplates), so loop devices and the host's disk are not
// used up by sizes no one asks for again.
func TestDiskSizesLeaveNothingBehind(t *testing.T) {
	const readyMiB = 64
	d, root := testDisks(t, readyMiB)
	sizes := []int{readyMiB}
	for i := range maxTemplates + 4 {
		sizes = append(sizes, readyMiB+1+i)
	}
	for i, mib := range sizes {
		dir := filepath.Join(root, "sb", strings.Repeat("x", i+1))
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		k, err := d.create(dir, mib)
		if err != nil {
			t.Fatal(err)
		}
		k.close(true) // the sandbox is deleted
		os.RemoveAll(dir)
	}
	// The ready disks of the default size are made in the background.
	waitReady(t, d, readyMiB)
	time.Sleep(200 * time.Millisecond) // a refill of another size would have started by now
	if n := len(LoopsUnder(root)); n != diskPoolSize {
		t.Errorf("%d loop devices attached after %d sizes, want the %d ready disks of the default size", n, len(sizes), diskPoolSize)
	}
	ents, err := os.ReadDir(filepath.Join(root, diskTemplateDir))
	if err != nil {
		t.Fatal(err)
	}
	templates := 0
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ext4-") {
			templates++
		}
	}
	if templates > maxTemplates+1 {
		t.Errorf("%d templates kept after %d sizes, want at most %d", templates, len(sizes), maxTemplates+1)
	}
	// A server started again keeps only the default size's template.
	d.drain()
	d2, err := newDisks(root, readyMiB, slog.Default())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d2.drain() })
	ents, _ = os.ReadDir(filepath.Join(root, diskTemplateDir))
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "ext4-") && !strings.HasPrefix(e.Name(), "ext4-64-") {
			t.Errorf("template %s kept across a restart", e.Name())
		}
	}
}

// A disk closed for its sandbox's deletion is shut down, dropping what the
// sandbox wrote last instead of writing it back to the image, when that is
// worth it: a sandbox that wrote a few MiB costs no write-back, while one
// that wrote next to nothing costs no shutdown (which ext4 reports on the
// host's console) and has its few blocks written back. A disk whose
// sandbox may have processes left is cut off whatever it holds.
func TestDiskDiscard(t *testing.T) {
	d, root := testDisks(t, 0)
	marker := bytes.Repeat([]byte("msb-discard-test"), 4096/16)
	for _, c := range []struct {
		name     string
		size     int
		cutOff   bool
		shutDown bool
	}{{"small", len(marker), false, false}, {"large", 4 << 20, false, true}, {"small cut off", len(marker), true, true}} {
		t.Run(c.name, func(t *testing.T) {
			dir := filepath.Join(root, strings.ReplaceAll(c.name, " ", "-"))
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			k, err := d.create(dir, 64)
			if err != nil {
				t.Fatal(err)
			}
			fd, err := unix.Openat(int(k.mnt.Fd()), "upper/file", unix.O_CREAT|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
			if err != nil {
				k.close(true)
				t.Fatal(err)
			}
			// The file stays open, as a sandbox's process might hold it:
			// a shut down file system fails its reads with EIO.
			f := os.NewFile(uintptr(fd), "file")
			defer f.Close()
			if _, err := f.Write(bytes.Repeat(marker, c.size/len(marker))); err != nil {
				k.close(true)
				t.Fatal(err)
			}
			if much := k.holdsMuch(); much != (c.size >= discardMinBytes) {
				t.Errorf("holdsMuch() = %v with %d bytes written", much, c.size)
			}
			if c.cutOff {
				k.cutOff()
			} else {
				k.close(true)
			}
			_, err = f.ReadAt(make([]byte, 1), 0)
			if shutDown := errors.Is(err, unix.EIO); shutDown != c.shutDown {
				t.Errorf("%d bytes written: a read after close: %v, want the file system shut down: %v", c.size, err, c.shutDown)
			}
			if !c.shutDown {
				// Once the last holder lets go, what was written is
				// written back.
				f.Close()
				img, err := os.ReadFile(diskImage(dir))
				if err != nil || !bytes.Contains(img, marker) {
					t.Errorf("%d bytes written, the disk closed: not in its image (%v)", c.size, err)
				}
			}
		})
	}
}

// The disk of a deleted sandbox that left little on it is wiped and made
// ready again: the next sandbox gets it with empty upper and work
// directories, and nothing of the first sandbox's files is left in the
// file system. A disk that holds more, or a file still open, is not
// used again.
func TestDiskRecycle(t *testing.T) {
	const mib = 64
	d, root := testDisks(t, mib)
	secret := []byte("tenant-a-secret\n")
	n := 0
	newDisk := func(t *testing.T) (*disk, string) {
		t.Helper()
		n++
		dir := filepath.Join(root, "sb"+strconv.Itoa(n))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		k, err := d.create(dir, mib)
		if err != nil {
			t.Fatal(err)
		}
		return k, dir
	}
	// makeRoom lets the background refill finish, then takes one ready
	// disk out, so that the pool has room for the one given back.
	makeRoom := func(t *testing.T) {
		t.Helper()
		waitReady(t, d, mib)
		k := d.pop(mib)
		k.close(true)
		os.Remove(k.img)
	}
	// write makes files the way a sandbox does, under the disk's upper
	// directory, the last one synced to the image, and returns its handle.
	write := func(t *testing.T, k *disk, size int) *os.File {
		t.Helper()
		up := k.path() + "/upper"
		if err := os.MkdirAll(up+"/root/deep/er", 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink("/etc/passwd", up+"/root/link"); err != nil {
			t.Fatal(err)
		}
		f, err := os.Create(up + "/root/deep/er/secret")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.Write(bytes.Repeat(secret, size/len(secret))); err != nil {
			t.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(up+"/root/deep", 0); err != nil {
			t.Fatal(err)
		}
		return f
	}
	// wipeFails checks that k cannot be wiped, for the reason why says.
	wipeFails := func(t *testing.T, k *disk, dir, why string) {
		t.Helper()
		err := k.wipe(diskImage(dir))
		k.close(true)
		if err == nil || !strings.Contains(err.Error(), why) {
			t.Errorf("wipe: %v, want an error saying %q", err, why)
		}
	}

	t.Run("little left", func(t *testing.T) {
		k, dir := newDisk(t)
		write(t, k, 64<<10).Close()
		if img, err := os.ReadFile(diskImage(dir)); err != nil || !bytes.Contains(img, secret) {
			t.Fatalf("the sandbox's synced file is not in its image (%v): the test would prove nothing", err)
		}
		makeRoom(t)
		if !d.recycle(k, diskImage(dir)) {
			t.Fatal("a disk with 64 KiB left on it was not recycled")
		}
		if _, err := os.Stat(diskImage(dir)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the recycled image is still in the sandbox's directory: %v", err)
		}
		// The blocks the sandbox's files had are punched out of the image:
		// its data is left nowhere, on the host neither.
		if img, err := os.ReadFile(k.img); err != nil || bytes.Contains(img, secret) {
			t.Errorf("the recycled image (%v) still holds the sandbox's data", err)
		}
		if n, err := allocated(k.img); err != nil || n > k.imageBytes+recycleMaxBytes {
			t.Errorf("the recycled image takes %d bytes on the host (%v), %d when made", n, err, k.imageBytes)
		}
		next, _ := newDisk(t)
		defer next.close(true)
		if next != k {
			t.Fatal("the next disk is not the recycled one")
		}
		mnt := next.path()
		for _, sub := range []string{"upper", "work"} {
			ents, err := os.ReadDir(mnt + "/" + sub)
			if err != nil || len(ents) != 0 {
				t.Errorf("%s of the recycled disk: %v entries, %v", sub, len(ents), err)
			}
		}
		if used, err := next.usage(); err != nil || used > 8<<10 {
			t.Errorf("the recycled disk's usage is %d bytes (%v), want its two empty directories'", used, err)
		}
	})
	// overlay mounts, detached, an overlay whose upper and work
	// directories are on k, as a sandbox's root is: while it is held, the
	// inodes it holds there are not freed.
	overlay := func(t *testing.T, k *disk) *os.File {
		t.Helper()
		fsfd, err := unix.Fsopen("overlay", unix.FSOPEN_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		defer unix.Close(fsfd)
		for _, o := range [][2]string{{"lowerdir", t.TempDir()}, {"upperdir", k.path() + "/upper"}, {"workdir", k.path() + "/work"}} {
			if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
				t.Fatal(err)
			}
		}
		if err := unix.FsconfigCreate(fsfd); err != nil {
			t.Fatal(err)
		}
		mfd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		return os.NewFile(uintptr(mfd), "overlay")
	}
	t.Run("overlay still mounted", func(t *testing.T) {
		// A deleted sandbox's mounts go after its delete returns: the
		// wipe waits for them, and refuses a disk they never leave.
		k, dir := newDisk(t)
		write(t, k, 4<<10).Close()
		ov := overlay(t, k)
		defer ov.Close()
		t0 := time.Now()
		wipeFails(t, k, dir, "the wiped file system uses")
		if waited := time.Since(t0); waited < wipeSettle {
			t.Errorf("the wipe refused after %v, without waiting %v for the mounts to go", waited, wipeSettle)
		}
	})
	t.Run("overlay goes during the wipe", func(t *testing.T) {
		k, dir := newDisk(t)
		write(t, k, 4<<10).Close()
		ov := overlay(t, k)
		t.Cleanup(func() { ov.Close() })
		makeRoom(t)
		go func() {
			time.Sleep(30 * time.Millisecond)
			ov.Close()
		}()
		if !d.recycle(k, diskImage(dir)) {
			t.Fatal("a disk whose overlay went during the wipe was not recycled")
		}
		if used, err := k.usage(); err != nil || used > 8<<10 {
			t.Errorf("the recycled disk's usage is %d bytes (%v)", used, err)
		}
	})
	t.Run("pool full with a wipe under way", func(t *testing.T) {
		// A disk being wiped holds its place in the pool: with the pool
		// one short of full and one wipe under way, another disk is
		// refused at once rather than wiped for nothing.
		held, heldDir := newDisk(t)
		write(t, held, 4<<10).Close()
		ov := overlay(t, held) // its wipe waits while this is held
		t.Cleanup(func() { ov.Close() })
		other, otherDir := newDisk(t)
		waitReady(t, d, mib)
		d.mu.Lock()
		for len(d.pool[mib]) < recycledPoolSize-1 {
			d.seq++
			img := filepath.Join(d.dir, fmt.Sprintf("pad-%d.img", d.seq))
			d.mu.Unlock()
			k, err := d.build(img, mib)
			if err != nil {
				t.Fatal(err)
			}
			k.img = img
			d.mu.Lock()
			d.pool[mib] = append(d.pool[mib], k)
		}
		d.mu.Unlock()
		recycled := make(chan bool)
		go func() { recycled <- d.recycle(held, diskImage(heldDir)) }()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			d.mu.Lock()
			wiping := d.wiping
			d.mu.Unlock()
			if wiping == 1 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatal("the held disk's wipe did not start")
			}
		}
		t0 := time.Now()
		if d.recycle(other, diskImage(otherDir)) {
			t.Error("a disk was recycled while the pool and the wipes under way filled it")
		}
		if took := time.Since(t0); took > wipeSettle/2 {
			t.Errorf("the refusal took %v: the disk was wiped first", took)
		}
		ov.Close()
		if !<-recycled {
			t.Error("the held disk was not recycled once its overlay went")
		}
	})
	t.Run("too much left", func(t *testing.T) {
		k, dir := newDisk(t)
		write(t, k, 2<<20).Close()
		wipeFails(t, k, dir, "the sandbox left")
	})
	t.Run("file still open", func(t *testing.T) {
		k, dir := newDisk(t)
		f := write(t, k, 4<<10)
		defer f.Close()
		wipeFails(t, k, dir, "the wiped file system uses")
	})
	t.Run("many names", func(t *testing.T) {
		// One inode, many hard links, in both directories: cheap to
		// leave, costly to wipe. The budget is for the whole wipe.
		k, dir := newDisk(t)
		f := write(t, k, 4<<10)
		f.Close()
		mnt := k.path()
		for i := range recycleMaxEntries/2 + 1 {
			for _, sub := range []string{"upper", "work"} {
				if err := os.Link(mnt+"/upper/root/link", mnt+"/"+sub+"/l"+strconv.Itoa(i)); err != nil {
					t.Fatal(err)
				}
			}
		}
		wipeFails(t, k, dir, errBudget.Error())
	})
	t.Run("read-only", func(t *testing.T) {
		// ext4 remounts itself read-only on an error (errors=remount-ro).
		k, dir := newDisk(t)
		attr := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY}
		if err := unix.MountSetattr(int(k.mnt.Fd()), "", unix.AT_EMPTY_PATH, &attr); err != nil {
			t.Fatal(err)
		}
		wipeFails(t, k, dir, "read-only")
	})
	t.Run("other size", func(t *testing.T) {
		dir := filepath.Join(root, "other")
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		k, err := d.create(dir, mib+1)
		if err != nil {
			t.Fatal(err)
		}
		if d.recycle(k, diskImage(dir)) {
			t.Error("a disk of a size not made ahead was recycled")
		}
	})
}

// A disk is mounted without cache flushes (each would be an fsync of its
// image on the host) and without zeroing its inode tables in the
// background: it lives no longer than its sandbox.
func TestDiskMountOptions(t *testing.T) {
	d, root := testDisks(t, 0)
	k, err := d.create(root, 64)
	if err != nil {
		t.Fatal(err)
	}
	defer k.close(true)
	var st unix.Stat_t
	if err := unix.Fstat(int(k.mnt.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if unix.Major(st.Dev) != 7 {
		t.Fatalf("the disk's device is %d:%d, not a loop device", unix.Major(st.Dev), unix.Minor(st.Dev))
	}
	data, err := os.ReadFile(fmt.Sprintf("/proc/fs/ext4/loop%d/options", unix.Minor(st.Dev)))
	if err != nil {
		t.Fatal(err)
	}
	opts := strings.Fields(string(data))
	for _, want := range []string{"nobarrier", "noinit_itable", "errors=remount-ro"} {
		if !slices.Contains(opts, want) {
			t.Errorf("the disk's mount options %v lack %s", opts, want)
		}
	}
}

// releaseIsolation keeps the killed init's mount namespace until the
// function it returns runs (Delete's background part): the kernel then
// unmounts the sandbox's mounts there, not in the init's exit.
func TestReleaseIsolationHoldsMounts(t *testing.T) {
	open := func(t *testing.T) *os.File {
		t.Helper()
		f, err := os.Open("/proc/self/ns/mnt")
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	isOpen := func(f *os.File) bool {
		_, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
		return err == nil
	}
	e := &Engine{}
	mounts := open(t)
	later := e.releaseIsolation(&box{}, true, mounts, nil)
	if !isOpen(mounts) {
		t.Fatal("releaseIsolation let go of the mount namespace before its caller's background part")
	}
	later(t.TempDir())
	if isOpen(mounts) {
		t.Error("the mount namespace is still held after the background part")
	}
	// Processes may be left: the namespace goes at once.
	mounts = open(t)
	e.releaseIsolation(&box{}, false, mounts, nil)
	if isOpen(mounts) {
		t.Error("with processes left, the mount namespace is still held")
	}
}
