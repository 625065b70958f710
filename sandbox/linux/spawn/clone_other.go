//go:build !amd64

package spawn

import (
	"errors"
)

// haveCloneExec says whether cloneExec exists on this architecture: not
// on this one, where the spawner clones with Go's fork and exec
// (syscall.ForkExec) instead.
const haveCloneExec = false

func cloneInit(c cloneSpec) (pid, pidfd int, err error) {
	return -1, -1, errors.New("no cloneInit on this architecture")
}
