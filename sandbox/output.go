package sandbox

import (
	"context"
	"sync"
)

// DefaultOutputMemory is the default of ServiceOptions.OutputMemory.
const DefaultOutputMemory = 512 << 20

// OutputBudget bounds the memory the server holds for the output of calls
// (a command's or evaluation's output, a file read) between the sandbox
// and the response that carries it: each byte is counted twice, once as
// held and once as encoded. When it runs out, every call that needs more
// is cut (commands, code) or refused (file reads), and says so, but the
// oldest call holding some: it is given what it needs beyond the budget
// (at most one call's output, MaxOutput twice), so that one call always
// completes whole. The server never grows with the number of calls that
// print a lot at once, and nothing waits on the budget.
type OutputBudget struct {
	mu      sync.Mutex
	free    int64 // below 0 while the oldest holder is over the budget
	total   int64
	seq     uint64
	holders map[*outputHold]struct{}
}

// NewOutputBudget returns a budget of total bytes.
func NewOutputBudget(total int64) *OutputBudget {
	return &OutputBudget{free: total, total: total, holders: map[*outputHold]struct{}{}}
}

// Total is the budget's size in bytes.
func (b *OutputBudget) Total() int64 { return b.total }

// Free is what the budget can still give.
func (b *OutputBudget) Free() int64 {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.free
}

// take gives n bytes to h if the budget has them, or h is the oldest
// holder.
func (b *OutputBudget) take(h *outputHold, n int64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.holders[h]; !ok {
		b.seq++
		h.seq = b.seq
		b.holders[h] = struct{}{}
	}
	if n > b.free && !b.oldest(h) {
		return false
	}
	b.free -= n
	return true
}

// oldest reports whether h is the oldest of the holders (b.mu held).
func (b *OutputBudget) oldest(h *outputHold) bool {
	for o := range b.holders {
		if o.seq < h.seq {
			return false
		}
	}
	return true
}

// give takes h's n bytes back, and forgets h.
func (b *OutputBudget) give(h *outputHold, n int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.free += n
	delete(b.holders, h)
}

// outputHold is what one request holds of a budget until its response
// is written.
type outputHold struct {
	mu     sync.Mutex
	budget *OutputBudget
	held   int64
	seq    uint64 // its age among the budget's holders (budget.mu)
}

type holdKey struct{}

// HoldOutput returns ctx carrying a hold on the output budget of the
// calls made with it, and the function that gives back what the hold
// took: a front-end calls it once the response is written, so that what
// a response holds is counted until it is sent.
func HoldOutput(ctx context.Context) (context.Context, func()) {
	h := &outputHold{}
	return context.WithValue(ctx, holdKey{}, h), h.release
}

func (h *outputHold) release() {
	h.mu.Lock()
	b, n := h.budget, h.held
	h.held = 0
	h.mu.Unlock()
	if b != nil {
		b.give(h, n)
	}
}

// holdOutput makes ctx's hold draw on b: the front-end's hold if it made
// one (released when it says), else one of the call's own, released by
// the returned function.
func holdOutput(ctx context.Context, b *OutputBudget) (context.Context, func()) {
	if b == nil {
		return ctx, func() {}
	}
	if h, ok := ctx.Value(holdKey{}).(*outputHold); ok {
		h.mu.Lock()
		if h.budget == nil {
			h.budget = b
		}
		h.mu.Unlock()
		return ctx, func() {}
	}
	h := &outputHold{budget: b}
	return context.WithValue(ctx, holdKey{}, h), h.release
}

// heldByFrontEnd reports whether ctx carries a front-end's hold, whose
// response holds what the call returns.
func heldByFrontEnd(ctx context.Context) bool {
	_, ok := ctx.Value(holdKey{}).(*outputHold)
	return ok
}

// TakeOutput takes n bytes of the output budget for the call of ctx. It
// reports false when the budget cannot give them (and the call is not
// the oldest holding some): the engine then cuts the call's output.
// Without a hold on a budget it always succeeds.
func TakeOutput(ctx context.Context, n int64) bool {
	h, ok := ctx.Value(holdKey{}).(*outputHold)
	if !ok {
		return true
	}
	h.mu.Lock()
	b := h.budget
	h.mu.Unlock()
	if b == nil {
		return true
	}
	if !b.take(h, n) {
		return false
	}
	h.mu.Lock()
	h.held += n
	h.mu.Unlock()
	return true
}
