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

// TestFinalFrameEndsCall checks that a final frame ends its call (done
// closed, the frame queued) whatever else it carries: a process's first
// Started, or a second StdinError, which the flow otherwise keeps or
// drops.
func TestFinalFrameEndsCall(t *testing.T) {
	for name, frames := range map[string][]event{
		"started":              {{Started: true, Done: true}},
		"stdin error":          {{StdinError: "closed", Done: true}},
		"a second stdin error": {{StdinError: "closed"}, {StdinError: "closed", Done: true}},
	} {
		f := newFlow(1<<16, dataStdout)
		done := make(chan struct{})
		for _, ev := range frames {
			if reason := f.event(ev, done); reason != "" {
				t.Fatalf("%s: %s", name, reason)
			}
		}
		select {
		case <-done:
		default:
			t.Errorf("%s: the call is not over after its final frame", name)
		}
	}
}
