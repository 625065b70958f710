package sandboxtest

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/msb-dev/msb/errdefs"
	"github.com/msb-dev/msb/sandbox"
	"github.com/msb-dev/msb/sandbox/network"
)

// Memory is an in-memory sandbox.Engine: sandboxes are records in a map and
// commands are answered by a function, so that the sandbox service's own
// logic (lifecycle, errors, records, exits) is tested without root. It
// keeps to the Runtime contract the conformance suite checks of real
// engines: error classes, idempotent Stop and Delete, Recover of what an
// earlier engine left.
type Memory struct {
	// Commands answers commands; nil: a command "exit" with one argument
	// N exits with code N, anything else prints its command line on stdout.
	Commands func(id sandbox.ID, req sandbox.ExecRequest) (sandbox.ExecResult, error)
	// Fail, if set, is asked before every lifecycle call (op is "create",
	// "start", "stop", "delete", or for a pool's sandboxes "prestart"
	// (with the zero ID, asked without the engine's lock: it may block)
	// and "adopt"); an error it returns is the call's.
	Fail func(op string, id sandbox.ID) error

	mu       sync.Mutex
	boxes    map[sandbox.ID]*memBox
	warm     map[string]*memBox // started ahead of time, by handle (Prestart)
	warmSeq  int
	left     []sandbox.ID // held by "an earlier engine": Recover lists them
	calls    []string
	cpu      time.Duration
	streamed []sandbox.ExecSpec
	pid      int
}

type memBox struct {
	spec    sandbox.Spec
	state   sandbox.State
	exited  chan struct{}
	started time.Time
	files   map[string]*memNode // by clean absolute path; made on first use
	// net is the network attached while it runs, and denied counts what
	// Deny refused on it.
	net    *network.Config
	denied uint64
	// handle is the handle it was started under in a pool ("": a cold
	// start).
	handle string
}

var (
	_ sandbox.Engine    = (*Memory)(nil)
	_ sandbox.Networker = (*Memory)(nil)
	_ sandbox.Pooler    = (*Memory)(nil)
)

// NewMemory returns an empty in-memory engine.
func NewMemory() *Memory {
	return &Memory{boxes: map[sandbox.ID]*memBox{}, warm: map[string]*memBox{}}
}

// Leave makes ids look left behind by a crashed server: Recover lists
// them and Delete removes them.
func (m *Memory) Leave(ids ...sandbox.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, id := range ids {
		m.left = append(m.left, id)
		m.boxes[id] = &memBox{state: sandbox.StateStopped}
	}
}

// Die makes the running sandbox id die on its own, as a crash inside it
// (or the OOM killer) would.
func (m *Memory) Die(id sandbox.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.boxes[id]; b != nil && b.state == sandbox.StateRunning {
		b.state, b.net = sandbox.StateStopped, nil
		close(b.exited)
	}
}

// Calls lists the lifecycle calls made, as "op namespace/name".
func (m *Memory) Calls() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.calls)
}

// Spec returns the spec sandbox id was created with.
func (m *Memory) Spec(id sandbox.ID) (sandbox.Spec, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return sandbox.Spec{}, false
	}
	return b.spec, true
}

// AddCPU adds to the CPU time every running sandbox reports.
func (m *Memory) AddCPU(d time.Duration) {
	m.mu.Lock()
	m.cpu += d
	m.mu.Unlock()
}

func (m *Memory) begin(op string, id sandbox.ID) error {
	m.calls = append(m.calls, op+" "+id.String())
	if m.Fail != nil {
		return m.Fail(op, id)
	}
	return nil
}

// Create implements sandbox.Runtime.
func (m *Memory) Create(ctx context.Context, id sandbox.ID, spec sandbox.Spec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin("create", id); err != nil {
		return err
	}
	if _, ok := m.boxes[id]; ok {
		return fmt.Errorf("sandbox %s already exists: %w", id, errdefs.ErrConflict)
	}
	m.boxes[id] = &memBox{spec: spec, state: sandbox.StateCreated}
	return nil
}

// Start implements sandbox.Runtime.
func (m *Memory) Start(ctx context.Context, id sandbox.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin("start", id); err != nil {
		return err
	}
	b, ok := m.boxes[id]
	switch {
	case !ok:
		return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	case b.state == sandbox.StateRunning:
		return fmt.Errorf("sandbox %s is already running: %w", id, errdefs.ErrConflict)
	}
	b.state, b.exited, b.started = sandbox.StateRunning, make(chan struct{}), time.Now()
	b.net, b.denied = b.spec.Network, 0
	return nil
}

