package portal

import (
	"context"
	"errors"
	"testing"
	"time"
)

// A process whose exit is queued refuses input at once: the consumer may
// deliver the exit as soon as it is queued (TestStreamStdinAndEOF saw a
// late write accepted once in a while, when the call's done was closed
// only after).
func TestStdinAfterExitQueued(t *testing.T) {
	f := newFlow(1<<16, dataStdout)
	p := &Process{cl: &call{flow: f, done: make(chan struct{})}, stop: make(chan struct{})}
	if reason := f.event(event{Done: true}, p.cl.done); reason != "" {
		t.Fatal(reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	if err := p.Stdin(ctx, []byte("late")); !errors.Is(err, ErrEnded) {
		t.Errorf("input after the exit was queued: %v, want ErrEnded", err)
	}
	if err := p.Stdin(ctx, nil); !errors.Is(err, ErrEnded) {
		t.Errorf("the end of input after the exit was queued: %v, want ErrEnded", err)
	}
}
