package linux

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
)

// A sandbox's disk is an ext4 file system of its own, in an image file
// <SandboxDir>/<key>/disk.img on a loop device: everything the sandbox can
// write (its overlay's upper layer, and so /tmp, /workspace, /root) is on
// it, so writing past its size or its inode count fails with ENOSPC inside
// the sandbox, for root too (no blocks are reserved, and no quota is there
// to bypass), and nothing the sandbox does reaches the host's file system
// beyond its own sparse image. The kernel of the machines msb runs on has
// no project quotas (no CONFIG_QFMT_V2, no XFS quota), which would have
// let sandboxes share one file system; see the README's "Limits and
// quotas".
//
// An image is a sparse copy of a template made once per (size, inodes)
// with mke2fs (no journal: the disk goes with the sandbox; no blocks
// reserved), attached to a free loop device with LOOP_CONFIGURE and
// LO_FLAGS_AUTOCLEAR, and mounted nosuid, nodev, noatime, nobarrier,
// noinit_itable with the new mount API (fsopen, fsmount): the mount is
// detached, attached in no mount namespace, and the server holds it as a
// file descriptor for the sandbox's life. At each start a clone of it
// (open_tree) is handed to the init, which attaches it in the sandbox's
// own mount namespace under its overlay. So nothing of a disk is ever in
// the host's mount table, usage is one fstatfs, and when the server dies
// its disks go with the last process that holds them: the loop device
// detaches itself, and only the image file is left for Delete to remove.
// The disk of a deleted sandbox that left little on it is wiped and made a
// ready disk again (recycle): a new disk's image copy, loop device, mount
// and, at the end, unmount and image removal cost more than the rest of a
// start.

// diskTemplateDir, under SandboxDir, holds the disk templates.
const diskTemplateDir = ".disks"

// diskInodesPerMiB is a disk's inode count per MiB: one per 16 KiB, as
// mke2fs gives by default.
const diskInodesPerMiB = 64

// diskPoolSize is how many disks of each size asked for wait ready, made
// in the background: a start then only renames an image into place.
const diskPoolSize = 2

// recycledPoolSize is how many ready disks the disks of deleted sandboxes
// may make up (see recycle): more than diskPoolSize, so that while
// sandboxes come and go no new disk needs making.
const recycledPoolSize = 8

// poolImagePrefix starts the names of ready disks' images in the template
// directory.
const poolImagePrefix = "pool-"

// disks makes sandbox disks from templates, and keeps a few of each size
// asked for ready.
type disks struct {
	dir string // <SandboxDir>/.disks
	// readyMiB is the size of which disks are made ahead (0: none).
	readyMiB int
	mu       sync.Mutex
	// ready are the templates made by this engine, by file name, with
	// when each was last used: at most maxTemplates of sizes other than
	// readyMiB are kept, so that tenants asking for many sizes cannot
	// fill the host's disk with templates.
	ready map[string]time.Time
	// pool are the disks ready by size (MiB), with their images in dir.
	pool      map[int][]*disk
	refilling map[int]bool
	seq       int
	closed    bool
	wg        sync.WaitGroup
	// loopMu serialises the engine's attachments of loop devices.
	loopMu sync.Mutex
	// makeMu serialises the making of templates (mke2fs), outside mu, so
	// that a start asking for a new size holds no other start's disk up.
	makeMu sync.Mutex
	// noRecycle is set once a disk could not be trimmed (see recycle).
	noRecycle bool
	// wiping counts the disks being wiped for the pool: with those in it,
	// they stay within recycledPoolSize, so that a burst of deletes wipes
	// no more disks than the pool can take (refill, which adds up to
	// diskPoolSize new ones, does not count them).
	wiping int
	log    *slog.Logger
}