// Stop implements sandbox.Runtime.
func (m *Memory) Stop(ctx context.Context, id sandbox.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin("stop", id); err != nil {
		return err
	}
	b, ok := m.boxes[id]
	if !ok {
		return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	}
	if b.state == sandbox.StateRunning {
		close(b.exited)
	}
	b.state, b.net = sandbox.StateStopped, nil
	return nil
}

// Delete implements sandbox.Runtime.
func (m *Memory) Delete(ctx context.Context, id sandbox.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.begin("delete", id); err != nil {
		return err
	}
	if b, ok := m.boxes[id]; ok && b.state == sandbox.StateRunning {
		close(b.exited)
	}
	delete(m.boxes, id)
	m.left = slices.DeleteFunc(m.left, func(x sandbox.ID) bool { return x == id })
	return nil
}

// Inspect implements sandbox.Runtime.
func (m *Memory) Inspect(ctx context.Context, id sandbox.ID) (sandbox.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	if !ok {
		return sandbox.Status{}, fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	}
	return sandbox.Status{ID: id, State: b.state, Started: b.started}, nil
}

// Recover implements sandbox.Runtime.
func (m *Memory) Recover(ctx context.Context) ([]sandbox.Status, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []sandbox.Status
	for _, id := range m.left {
		out = append(out, sandbox.Status{ID: id, State: sandbox.StateStopped})
	}
	return out, nil
}

// Exited implements sandbox.ExitWatcher.
func (m *Memory) Exited(ctx context.Context, id sandbox.ID) (<-chan struct{}, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	switch {
	case !ok:
		return nil, fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	case b.state != sandbox.StateRunning:
		return nil, fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	return b.exited, nil
}

func (m *Memory) running(id sandbox.ID) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b, ok := m.boxes[id]
	switch {
	case !ok:
		return fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
	case b.state != sandbox.StateRunning:
		return fmt.Errorf("sandbox %s is not running: %w", id, errdefs.ErrConflict)
	}
	return nil
}

// Exec implements sandbox.Executor.
func (m *Memory) Exec(ctx context.Context, id sandbox.ID, req sandbox.ExecRequest) (sandbox.ExecResult, error) {
	if err := m.running(id); err != nil {
		return sandbox.ExecResult{}, err
	}
	if m.Commands != nil {
		return m.Commands(id, req)
	}
	if req.Command == "exit" && len(req.Args) == 1 {
		var code int
		fmt.Sscan(req.Args[0], &code)
		return sandbox.ExecResult{ExitCode: code}, nil
	}
	line := strings.Join(append([]string{req.Command}, req.Args...), " ")
	return sandbox.ExecResult{Output: []sandbox.Line{{Stream: sandbox.Stdout, Text: line}}}, nil
}

// RunCode implements sandbox.REPL: the code is echoed on stdout.
func (m *Memory) RunCode(ctx context.Context, id sandbox.ID, lang sandbox.Language, code string, timeout time.Duration) (sandbox.ReplResult, error) {
	if err := m.running(id); err != nil {
		return sandbox.ReplResult{}, err
	}
	return sandbox.ReplResult{Status: sandbox.ReplSuccess, Output: []sandbox.Line{{Stream: sandbox.Stdout, Text: code}}}, nil
}

