package linux

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/sandbox"
)

// cgroupRoot is where hosts mount their cgroup hierarchies.
const cgroupRoot = "/sys/fs/cgroup"

// hierarchy is one cgroup v1 hierarchy of the host. Every sandbox gets a
// cgroup in each of them, as runc gives a container: the ones that limit
// (memory, cpu, pids, devices) and the others alike, so that inside the
// sandbox's cgroup namespace no hierarchy shows the host's tree.
type hierarchy struct {
	mount string // where the host mounts it, e.g. /sys/fs/cgroup/memory
	// root is the cgroup at that mount point ("/" unless the host mounts a
	// subtree, as some container runtimes do).
	root string
	// opts are its super options without the generic ones ("cpu",
	// "name=systemd"): what mounting it again inside a sandbox takes.
	opts string
	// key is how /proc/self/cgroup names it: its controllers, or name=X.
	key string
}

func (h hierarchy) has(controller string) bool {
	for _, o := range strings.Split(h.opts, ",") {
		if o == controller {
			return true
		}
	}
	return false
}

// cgroups are the cgroup hierarchies the engine puts sandboxes in and the
// parent holding their cgroups. On a cgroup v1 (or hybrid) host every
// sandbox gets a cgroup named by its key in every v1 hierarchy; on a
// cgroup v2 host, one in the unified hierarchy.
//
// Sets for sandboxes are made ahead of time: a few empty, ready cgroup
// sets (named .pool-<pid>-<n>) wait under the parent with their device
// rules and cpuset (inherited from the parent) and the portal's user pids
// child in place, and a start renames one to the sandbox's key (cgroup v1
// renames within a parent) and writes its limits. A background refill
// keeps the pool full, so the mkdirs are off the start path.
type cgroups struct {
	v2     bool        // the host runs cgroup v2 only
	v1     []hierarchy // cgroup v1 hierarchies (none on a v2 host)
	parent string      // relative path of the sandboxes' parent cgroup
	// Mount points of the hierarchies the engine writes limits to or reads
	// statistics from; "" when the host lacks one.
	memory, cpu, cpuacct, pids, devices, cpuset string
	swap                                        bool // memory+swap can be limited
	// perSet: each set gets its cpuset and device rules written, rather
	// than from the parent.
	perSet bool

	mu        sync.Mutex
	pool      []string // names of ready sets
	poolSize  int
	seq       int
	refilling bool
	closed    bool
	refilled  chan struct{}
}

// poolPrefix starts the names of the ready, unused sets. No sandbox key
// can start with a dot.
const poolPrefix = ".pool-"

// defaultPoolSize is how many cgroup sets wait ready.
const defaultPoolSize = 4