// newDisks prepares the template directory, removing partial templates a
// crash left, and detaches loop devices left attached to images under
// sandboxDir (belt and braces: AUTOCLEAR detaches them once unused).
func newDisks(sandboxDir string, readyMiB int, log *slog.Logger) (*disks, error) {
	d := &disks{dir: filepath.Join(sandboxDir, diskTemplateDir), readyMiB: readyMiB, ready: map[string]time.Time{},
		pool: map[int][]*disk{}, refilling: map[int]bool{}, log: log}
	if err := os.MkdirAll(d.dir, 0o700); err != nil {
		return nil, err
	}
	// Partial templates, ready disks of a server that died (their loop
	// devices went with its descriptors), and templates of sizes other
	// than readyMiB (made again when asked for: evictTemplateLocked
	// bounds them while the server runs).
	entries, _ := os.ReadDir(d.dir)
	for _, e := range entries {
		n := e.Name()
		if strings.HasSuffix(n, ".tmp") || strings.HasPrefix(n, poolImagePrefix) ||
			strings.HasPrefix(n, "ext4-") && !strings.HasPrefix(n, fmt.Sprintf("ext4-%d-", readyMiB)) {
			os.Remove(filepath.Join(d.dir, n))
		}
	}
	// Load the loop and ext4 modules now, if they are modules, and make
	// sure a loop device exists: the sandboxes' inits mask their
	// directories in sysfs only if they are there when a sandbox starts
	// (see maskedPaths).
	if f, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0); err == nil {
		unix.IoctlRetInt(int(f.Fd()), unix.LOOP_CTL_GET_FREE) // makes one if none is free
		f.Close()
	}
	if fd, err := unix.Fsopen("ext4", unix.FSOPEN_CLOEXEC); err == nil {
		unix.Close(fd)
	}
	if _, err := exec.LookPath("mke2fs"); err != nil {
		log.Warn("mke2fs is not installed: sandboxes with a disk quota cannot start; install e2fsprogs (Debian: apt-get install e2fsprogs)")
	}
	clearLoops(sandboxDir)
	return d, nil
}

// LoopsUnder lists the loop devices whose backing file is under dir, as
// "loopN <backing file>".
func LoopsUnder(dir string) []string {
	var out []string
	files, _ := filepath.Glob("/sys/block/loop*/loop/backing_file")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if back := strings.TrimSpace(string(data)); err == nil && strings.HasPrefix(back, dir+"/") {
			out = append(out, filepath.Base(filepath.Dir(filepath.Dir(f)))+" "+back)
		}
	}
	return out
}

// clearLoops detaches (or marks to detach once unused) the loop devices
// whose backing file is under dir.
func clearLoops(dir string) {
	for _, l := range LoopsUnder(dir) {
		dev, _, _ := strings.Cut(l, " ")
		fd, err := unix.Open("/dev/"+dev, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			continue
		}
		// On a device still in use this only sets AUTOCLEAR.
		unix.IoctlSetInt(fd, unix.LOOP_CLR_FD, 0)
		unix.Close(fd)
	}
}

// stop ends refills and recycling: the engine is closing.
func (d *disks) stop() {
	d.mu.Lock()
	d.closed = true
	d.mu.Unlock()
}

// drain stops refills and releases the ready disks.
func (d *disks) drain() {
	d.stop()
	d.wg.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	for mib, ks := range d.pool {
		for _, k := range ks {
			k.close(true)
			os.Remove(k.img)
		}
		delete(d.pool, mib)
	}
}

// remove removes the templates (no sandbox is left); drain first.
func (d *disks) remove() {
	d.mu.Lock()
	defer d.mu.Unlock()
	os.RemoveAll(d.dir)
	d.ready = map[string]time.Time{}
}

// template returns the template image of a disk of mib MiB (and
// diskInodesPerMiB inodes a MiB), making it if needed.
func (d *disks) template(mib int) (string, error) {
	inodes := mib * diskInodesPerMiB
	name := fmt.Sprintf("ext4-%d-%d.img", mib, inodes)
	p := filepath.Join(d.dir, name)
	if d.useTemplate(name, false) {
		return p, nil
	}
	d.makeMu.Lock()
	defer d.makeMu.Unlock()
	if d.useTemplate(name, false) { // made meanwhile
		return p, nil
	}
	d.mu.Lock()
	d.evictTemplateLocked(mib)
	d.mu.Unlock()
	if _, err := os.Stat(p); err == nil {
		d.useTemplate(name, true)
		return p, nil
	}
	mke2fs, err := exec.LookPath("mke2fs")
	if err != nil {
		return "", fmt.Errorf("sandbox disks need mke2fs, which is not installed: install e2fsprogs (Debian: apt-get install e2fsprogs): %w", errdefs.ErrUnavailable)
	}
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return "", err
	}
	err = f.Truncate(int64(mib) << 20)
	f.Close()
	if err != nil {
		os.Remove(tmp)
		return "", err
	}
	out, err := exec.Command(mke2fs, "-q", "-F", "-t", "ext4", "-m", "0", "-b", "4096",
		"-O", "^has_journal,^resize_inode", "-E", "nodiscard,lazy_itable_init=1",
		"-N", strconv.Itoa(inodes), tmp).CombinedOutput()
	if err != nil {
		os.Remove(tmp)
		return "", fmt.Errorf("mke2fs: %v: %s", err, strings.TrimSpace(string(out)))
	}
	if err := os.Rename(tmp, p); err != nil {
		os.Remove(tmp)
		return "", err
	}
	d.useTemplate(name, true)
	return p, nil
}

