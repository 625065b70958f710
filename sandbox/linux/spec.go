package linux

import (
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
)

const (
	// portalDir is reserved for msb inside every sandbox: no mount may go
	// there.
	portalDir   = "/.msb"
	cpuPeriodUS = 100_000 // CFS period; quota = CPUs × period
	nofileLimit = 65536
)

// hostLimits is what the host lets the engine set on every sandbox, probed
// once by New (the timer slack is raiseTimerSlack's).
type hostLimits struct {
	// oomScore is the init's oom_score_adj, never below 0 (see
	// initOOMScore).
	oomScore int
	// swap says whether the memory cgroup can limit memory+swap.
	swap bool
	// nofile is every sandbox's RLIMIT_NOFILE: nofileLimit, or the
	// server's hard limit if lower (raising a hard limit takes
	// CAP_SYS_RESOURCE, which sandboxes must not have).
	nofile uint64
	// timerSlack is the timer slack of the processes in sandboxes: the
	// server's before the engine raised it (raiseTimerSlack).
	timerSlack uint64
}

// probeHost finds the hostLimits of this host (swap accounting is the
// cgroups' to say). It returns an error when sandboxes could not be
// protected from making themselves immune to the OOM killer.
func probeHost() (hostLimits, error) {
	score, err := initOOMScore()
	if err != nil {
		return hostLimits{}, err
	}
	n := uint64(nofileLimit)
	var cur unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &cur); err == nil && cur.Max < n {
		n = cur.Max
	}
	return hostLimits{oomScore: score, nofile: n}, nil
}

// initOOMScore returns the oom_score_adj every sandbox's init gets: the
// server's own, but never below 0. The kernel lets any process lower its
// score down to a floor (oom_score_adj_min) that is set only by a writer
// holding CAP_SYS_RESOURCE and inherited by every child; a sandbox's
// processes lack that capability, so their floor is whatever the init was
// given. An init below 0 would let code in the sandbox go below 0 too, and
// at -1000 the memory cgroup's OOM killer could kill nothing in it. The
// init writes the score while it still holds the server's capabilities,
// which also pins the floor there when the server holds CAP_SYS_RESOURCE;
// raising a score takes no privilege, so the write works without it too.
//
// A server that runs below 0 itself without CAP_SYS_RESOURCE cannot raise
// the floor it passes on, so it gets an error naming the fix: it may lower
// its own score (as dockerd does, -999) only with that capability.
func initOOMScore() (int, error) {
	data, err := os.ReadFile("/proc/self/oom_score_adj")
	if err != nil {
		return 0, fmt.Errorf("linux engine: reading the server's OOM score: %w", err)
	}
	own, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return 0, fmt.Errorf("linux engine: the server's OOM score %q: %w", data, err)
	}
	if own < 0 && !hasCapSysResource() {
		// Without the capability the init's score can be raised to 0 but
		// not the floor it inherits, so code in the sandbox could go back
		// below 0 (down to immunity at -1000).
		return 0, fmt.Errorf("linux engine: the server runs with oom_score_adj %d but without CAP_SYS_RESOURCE, so code in its sandboxes could lower its own OOM score below 0; run it with a score of 0 or more, or with that capability: %w",
			own, errdefs.ErrUnavailable)
	}
	return max(own, 0), nil
}

// hasCapSysResource reports whether this process holds CAP_SYS_RESOURCE,
// needed to lower an OOM score below its floor and to set the floor.
func hasCapSysResource() bool {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			caps, err := strconv.ParseUint(strings.TrimSpace(hex), 16, 64)
			return err == nil && caps&(1<<unix.CAP_SYS_RESOURCE) != 0
		}
	}
	return false
}

// bindOrder sorts the image's mounts parents before children, so that a
// mount inside another one lands on top of it.
func bindOrder(ms []sandbox.Mount) []sandbox.Mount {
	sorted := append([]sandbox.Mount(nil), ms...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return depth(sorted[i].Target) < depth(sorted[j].Target)
	})
	for i := range sorted {
		sorted[i].Target = path.Clean(sorted[i].Target)
	}
	return sorted
}

func depth(p string) int { return strings.Count(path.Clean(p), "/") }