// findCgroups reads the host's cgroup mounts.
func findCgroups(parent string) (*cgroups, error) {
	c := &cgroups{parent: parent, poolSize: defaultPoolSize}
	var st unix.Statfs_t
	if err := unix.Statfs(cgroupRoot, &st); err == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
		c.v2 = true
		c.memory, c.cpu, c.cpuacct, c.pids = cgroupRoot, cgroupRoot, cgroupRoot, cgroupRoot
		c.swap = true  // memory.swap.max, written only where it exists
		c.poolSize = 0 // cgroup v2 does not rename cgroups
		return c, nil
	}
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// id parent major:minor root mountpoint opts [optional...] - fstype source superopts
		fields := strings.Fields(sc.Text())
		sep := -1
		for i, fl := range fields {
			if fl == "-" {
				sep = i
				break
			}
		}
		if sep < 5 || len(fields) < sep+4 || fields[sep+1] != "cgroup" {
			continue
		}
		var opts []string
		for _, o := range strings.Split(fields[sep+3], ",") {
			switch o {
			case "rw", "ro", "relatime", "noatime", "nodiratime", "strictatime", "nosuid", "nodev", "noexec":
			default:
				opts = append(opts, o)
			}
		}
		h := hierarchy{mount: unescapeMount(fields[4]), root: unescapeMount(fields[3]), opts: strings.Join(opts, ",")}
		var ctrls []string
		for _, o := range opts {
			if strings.HasPrefix(o, "name=") || !strings.Contains(o, "=") && o != "xattr" && o != "noprefix" && o != "cpuset_v2_mode" && o != "clone_children" && o != "favordynmods" {
				ctrls = append(ctrls, o)
			}
		}
		h.key = strings.Join(ctrls, ",")
		if h.key == "" || seen[h.key] {
			continue // a second mount of a hierarchy already found
		}
		seen[h.key] = true
		c.v1 = append(c.v1, h)
		for _, ctrl := range []struct {
			name string
			to   *string
		}{{"memory", &c.memory}, {"cpu", &c.cpu}, {"cpuacct", &c.cpuacct}, {"pids", &c.pids}, {"devices", &c.devices}, {"cpuset", &c.cpuset}} {
			if h.has(ctrl.name) {
				*ctrl.to = h.mount
			}
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(c.v1) == 0 {
		return nil, errors.New("no cgroup hierarchy is mounted")
	}
	if c.memory != "" {
		c.swap = memswAt(c.memory)
	}
	return c, nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// mounts lists the mount points of the hierarchies sandboxes have cgroups in.
func (c *cgroups) mounts() []string {
	if c.v2 {
		return []string{cgroupRoot}
	}
	out := make([]string, len(c.v1))
	for i, h := range c.v1 {
		out[i] = h.mount
	}
	return out
}

// dir is the cgroup of the sandbox (or ready set) name in the hierarchy
// mounted at mnt.
func (c *cgroups) dir(mnt, name string) string { return filepath.Join(mnt, c.parent, name) }

// setup creates the parent cgroup in every hierarchy. A new cpuset cgroup
// has no CPUs and no memory nodes, which makes it unusable: each level
// made here gets its parent's, and the parent's children get its own
// (cgroup.clone_children). The parent's device rules are the sandboxes':
// a new devices cgroup starts with its parent's. On cgroup v2 the parent's
// ancestors delegate the memory, cpu and pids controllers down to it.
func (c *cgroups) setup() error {
	for _, mnt := range c.mounts() {
		p := mnt
		for _, part := range strings.Split(c.parent, "/") {
			up := p
			p = filepath.Join(p, part)
			if c.v2 {
				// Controllers must be enabled in the parent's subtree_control
				// before its children have them.
				if err := enableControllers(up); err != nil {
					return err
				}
			}
			if err := os.Mkdir(p, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("cgroup %s: %w", p, err)
			}
			if mnt == c.cpuset {
				if err := inheritCpuset(up, p); err != nil {
					return err
				}
			}
		}
		switch {
		case c.v2:
			if err := enableControllers(p); err != nil {
				return err
			}
		case mnt == c.cpuset:
			if os.WriteFile(filepath.Join(p, "cgroup.clone_children"), []byte("1"), 0) != nil {
				c.perSet = true
			}
		case mnt == c.devices:
			// Set by an earlier engine, the rules cannot be written again
			// while the parent has children; nor can they when children an
			// older version left have rules of their own: then every set
			// gets its own.
			list, err := os.ReadFile(filepath.Join(p, "devices.list"))
			if err != nil || bytes.Contains(list, []byte("a *:* rwm")) && writeDeviceRules(p) != nil {
				c.perSet = true
			}
		}
	}
	return nil
}

// enableControllers enables the controllers the engine limits with in the
// subtree of the cgroup v2 directory dir.
func enableControllers(dir string) error {
	data, err := os.ReadFile(filepath.Join(dir, "cgroup.controllers"))
	if err != nil {
		return fmt.Errorf("cgroup %s: %w", dir, err)
	}
	var add []string
	for _, c := range strings.Fields(string(data)) {
		if c == "memory" || c == "cpu" || c == "pids" {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte(strings.Join(add, " ")), 0); err != nil {
		return fmt.Errorf("cgroup %s: enabling %v: %w", dir, add, err)
	}
	return nil
}

// inheritCpuset gives the cpuset cgroup dir its parent's CPUs and memory
// nodes when it has none.
func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
		if strings.TrimSpace(string(cur)) != "" {
			continue
		}
		v, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return fmt.Errorf("cgroup %s: %w", parent, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), v, 0); err != nil {
			return fmt.Errorf("cgroup %s: %w", dir, err)
		}
	}
	return nil
}