// useTemplate notes that the template name is used now, if it is ready or
// add says it is, and reports whether it is.
func (d *disks) useTemplate(name string, add bool) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.ready[name]; !ok && !add {
		return false
	}
	d.ready[name] = time.Now()
	return true
}

// maxTemplates bounds the templates kept of sizes other than readyMiB.
const maxTemplates = 8

// evictTemplateLocked removes the least recently used template of a size
// other than readyMiB and mib while maxTemplates of them are kept (d.mu
// held). A copy from a removed template goes on: it holds it open.
func (d *disks) evictTemplateLocked(mib int) {
	keep := func(name string) bool {
		return strings.HasPrefix(name, fmt.Sprintf("ext4-%d-", d.readyMiB)) || strings.HasPrefix(name, fmt.Sprintf("ext4-%d-", mib))
	}
	for {
		n, oldest := 0, ""
		for name, used := range d.ready {
			if keep(name) {
				continue
			}
			n++
			if oldest == "" || used.Before(d.ready[oldest]) {
				oldest = name
			}
		}
		if n < maxTemplates {
			return
		}
		os.Remove(filepath.Join(d.dir, oldest))
		delete(d.ready, oldest)
	}
}

// disk is one sandbox's mounted disk.
type disk struct {
	mnt *os.File // the detached mount (fsmount)
	img string   // its image, while it waits in the pool
	mib int      // its size
	// baseBytes and baseInodes are what the empty file system uses (its
	// root, lost+found, metadata): usage is counted above them.
	baseBytes  uint64
	baseInodes uint64
	// imageBytes is what the image took on the host when it was made.
	imageBytes int64
}

// create makes the disk of a sandbox in its directory dir: a copy of the
// template as dir/disk.img, on a loop device, mounted detached, with the
// overlay's upper and work directories made in it. The empty directory
// dir/disk is where the init attaches it.
func (d *disks) create(dir string, mib int) (*disk, error) {
	if mib <= 0 {
		return nil, nil
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err == nil && st.Bavail*uint64(st.Bsize) < uint64(mib)<<20 {
		return nil, errdefs.Unavailablef("the host's file system has %d MiB free, less than the sandbox's disk of %d MiB: free space on the host, or ask for a smaller disk", st.Bavail*uint64(st.Bsize)>>20, mib)
	}
	img := diskImage(dir)
	k := d.pop(mib)
	if k != nil {
		// The loop device keeps the image open: a rename moves it.
		if err := os.Rename(k.img, img); err != nil {
			k.close(true)
			os.Remove(k.img)
			k = nil
		}
	}
	if mib == d.readyMiB {
		d.refill(mib)
	}
	if k == nil {
		var err error
		if k, err = d.build(img, mib); err != nil {
			return nil, err
		}
	}
	k.img = ""
	if err := os.Mkdir(filepath.Join(dir, "disk"), 0o700); err != nil {
		k.close(false)
		return nil, err
	}
	return k, nil
}

// diskImage is the image of the disk of the sandbox whose directory is dir.
func diskImage(dir string) string { return filepath.Join(dir, "disk.img") }

// pop returns a ready disk of mib MiB, or nil.
func (d *disks) pop(mib int) *disk {
	d.mu.Lock()
	defer d.mu.Unlock()
	ks := d.pool[mib]
	if len(ks) == 0 {
		return nil
	}
	k := ks[len(ks)-1]
	d.pool[mib] = ks[:len(ks)-1]
	return k
}

// refill makes ready disks of mib MiB in the background until there are
// diskPoolSize of them.
func (d *disks) refill(mib int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed || d.refilling[mib] || len(d.pool[mib]) >= diskPoolSize {
		return
	}
	d.refilling[mib] = true
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		for {
			d.mu.Lock()
			if d.closed || len(d.pool[mib]) >= diskPoolSize {
				d.refilling[mib] = false
				d.mu.Unlock()
				return
			}
			d.seq++
			img := filepath.Join(d.dir, fmt.Sprintf("%s%d-%d.img", poolImagePrefix, os.Getpid(), d.seq))
			d.mu.Unlock()
			k, err := d.build(img, mib)
			d.mu.Lock()
			if err != nil {
				// Starts make their own meanwhile, and say why they cannot.
				d.refilling[mib] = false
				d.mu.Unlock()
				os.Remove(img)
				return
			}
			k.img = img
			// A new disk goes under the recycled ones, which pop takes
			// first: they are mounted already, and the new one keeps.
			d.pool[mib] = append([]*disk{k}, d.pool[mib]...)
			d.mu.Unlock()
		}
	}()
}

