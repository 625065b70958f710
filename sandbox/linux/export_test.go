package linux

// WaitCgroupPool waits until the engine's cgroups made ahead are ready.
func WaitCgroupPool(e *Engine) { e.cg.fill() }