// deviceRules are runc's default device rules (specconv.AllowedDevices),
// written after "deny all": mknod of any device (it is opening one that
// matters), the standard character devices (null, zero, full, random,
// urandom, tty), ptys, the pty master and /dev/net/tun.
var deviceRules = []string{
	"c *:* m", "b *:* m",
	"c 1:3 rwm", "c 1:8 rwm", "c 1:7 rwm", "c 5:0 rwm", "c 1:5 rwm", "c 1:9 rwm",
	"c 136:* rwm", "c 5:2 rwm", "c 10:200 rwm",
}

// userCgroup is the portal's child pids cgroup, where everything the user
// runs is born (see userPidsCgroup).
const userCgroup = "user"

// makeSet creates the cgroups of one sandbox, named name, with what every
// sandbox shares: cpuset and device rules (the parent's, see setup) and
// the user pids child. Limits come with the sandbox (setLimits). A failure
// removes what was made.
func (c *cgroups) makeSet(name string) error {
	for _, mnt := range c.mounts() {
		d := c.dir(mnt, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			c.removeSet(name)
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
		var err error
		switch {
		case c.v2:
		case mnt == c.cpuset && c.perSet:
			err = inheritCpuset(filepath.Dir(d), d)
		case mnt == c.devices && c.perSet:
			err = writeDeviceRules(d)
		case mnt == c.pids:
			err = os.Mkdir(filepath.Join(d, userCgroup), 0o755)
		}
		if err != nil {
			c.removeSet(name)
			return fmt.Errorf("cgroup %s: %w", d, err)
		}
	}
	return nil
}

func writeDeviceRules(dir string) error {
	if err := os.WriteFile(filepath.Join(dir, "devices.deny"), []byte("a"), 0); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(dir, "devices.allow"), os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	for _, r := range deviceRules {
		// One rule per write: the kernel parses a write as one rule.
		if _, err := f.WriteString(r); err != nil {
			return fmt.Errorf("device rule %q: %w", r, err)
		}
	}
	return nil
}

// limits are what a sandbox's cgroups cap.
type limits struct {
	memory int64 // bytes
	cpus   int
	pids   int
}

// defaultShares is a cgroup's CPU weight unless set otherwise.
const defaultShares = 1024

// minShares is the least CPU weight cgroup v1 takes: that of the inits
// waiting spawned ahead and of the processes of a deleted sandbox.
const minShares = 2

func specLimits(s sandbox.Spec) limits {
	return limits{memory: int64(s.MemoryMiB) << 20, cpus: s.CPUs, pids: s.Pids}
}

// setLimits writes the limits of the sandbox whose cgroups are named key.
// Memory+swap is capped at memory, so that nothing goes to swap, where the
// host accounts swap; without swap accounting only memory is capped (a
// sandbox's pages may then go to swap uncounted on a host that has swap).
func (c *cgroups) setLimits(key string, l limits) error {
	w := func(mnt, file, v string) error { return c.write("limit", mnt, key, file, v) }
	mem := strconv.FormatInt(l.memory, 10)
	quota := strconv.Itoa(l.cpus * cpuPeriodUS)
	userPids := strconv.Itoa(l.pids - pidsReserve(l.pids))
	if c.v2 {
		if err := w(c.memory, "memory.max", mem); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(c.dir(c.memory, key), "memory.swap.max")); err == nil {
			if err := w(c.memory, "memory.swap.max", "0"); err != nil {
				return err
			}
		}
		if err := w(c.cpu, "cpu.max", quota+" "+strconv.Itoa(cpuPeriodUS)); err != nil {
			return err
		}
		return w(c.pids, "pids.max", strconv.Itoa(l.pids))
	}
	// A new cgroup has no limits, so memory can go first and memory+swap
	// (never below memory) second.
	if err := w(c.memory, "memory.limit_in_bytes", mem); err != nil {
		return err
	}
	if c.swap {
		if err := w(c.memory, "memory.memsw.limit_in_bytes", mem); err != nil {
			return err
		}
	}
	if err := w(c.cpu, "cpu.cfs_period_us", strconv.Itoa(cpuPeriodUS)); err != nil {
		return err
	}
	if err := w(c.cpu, "cpu.cfs_quota_us", quota); err != nil {
		return err
	}
	if err := w(c.pids, "pids.max", strconv.Itoa(l.pids)); err != nil {
		return err
	}
	return w(c.pids, userCgroup+"/pids.max", userPids)
}