// build makes a disk of mib MiB with its image at img.
func (d *disks) build(img string, mib int) (*disk, error) {
	tmpl, err := d.template(mib)
	if err != nil {
		return nil, fmt.Errorf("disk template: %w", err)
	}
	if err := copySparse(tmpl, img); err != nil {
		return nil, fmt.Errorf("disk image: %w", err)
	}
	imageBytes, err := allocated(img)
	if err != nil {
		return nil, fmt.Errorf("disk image: %w", err)
	}
	dev, err := attachLoop(img, &d.loopMu)
	if err != nil {
		return nil, fmt.Errorf("disk image: %w", err)
	}
	mnt, err := mountDisk(dev)
	dev.Close() // the mount holds the device now; AUTOCLEAR detaches it when the mount goes
	if err != nil {
		return nil, err
	}
	k := &disk{mnt: mnt, mib: mib, imageBytes: imageBytes}
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(mnt.Fd()), &st); err != nil {
		k.close(false)
		return nil, fmt.Errorf("disk: %w", err)
	}
	k.baseBytes, k.baseInodes = used(&st)
	if err := k.makeLayerDirs(); err != nil {
		k.close(false)
		return nil, err
	}
	return k, nil
}

// allocated returns the bytes the file at p takes on its file system.
func allocated(p string) (int64, error) {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return 0, err
	}
	return st.Blocks * 512, nil
}

// used returns the bytes and inodes a file system uses.
func used(st *unix.Statfs_t) (bytes, inodes uint64) {
	return (st.Blocks - st.Bfree) * uint64(st.Bsize), st.Files - st.Ffree
}

// makeLayerDirs makes the overlay's upper and work directories on the
// disk.
func (k *disk) makeLayerDirs() error {
	for _, sub := range []string{"upper", "work"} {
		if err := unix.Mkdirat(int(k.mnt.Fd()), sub, 0o755); err != nil {
			return fmt.Errorf("disk: %s: %w", sub, err)
		}
	}
	return nil
}

// recycleMaxBytes and recycleMaxInodes bound what a deleted sandbox may
// have left on its disk for the disk to be wiped and made ready again, and
// recycleMaxEntries the names the wipe removes (hard links make them many
// more than the inodes): the wipe then costs little, while a new disk
// costs an image copy, a loop device and a mount, then an unmount and the
// image's removal, about 1.5 ms of CPU per sandbox. recycleMaxBytes also
// bounds what a wiped disk's image may take on the host beyond what it
// took when it was made.
const (
	recycleMaxBytes   = 1 << 20
	recycleMaxInodes  = 256
	recycleMaxEntries = 4 * recycleMaxInodes
)

// errNoTrim is wipe's error when the disk cannot be trimmed: the host's
// file system cannot punch holes in its image.
var errNoTrim = errors.New("trimming the disk is not supported")

