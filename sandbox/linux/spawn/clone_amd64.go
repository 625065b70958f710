package spawn

// haveCloneExec says whether cloneExec exists on this architecture.
const haveCloneExec = true

// cloneExec is in clone_amd64.s.
func cloneExec(args *cloneArgs, size uintptr, steps, end uintptr, fail *failure) (pid, errno uintptr)