// yield gives the processes of the set key the least CPU weight (cgroup
// v1 cpu.shares; nothing on v2), whatever it was; unyield gives them a
// sandbox's.
func (c *cgroups) yield(key string) error   { return c.setShares(key, minShares) }
func (c *cgroups) unyield(key string) error { return c.setShares(key, defaultShares) }

func (c *cgroups) setShares(key string, shares int) error {
	if c.v2 {
		return nil
	}
	return c.write("weight", c.cpu, key, "cpu.shares", strconv.Itoa(shares))
}

// write writes v to file of the cgroup key ("": the parent) in the
// hierarchy mounted at mnt, and nothing where that hierarchy is missing
// (mnt ""); what names the value in the error.
func (c *cgroups) write(what, mnt, key, file, v string) error {
	if mnt == "" {
		return nil
	}
	p := filepath.Join(c.dir(mnt, key), file)
	if err := os.WriteFile(p, []byte(v), 0); err != nil {
		return fmt.Errorf("cgroup %s %s = %s: %w", what, p, v, err)
	}
	return nil
}

// pidsIn is how many processes the set key holds ("": all of the
// parent's; 0 without a pids hierarchy, or when it cannot be read).
func (c *cgroups) pidsIn(key string) int {
	if c.pids == "" {
		return 0
	}
	n, err := readUint(filepath.Join(c.dir(c.pids, key), "pids.current"))
	if err != nil {
		return 0
	}
	return int(n)
}

// relimit gives the running sandbox whose cgroups are named key the
// limits l, whether they go up or down: memory+swap (never below memory)
// is lifted first.
func (c *cgroups) relimit(key string, l limits) error {
	if err := c.liftSwapLimit(key); err != nil {
		return err
	}
	return c.setLimits(key, l)
}

// take gives the sandbox key its cgroups, limited to l: a ready set from
// the pool renamed to key, or a new one. Cgroups a crashed run left under
// that key are removed first; when they cannot be (a process still holds
// them), take fails.
func (c *cgroups) take(key string, l limits) error {
	name := c.pop()
	if name == "" || c.renameOver(name, key) != nil {
		// No ready set, or one could not be renamed over cgroups of that
		// name (renameOver: left by a run that crashed and still in use),
		// or a ready set was removed under us.
		if name != "" {
			c.removeSet(name)
		}
		if err := c.removeSet(key); err != nil {
			return fmt.Errorf("cgroups of an earlier run are still in use: %w", err)
		}
		if err := c.makeSet(key); err != nil {
			return err
		}
	}
	c.refill()
	if err := c.setLimits(key, l); err != nil {
		c.removeSet(key)
		return err
	}
	return nil
}

// pop returns the name of a ready set, or "" when the pool is empty.
func (c *cgroups) pop() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := len(c.pool)
	if n == 0 {
		return ""
	}
	name := c.pool[n-1]
	c.pool = c.pool[:n-1]
	return name
}

// rename renames the set from to to in every hierarchy. On a failure the
// hierarchies renamed already are renamed back.
func (c *cgroups) rename(from, to string) error {
	mnts := c.mounts()
	for i, mnt := range mnts {
		if err := renameCgroup(c.dir(mnt, from), c.dir(mnt, to)); err != nil {
			for _, done := range mnts[:i] {
				renameCgroup(c.dir(done, to), c.dir(done, from))
			}
			return err
		}
	}
	return nil
}

// renameCgroup renames the cgroup from to to, an error if to exists: the
// kernel never replaces a cgroup. (os.Rename would first stat to, a
// system call per hierarchy more, at every start and stop.)
func renameCgroup(from, to string) error {
	if err := unix.Rename(from, to); err != nil {
		return &os.LinkError{Op: "rename", Old: from, New: to, Err: err}
	}
	return nil
}