// recycle takes back the disk of a deleted sandbox whose processes are
// all gone, its image at img: a disk of the size made ahead that the
// sandbox left little on, whose file system is sound, is wiped and, if
// fewer than recycledPoolSize wait ready, becomes a ready disk (see wipe).
// Any other disk is closed, its unwritten data dropped (see close), and
// recycle reports false.
func (d *disks) recycle(k *disk, img string) bool {
	if k == nil || k.mnt == nil {
		return false
	}
	d.mu.Lock()
	wanted := !d.closed && !d.noRecycle && k.mib == d.readyMiB && len(d.pool[k.mib])+d.wiping < recycledPoolSize
	var pooled string
	if wanted {
		d.seq++
		d.wiping++
		pooled = filepath.Join(d.dir, fmt.Sprintf("%s%d-%d.img", poolImagePrefix, os.Getpid(), d.seq))
	}
	d.mu.Unlock()
	if !wanted {
		k.close(true)
		return false
	}
	err := k.wipe(img)
	if err == nil {
		err = os.Rename(img, pooled)
	}
	d.mu.Lock()
	d.wiping--
	noTrim := errors.Is(err, errNoTrim)
	firstNoTrim := noTrim && !d.noRecycle
	if noTrim {
		d.noRecycle = true // each delete would wipe a disk for nothing
	}
	// Made while this disk was wiped, ready disks (refill) may have
	// filled the pool: this one is then closed.
	kept := err == nil && !d.closed && len(d.pool[k.mib]) < recycledPoolSize
	if kept {
		k.img = pooled
		d.pool[k.mib] = append(d.pool[k.mib], k)
	}
	d.mu.Unlock()
	switch {
	case firstNoTrim:
		d.log.Warn("the disks of deleted sandboxes are not used again: their file system cannot trim its free blocks from their images on this host", "err", err)
	case err != nil && !noTrim:
		d.log.Debug("disk not used again", "image", img, "why", err)
	}
	if !kept {
		k.close(true)
		if err == nil {
			os.Remove(pooled)
		}
	}
	return kept
}

// wipe empties the disk of a sandbox that is gone, its image at img, or
// says why it cannot be used again. It removes the upper and work
// directories with all they hold, and then requires that the file system
// use exactly the blocks and inodes it did when it was made, no block or
// inode more (a file something still holds open keeps its inode), so that
// nothing of the sandbox is left in a file: ext4 hands a freed block out
// only as zeros or as its new owner's data. The freed blocks are then
// trimmed, which punches them out of the image, so that the sandbox's data
// is not left on the host either and the image takes no more of the
// host's disk than when it was made (within recycleMaxBytes).
func (k *disk) wipe(img string) error {
	fd := int(k.mnt.Fd())
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return err
	}
	if st.Flags&unix.ST_RDONLY != 0 {
		return errors.New("the file system is read-only (errors=remount-ro)")
	}
	bytes, inodes := used(&st)
	if bytes > k.baseBytes+recycleMaxBytes || inodes > k.baseInodes+recycleMaxInodes {
		return fmt.Errorf("the sandbox left %d bytes and %d inodes on it", bytes-k.baseBytes, inodes-k.baseInodes)
	}
	var root unix.Stat_t
	if err := unix.Fstat(fd, &root); err != nil {
		return err
	}
	budget := recycleMaxEntries // for both directories
	for _, sub := range []string{"upper", "work"} {
		if err := removeTreeBudget(filepath.Join(k.path(), sub), root.Dev, &budget); err != nil {
			return fmt.Errorf("removing %s: %w", sub, err)
		}
	}
	// The sandbox's mounts may still be going: the kernel unmounts those
	// of a mount namespace a little after its last holder lets go (see
	// Engine.Delete), and what they hold is freed then.
	for wait := time.Millisecond; ; wait *= 2 {
		if err := unix.Fstatfs(fd, &st); err != nil {
			return err
		}
		bytes, inodes := used(&st)
		if bytes == k.baseBytes && inodes == k.baseInodes {
			break
		}
		if wait > wipeSettle {
			return fmt.Errorf("the wiped file system uses %d bytes and %d inodes, not %d and %d as made", bytes, inodes, k.baseBytes, k.baseInodes)
		}
		time.Sleep(wait)
	}
	trim := struct{ start, len, minLen uint64 }{len: math.MaxUint64} // struct fstrim_range
	errno, err := k.rootIoctl(fitrim, unsafe.Pointer(&trim))
	if err != nil {
		return err
	}
	if errno == unix.EOPNOTSUPP {
		return fmt.Errorf("%w: %w", errNoTrim, errno)
	} else if errno != 0 {
		return fmt.Errorf("trimming: %w", errno)
	}
	n, err := allocated(img)
	if err != nil {
		return err
	}
	if n > k.imageBytes+recycleMaxBytes {
		return fmt.Errorf("the image takes %d bytes on the host after the trim, %d when made", n, k.imageBytes)
	}
	return k.makeLayerDirs()
}

