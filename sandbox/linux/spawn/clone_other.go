//go:build !amd64

package spawn

import "runtime"

// haveCloneExec says whether cloneExec exists on this architecture: not
// on this one, where the spawner clones with Go's fork and exec
// (syscall.ForkExec) instead.
const haveCloneExec = false

func cloneExec(args *cloneArgs, size uintptr, steps, end uintptr, fail *failure) (pid, errno uintptr) {
	panic("cloneExec on " + runtime.GOARCH)
}