// renameOver renames the set from to to, as rename does, removing first
// what is under to when the rename fails: cgroups a crashed run left
// (a rename never replaces a cgroup). It fails when they are in use.
func (c *cgroups) renameOver(from, to string) error {
	err := c.rename(from, to)
	if err == nil {
		return nil
	}
	if rerr := c.removeSet(to); rerr != nil {
		return fmt.Errorf("%w (cgroups of an earlier run are still in use: %w)", err, rerr)
	}
	return c.rename(from, to)
}

// refill makes ready sets in the background until the pool is full.
func (c *cgroups) refill() {
	c.mu.Lock()
	if c.refilling || c.closed || len(c.pool) >= c.poolSize {
		c.mu.Unlock()
		return
	}
	c.refilling = true
	done := make(chan struct{})
	c.refilled = done
	c.mu.Unlock()
	go func() {
		defer close(done)
		for {
			c.mu.Lock()
			if c.closed || len(c.pool) >= c.poolSize {
				c.refilling = false
				c.mu.Unlock()
				return
			}
			c.seq++
			name := fmt.Sprintf("%s%d-%d", poolPrefix, os.Getpid(), c.seq)
			c.mu.Unlock()
			err := c.makeSet(name)
			c.mu.Lock()
			if err != nil {
				// The start path makes its own sets meanwhile (and says
				// why it cannot, if it cannot either).
				c.refilling = false
				c.mu.Unlock()
				return
			}
			c.pool = append(c.pool, name)
			c.mu.Unlock()
		}
	}()
}

// fill makes the pool full before returning.
func (c *cgroups) fill() {
	c.refill()
	c.mu.Lock()
	done := c.refilled
	c.mu.Unlock()
	if done != nil {
		<-done
	}
}

// drain stops refills and removes the ready sets.
func (c *cgroups) drain() error {
	c.mu.Lock()
	c.closed = true
	done := c.refilled
	c.mu.Unlock()
	if done != nil {
		<-done
	}
	c.mu.Lock()
	pool := c.pool
	c.pool = nil
	c.mu.Unlock()
	var errs []error
	for _, name := range pool {
		errs = append(errs, c.removeSet(name))
	}
	return errors.Join(errs...)
}

// removeStalePools removes the ready sets other processes made under the
// parent: those of a server that died.
func (c *cgroups) removeStalePools() {
	own := poolPrefix + strconv.Itoa(os.Getpid()) + "-"
	stale := map[string]bool{}
	for _, mnt := range c.mounts() {
		entries, _ := os.ReadDir(filepath.Join(mnt, c.parent))
		for _, e := range entries {
			if e.IsDir() && strings.HasPrefix(e.Name(), poolPrefix) && !strings.HasPrefix(e.Name(), own) {
				stale[e.Name()] = true
			}
		}
	}
	for name := range stale {
		c.removeSet(name)
	}
}