// usage is how many bytes the sandbox's files take on its disk.
func (k *disk) usage() (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(int(k.mnt.Fd()), &st); err != nil {
		return 0, err
	}
	bytes, _ := used(&st)
	if bytes < k.baseBytes {
		return 0, nil
	}
	return bytes - k.baseBytes, nil
}

// path names the disk's root, through the server's descriptor of its
// detached mount.
func (k *disk) path() string { return "/proc/self/fd/" + strconv.Itoa(int(k.mnt.Fd())) }

// clone returns a new detached copy of the disk's mount, for an init to
// attach in its mount namespace.
func (k *disk) clone() (*os.File, error) {
	fd, err := unix.OpenTree(int(k.mnt.Fd()), "", unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC|unix.AT_EMPTY_PATH)
	if err != nil {
		return nil, fmt.Errorf("disk: open_tree: %w", err)
	}
	return os.NewFile(uintptr(fd), "disk"), nil
}

// ext4's EXT4_IOC_SHUTDOWN (_IOR('X', 125, __u32)) with
// EXT4_GOING_FLAGS_NOLOGFLUSH: the file system stops at once and its dirty
// pages are dropped instead of written back (a deleted sandbox's disk
// would otherwise cost a write-back of everything it wrote last: 100-200 ms
// for 64 MiB).
const ext4IocShutdown, ext4GoingNoLogFlush = 0x8004587d, 2

// wipeSettle bounds the wait of wipe for a deleted sandbox's mounts to go
// (the sum of its waits is about twice it).
const wipeSettle = 512 * time.Millisecond

// fitrim is FITRIM, _IOWR('X', 121, struct fstrim_range): discard a file
// system's free blocks, which a loop device punches out of its image.
const fitrim = 0xc0185879

// discardMinBytes is how much a sandbox's files must take on its disk for
// discard to shut the file system down: below it, writing back what may be
// unwritten costs less than the shutdown, which ext4 reports at KERN_ALERT,
// so on the host's console, about 0.3 ms of CPU per sandbox.
const discardMinBytes = 256 << 10

// close releases the server's hold on the disk; with discard, its file
// system is shut down first if the sandbox's files take discardMinBytes or
// more, its unwritten data dropped. The mount goes once no sandbox process
// holds it either, and then the loop device.
func (k *disk) close(discard bool) {
	if k == nil || k.mnt == nil {
		return
	}
	if discard && k.holdsMuch() {
		k.shutdown()
	}
	k.mnt.Close()
	k.mnt = nil
}

// cutOff shuts the file system down, whatever it holds, and closes the
// disk: processes of the sandbox that may outlive it (its cgroups could
// not be removed) then get EIO for everything on it.
func (k *disk) cutOff() {
	if k == nil || k.mnt == nil {
		return
	}
	k.shutdown()
	k.close(false)
}

// shutdown stops the file system at once, dropping its unwritten data.
func (k *disk) shutdown() {
	flag := uint32(ext4GoingNoLogFlush)
	k.rootIoctl(ext4IocShutdown, unsafe.Pointer(&flag))
}

// rootIoctl makes the ioctl req, with arg, on the disk's root directory
// (opened for it: the mount's own descriptor is an O_PATH handle, which
// takes no ioctl). err says the root could not be opened.
func (k *disk) rootIoctl(req uintptr, arg unsafe.Pointer) (errno unix.Errno, err error) {
	fd, err := unix.Openat(int(k.mnt.Fd()), ".", unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return 0, err
	}
	defer unix.Close(fd)
	_, _, errno = unix.Syscall(unix.SYS_IOCTL, uintptr(fd), req, uintptr(arg))
	return errno, nil
}

// holdsMuch reports whether the sandbox's files take discardMinBytes or
// more of the disk (or whether that is unknown).
func (k *disk) holdsMuch() bool {
	used, err := k.usage()
	return err != nil || used >= discardMinBytes
}