// Stats implements sandbox.StatsReader: the CPU time AddCPU gave, 1 MiB
// of memory, no disk, and for a sandbox with network the refusals Deny
// reported.
func (m *Memory) Stats(ctx context.Context, id sandbox.ID) (sandbox.Stats, error) {
	if err := m.running(id); err != nil {
		return sandbox.Stats{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	st := sandbox.Stats{CPUTime: m.cpu, MemoryBytes: 1 << 20, Sampled: time.Now()}
	if b := m.boxes[id]; b.net != nil {
		st.Network = &sandbox.NetworkStats{Denied: b.denied}
	}
	return st, nil
}

// SetNetwork implements sandbox.Networker: it records cfg as the running
// sandbox's network.
func (m *Memory) SetNetwork(ctx context.Context, id sandbox.ID, cfg *network.Config) error {
	if err := m.running(id); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.calls = append(m.calls, "network "+id.String())
	m.boxes[id].net = cfg
	return nil
}

// Network returns the network the running sandbox id has (nil: none):
// its spec's, or the last SetNetwork gave.
func (m *Memory) Network(id sandbox.ID) *network.Config {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.boxes[id]; b != nil {
		return b.net
	}
	return nil
}

// Deny makes the running sandbox id's network refuse d, as a link would:
// it is counted, and reported to the network's OnDeny. It reports false
// when the sandbox has no network.
func (m *Memory) Deny(id sandbox.ID, d network.Denial) bool {
	m.mu.Lock()
	b := m.boxes[id]
	if b == nil || b.net == nil {
		m.mu.Unlock()
		return false
	}
	b.denied++
	onDeny := b.net.OnDeny
	m.mu.Unlock()
	if onDeny != nil {
		onDeny(d)
	}
	return true
}

// Prestart implements sandbox.Pooler: the sandbox runs, under a handle
// "warm-N", until Adopt or Discard.
func (m *Memory) Prestart(ctx context.Context, spec sandbox.Spec) (string, error) {
	if spec.Network != nil {
		return "", fmt.Errorf("a pool's sandbox gets its network when adopted: %w", errdefs.ErrInvalid)
	}
	// Asked without the lock, so that it may block (a test holding
	// refills back) while every other call goes on.
	if m.Fail != nil {
		if err := m.Fail("prestart", sandbox.ID{}); err != nil {
			return "", err
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.warmSeq++
	h := fmt.Sprintf("warm-%d", m.warmSeq)
	m.calls = append(m.calls, "prestart "+h)
	m.warm[h] = &memBox{spec: spec, state: sandbox.StateRunning, exited: make(chan struct{}), started: time.Now(), handle: h}
	return h, nil
}

// Adopt implements sandbox.Pooler, with its error classes; the sandbox
// takes spec as its own.
func (m *Memory) Adopt(ctx context.Context, handle string, id sandbox.ID, spec sandbox.Spec) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.warm[handle]
	delete(m.warm, handle)
	if b == nil {
		return fmt.Errorf("pooled sandbox %q: %w", handle, errdefs.ErrNotFound)
	}
	// Deleted on any error, as the contract says.
	err := m.begin("adopt", id)
	if err == nil {
		if perr := sandbox.Poolable(b.spec, spec); perr != nil {
			err = fmt.Errorf("sandbox %s: %w: %w", id, perr, errdefs.ErrInvalid)
		} else if b.state != sandbox.StateRunning {
			err = fmt.Errorf("pooled sandbox %q is not running: %w", handle, errdefs.ErrUnavailable)
		} else if _, ok := m.boxes[id]; ok {
			err = fmt.Errorf("sandbox %s already exists: %w", id, errdefs.ErrConflict)
		}
	}
	if err != nil {
		if b.state == sandbox.StateRunning {
			close(b.exited)
		}
		return err
	}
	b.spec, b.net, b.denied = spec, spec.Network, 0
	m.boxes[id] = b
	return nil
}

// Discard implements sandbox.Pooler.
func (m *Memory) Discard(ctx context.Context, handle string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.warm[handle]
	if b == nil {
		return nil
	}
	m.calls = append(m.calls, "discard "+handle)
	delete(m.warm, handle)
	if b.state == sandbox.StateRunning {
		close(b.exited)
	}
	return nil
}

// Waiting returns the specs of the sandboxes started ahead of time and not
// adopted, by handle.
func (m *Memory) Waiting() map[string]sandbox.Spec {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := map[string]sandbox.Spec{}
	for h, b := range m.warm {
		out[h] = b.spec
	}
	return out
}

// Handle returns the handle sandbox id was started under in a pool, and
// false for one started cold (or unknown).
func (m *Memory) Handle(id sandbox.ID) (string, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	b := m.boxes[id]
	if b == nil || b.handle == "" {
		return "", false
	}
	return b.handle, true
}

// DieWaiting makes the waiting sandbox handle die, as a crash of its agent
// would.
func (m *Memory) DieWaiting(handle string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if b := m.warm[handle]; b != nil && b.state == sandbox.StateRunning {
		b.state = sandbox.StateStopped
		close(b.exited)
	}
}