// removeSet removes the cgroups of the set name (a sandbox's key) from
// every hierarchy, children first (the user pids cgroup and the portal's
// per-command cgroups below it). Cgroups still holding a process stay and
// are reported; missing ones are fine.
func (c *cgroups) removeSet(name string) error {
	var errs []error
	for _, mnt := range c.mounts() {
		if err := removeCgroupTree(c.dir(mnt, name)); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeCgroupTree removes the cgroup directory dir and the cgroups below
// it, deepest first. A cgroup whose last process has just been reaped can
// stay busy for a moment, so a busy one is retried for a while.
func removeCgroupTree(dir string) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range entries {
		if e.IsDir() {
			if err := removeCgroupTree(filepath.Join(dir, e.Name())); err != nil {
				return err
			}
		}
	}
	for delay := 100 * time.Microsecond; ; delay *= 2 {
		err = unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || delay > 200*time.Millisecond {
			return fmt.Errorf("remove cgroup %s: %w", dir, err)
		}
		time.Sleep(delay)
	}
}

// removeParent removes the parent cgroup's last level from every
// hierarchy: the levels above may be shared with other servers.
func (c *cgroups) removeParent() error {
	var errs []error
	for _, mnt := range c.mounts() {
		if err := os.Remove(filepath.Join(mnt, c.parent)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", filepath.Join(mnt, c.parent), err))
		}
	}
	// The unified hierarchy of a hybrid host, where earlier versions of
	// the engine (libcontainer) also made the parent.
	if !c.v2 {
		if err := os.Remove(filepath.Join(cgroupRoot, "unified", c.parent)); err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeLegacyUnified removes the unified-hierarchy cgroup that earlier
// versions of the engine made for a sandbox on a hybrid host.
func (c *cgroups) removeLegacyUnified(key string) error {
	if c.v2 {
		return nil
	}
	return removeCgroupTree(filepath.Join(cgroupRoot, "unified", c.parent, key))
}

// tasksFiles opens, for writing, the tasks file of the sandbox key in each
// v1 hierarchy: writing "0" to one moves the writing thread alone.
func (c *cgroups) tasksFiles(key string) ([]*os.File, error) {
	if c.v2 {
		return nil, nil
	}
	files := make([]*os.File, 0, len(c.v1))
	for _, h := range c.v1 {
		f, err := os.OpenFile(filepath.Join(c.dir(h.mount, key), "tasks"), os.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// dirFD opens the sandbox's cgroup v2 directory, for CLONE_INTO_CGROUP.
func (c *cgroups) dirFD(key string) (*os.File, error) {
	return os.OpenFile(c.dir(cgroupRoot, key), unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
}

// ownTasksFiles opens the tasks files of the calling thread's own cgroups,
// one per v1 hierarchy, in the order of c.v1.
func (c *cgroups) ownTasksFiles() ([]*os.File, error) {
	if c.v2 {
		return nil, nil
	}
	data, err := os.ReadFile("/proc/thread-self/cgroup")
	if err != nil {
		return nil, err
	}
	own := map[string]string{}
	for _, l := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		parts := strings.SplitN(l, ":", 3)
		if len(parts) == 3 && parts[1] != "" {
			own[parts[1]] = parts[2]
		}
	}
	var files []*os.File
	for _, h := range c.v1 {
		rel, ok := own[h.key]
		if !ok {
			closeAll(files)
			return nil, fmt.Errorf("this process is in no cgroup of the %s hierarchy", h.key)
		}
		if h.root != "/" {
			rel = strings.TrimPrefix(rel, h.root)
		}
		f, err := os.OpenFile(filepath.Join(h.mount, rel, "tasks"), os.O_WRONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			closeAll(files)
			return nil, err
		}
		files = append(files, f)
	}
	return files, nil
}

// userPidsCgroup opens what the portal gets of the sandbox's user pids
// cgroup (a child of its own, limited to its pids minus pidsReserve): its
// tasks file for writing, as file descriptor 4, and its directory as a
// detached bind mount, as file descriptor 5 (nil when the kernel cannot
// make one).
//
// The portal moves the one thread it forks commands from into that cgroup
// (by writing "0"), so every process it starts is born there and the rest
// of the portal keeps the reserve: a Go program that cannot create a
// thread aborts, and a fork bomb must not take the portal with it. The
// open file carries the server's permission; nothing inside the sandbox
// can open it. In the directory the portal makes one child cgroup per
// command: a process cannot leave its cgroup (the sandbox's cgroup file
// system is read-only), so a timeout can kill everything a command
// started, even what left its process group and parent. A detached mount,
// not a plain directory, so that ".." from it cannot climb to the host's
// cgroups: the root of a mount that is attached nowhere is its own parent.
//
// It returns nil, nil, nil without a cgroup v1 pids hierarchy.
func (c *cgroups) userPidsCgroup(key string) (tasks, tree *os.File, err error) {
	if c.v2 || c.pids == "" {
		return nil, nil, nil
	}
	dir := filepath.Join(c.dir(c.pids, key), userCgroup)
	tasks, err = os.OpenFile(filepath.Join(dir, "tasks"), os.O_WRONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("user pids cgroup: %w", err)
	}
	// Without open_tree (Linux < 5.2) the portal kills by process tree.
	if fd, err := unix.OpenTree(unix.AT_FDCWD, dir, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC); err == nil {
		tree = os.NewFile(uintptr(fd), "user-pids-cgroup-tree")
	}
	return tasks, tree, nil
}

// pidsReserve is how many of a sandbox's pids are kept for the portal: a
// Go program dies when it cannot create a thread, so a fork bomb must not
// be able to take the portal's last pids.
func pidsReserve(pids int) int {
	return min(pids/4, 32)
}

// stats reads the CPU time and the memory charged of the sandbox key.
func (c *cgroups) stats(key string) (cpu time.Duration, mem uint64, err error) {
	if c.v2 {
		data, err := os.ReadFile(filepath.Join(c.dir(cgroupRoot, key), "cpu.stat"))
		if err != nil {
			return 0, 0, err
		}
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "usage_usec "); ok {
				us, _ := strconv.ParseUint(v, 10, 64)
				cpu = time.Duration(us) * time.Microsecond
			}
		}
		mem, err = readUint(filepath.Join(c.dir(cgroupRoot, key), "memory.current"))
		return cpu, mem, err
	}
	if c.cpuacct != "" {
		ns, err := readUint(filepath.Join(c.dir(c.cpuacct, key), "cpuacct.usage"))
		if err != nil {
			return 0, 0, err
		}
		cpu = time.Duration(ns)
	}
	if c.memory != "" {
		mem, err = readUint(filepath.Join(c.dir(c.memory, key), "memory.usage_in_bytes"))
	}
	return cpu, mem, err
}

func readUint(p string) (uint64, error) {
	data, err := os.ReadFile(p)
	if err != nil {
		return 0, err
	}
	return strconv.ParseUint(strings.TrimSpace(string(data)), 10, 64)
}

// procsDir is the cgroup directory whose cgroup.procs lists the processes
// of the sandbox key that are not in a child cgroup: its init among them.
func (c *cgroups) procsDir(key string) string {
	for _, mnt := range []string{c.pids, c.memory, c.cpu} {
		if mnt != "" {
			return c.dir(mnt, key)
		}
	}
	return c.dir(c.mounts()[0], key)
}

// findInit returns the host pid of the init of the sandbox key, found in
// its cgroup as the process that is PID 1 of a PID namespace of its own,
// and when it started; pid 0 when none runs. Processes of the host that
// merely sit in the sandbox's cgroup are not its init.
func (c *cgroups) findInit(key string) (pid int, started time.Time) {
	data, err := os.ReadFile(filepath.Join(c.procsDir(key), "cgroup.procs"))
	if err != nil {
		return 0, time.Time{}
	}
	for _, f := range strings.Fields(string(data)) {
		p, err := strconv.Atoi(f)
		if err != nil || !isNamespaceInit(p) {
			continue
		}
		return p, processStart(p)
	}
	return 0, time.Time{}
}

// isNamespaceInit reports whether the process pid is PID 1 of a PID
// namespace below this process's.
func isNamespaceInit(pid int) bool {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(l, "NSpid:"); ok {
			ids := strings.Fields(v)
			return len(ids) > 1 && ids[len(ids)-1] == "1"
		}
	}
	return false
}

// processStart returns when the process pid started, from its start time
// in clock ticks since boot.
func processStart(pid int) time.Time {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return time.Time{}
	}
	i := strings.LastIndexByte(string(data), ')')
	if i < 0 {
		return time.Time{}
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 20 {
		return time.Time{}
	}
	ticks, err := strconv.ParseInt(f[19], 10, 64) // field 22, starttime
	if err != nil {
		return time.Time{}
	}
	var info syscall.Sysinfo_t
	if err := syscall.Sysinfo(&info); err != nil {
		return time.Time{}
	}
	const userHZ = 100 // USER_HZ, fixed by the kernel's ABI
	booted := time.Now().Add(-time.Duration(info.Uptime) * time.Second)
	return booted.Add(time.Duration(ticks) * time.Second / userHZ).Truncate(time.Second)
}

// killInit kills the init of the sandbox key that a process other than
// this one started, and waits until the kernel has torn its PID namespace
// down. The init is signalled through a pidfd taken after it was found in
// the sandbox's cgroup and checked to be there still, so a recycled pid is
// never hit. It returns an error when it survives SIGKILL for 30 s.
func (c *cgroups) killInit(key string) error {
	pid, _ := c.findInit(key)
	if pid == 0 {
		return nil
	}
	pidfd, err := unix.PidfdOpen(pid, 0)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd of the sandbox's init %d: %w", pid, err)
	}
	defer unix.Close(pidfd)
	if again, _ := c.findInit(key); again != pid {
		return nil // exited (and maybe recycled) meanwhile
	}
	if err := unix.PidfdSendSignal(pidfd, unix.SIGKILL, nil, 0); err != nil && !errors.Is(err, unix.ESRCH) {
		return fmt.Errorf("killing the sandbox's init %d: %w", pid, err)
	}
	// A pidfd polls readable once its process has exited.
	if err := waitReadable(pidfd, 30*time.Second); err != nil {
		return fmt.Errorf("the sandbox's init %d after SIGKILL: %w", pid, err)
	}
	// Its namespace's other processes die with it; give the kernel a
	// moment to reap them so that its cgroups can go.
	for i := 0; i < 1000; i++ {
		data, err := os.ReadFile(filepath.Join(c.procsDir(key), "cgroup.procs"))
		if err != nil || !hasNamespacedProcess(string(data)) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	return nil
}

// hasNamespacedProcess reports whether any of the pids listed lives in a
// PID namespace below this process's.
func hasNamespacedProcess(procs string) bool {
	for _, f := range strings.Fields(procs) {
		data, err := os.ReadFile("/proc/" + f + "/status")
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(l, "NSpid:"); ok && len(strings.Fields(v)) > 1 {
				return true
			}
		}
	}
	return false
}

// memswAt reports whether the cgroup v1 memory hierarchy mounted at mnt
// accounts swap (memory.memsw.* files, missing when the kernel was built
// or booted without swap accounting).
func memswAt(mnt string) bool {
	_, err := os.Stat(filepath.Join(mnt, "memory.memsw.limit_in_bytes"))
	return err == nil
}

func closeAll(files []*os.File) {
	for _, f := range files {
		if f != nil {
			f.Close()
		}
	}
}

// Ceilings bound what all of a server's sandboxes hold together: they are
// written on the sandboxes' parent cgroup, which every sandbox's cgroups
// are below, so that many sandboxes cannot together take the host's
// process table or memory. Zero: no ceiling.
type Ceilings struct {
	Pids      int // processes and threads
	MemoryMiB int
}

// setCeilings writes the ceilings on the parent cgroup, or lifts them
// ("max", -1) when zero.
func (c *cgroups) setCeilings(l Ceilings) error {
	w := func(mnt, file, v string) error { return c.write("ceiling", mnt, "", file, v) }
	pids, mem := "max", "-1"
	if l.Pids > 0 {
		pids = strconv.Itoa(l.Pids)
	}
	if l.MemoryMiB > 0 {
		mem = strconv.FormatInt(int64(l.MemoryMiB)<<20, 10)
	}
	if err := w(c.pids, "pids.max", pids); err != nil {
		return err
	}
	if c.v2 {
		if mem == "-1" {
			mem = "max"
		}
		return w(c.memory, "memory.max", mem)
	}
	// memory+swap can never be below memory: whichever goes first must
	// keep that true, which depends on the values already there.
	if !c.swap {
		return w(c.memory, "memory.limit_in_bytes", mem)
	}
	if err := w(c.memory, "memory.limit_in_bytes", mem); err != nil {
		if err := w(c.memory, "memory.memsw.limit_in_bytes", mem); err != nil {
			return err
		}
		return w(c.memory, "memory.limit_in_bytes", mem)
	}
	return w(c.memory, "memory.memsw.limit_in_bytes", mem)
}

// pidsCurrent is how many processes the sandboxes run together (the
// parent cgroup's pids.current; 0 without a pids hierarchy).
func (c *cgroups) pidsCurrent() int { return c.pidsIn("") }