// mountDisk mounts the ext4 file system on the loop device dev, detached.
func mountDisk(dev *os.File) (*os.File, error) {
	fsfd, err := unix.Fsopen("ext4", unix.FSOPEN_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("disk: fsopen ext4: %w", err)
	}
	defer unix.Close(fsfd)
	src := dev.Name() // the device's path, as attachLoop opened it
	for _, o := range [][2]string{{"source", src}, {"errors", "remount-ro"}} {
		if err := unix.FsconfigSetString(fsfd, o[0], o[1]); err != nil {
			return nil, fmt.Errorf("disk: mount option %s=%s: %w", o[0], o[1], err)
		}
	}
	// A sandbox does not outlive a crash of its host: no cache flushes,
	// which the loop device turns into an fsync of the image, a write to
	// the host's disk on every mount and unmount. Nor a background zeroing
	// of the inode tables that mke2fs left (lazy_itable_init), which
	// nothing here needs.
	for _, flag := range []string{"nobarrier", "noinit_itable"} {
		if err := unix.FsconfigSetFlag(fsfd, flag); err != nil {
			return nil, fmt.Errorf("disk: mount option %s: %w", flag, err)
		}
	}
	if err := unix.FsconfigCreate(fsfd); err != nil {
		return nil, fmt.Errorf("disk: mounting %s: %w", src, err)
	}
	fd, err := unix.Fsmount(fsfd, unix.FSMOUNT_CLOEXEC, unix.MOUNT_ATTR_NOSUID|unix.MOUNT_ATTR_NODEV|unix.MOUNT_ATTR_NOATIME)
	if err != nil {
		return nil, fmt.Errorf("disk: fsmount: %w", err)
	}
	return os.NewFile(uintptr(fd), "disk-mount"), nil
}

// attachLoop binds file to a free loop device with LOOP_CONFIGURE (one
// ioctl) and LO_FLAGS_AUTOCLEAR, so that the device detaches itself when
// its last user (the mount) goes away, and returns the device open.
func attachLoop(file string, mu *sync.Mutex) (*os.File, error) {
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("loop devices: %w", err)
	}
	defer ctl.Close()
	back, err := os.OpenFile(file, os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer back.Close()
	// LOOP_CTL_GET_FREE hands the same device to attachers that ask at
	// once: this process's take turns, and another process's win is tried
	// again with the next free one.
	mu.Lock()
	defer mu.Unlock()
	for try := 0; try < 256; try++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("LOOP_CTL_GET_FREE: %w", err)
		}
		dev := "/dev/loop" + strconv.Itoa(n)
		lf, err := os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		if errors.Is(err, os.ErrNotExist) {
			// devtmpfs may lag a device just added: make the node.
			if err := unix.Mknod(dev, unix.S_IFBLK|0o660, int(unix.Mkdev(7, uint32(n)))); err != nil && !errors.Is(err, unix.EEXIST) {
				return nil, err
			}
			lf, err = os.OpenFile(dev, os.O_RDWR|unix.O_CLOEXEC, 0)
		}
		if err != nil {
			return nil, err
		}
		cfg := unix.LoopConfig{Fd: uint32(back.Fd())}
		cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
		copy(cfg.Info.File_name[:], file)
		if err := unix.IoctlLoopConfigure(int(lf.Fd()), &cfg); err != nil {
			lf.Close()
			if errors.Is(err, unix.EBUSY) { // another attacher took it first
				continue
			}
			return nil, fmt.Errorf("LOOP_CONFIGURE %s: %w", dev, err)
		}
		return lf, nil
	}
	return nil, errors.New("no free loop device after 256 tries")
}

// copySparse copies src to a new file dst, its data extents only
// (SEEK_DATA, SEEK_HOLE, copy_file_range), or shares them (FICLONE) where
// the file system can.
func copySparse(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_RDWR|os.O_CREATE|os.O_EXCL|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := unix.IoctlFileClone(int(out.Fd()), int(in.Fd())); err == nil {
		return nil
	}
	fi, err := in.Stat()
	if err != nil {
		return err
	}
	size := fi.Size()
	if err := out.Truncate(size); err != nil {
		return err
	}
	for off := int64(0); off < size; {
		data, err := unix.Seek(int(in.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break
		} else if err != nil {
			return err
		}
		hole, err := unix.Seek(int(in.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return err
		}
		for pos := data; pos < hole; {
			ro, wo := pos, pos
			n, err := unix.CopyFileRange(int(in.Fd()), &ro, int(out.Fd()), &wo, int(hole-pos), 0)
			if err != nil {
				return err
			}
			if n == 0 {
				return io.ErrUnexpectedEOF
			}
			pos += int64(n)
		}
		off = hole
	}
	return nil
}
