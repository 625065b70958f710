package linux

import (
	"testing"
	"time"
)

// The quiet moment's rules, on states set by hand.
func TestQuietFor(t *testing.T) {
	now := time.Now()
	ago := func(d time.Duration) time.Time { return now.Add(-d) }
	for _, tc := range []struct {
		name string
		c    *calls
		wait bool
	}{
		{"nothing ever", &calls{}, false},
		{"a command in flight", &calls{commands: 1, commandBegan: ago(time.Millisecond)}, true},
		{"a command in flight for longer than the patience", &calls{commands: 1, commandBegan: ago(2 * backgroundPatience)}, false},
		{"a command just ended", &calls{lastCommand: ago(time.Millisecond)}, true},
		{"a command ended a while ago", &calls{lastCommand: ago(time.Second)}, false},
		{"a lone start in flight", &calls{starts: 1, lastStart: ago(time.Second)}, true},
		{"a start in flight in a burst", &calls{starts: 1, burst: true, lastStart: ago(time.Millisecond)}, false},
		{"a burst, but a command in flight", &calls{starts: 1, burst: true, commands: 1, commandBegan: ago(time.Millisecond)}, true},
		{"a start just ended", &calls{lastStart: ago(time.Millisecond)}, true},
		{"a start ended a while ago", &calls{lastStart: ago(time.Second)}, false},
	} {
		tc.c.started = make(chan struct{})
		if d, _ := tc.c.quietFor(); (d > 0) != tc.wait {
			t.Errorf("%s: waits %v, want waiting %v", tc.name, d, tc.wait)
		}
	}
}

// A start right after another, or beside one, is a burst, and wakes every
// waiter; a start after a quiet moment is not.
func TestStartBurst(t *testing.T) {
	c := newCalls()
	_, a := c.quietFor()
	_, b := c.quietFor()
	done := c.start()
	for _, ch := range []<-chan struct{}{a, b} {
		select {
		case <-ch:
		default:
			t.Error("a waiter was not woken by a start")
		}
	}
	if c.burst {
		t.Error("the first start ever is a burst")
	}
	c.start()() // beside the first
	if !c.burst {
		t.Error("a start beside another is not a burst")
	}
	done()
	c.start()() // right after
	if !c.burst {
		t.Error("a start right after another is not a burst")
	}
	c.lastStart = time.Now().Add(-time.Second)
	c.start()()
	if c.burst {
		t.Error("a start after a quiet second is a burst")
	}
}

// waitQuiet gives up waiting after backgroundPatience (a lone start left in
// flight would otherwise hold the work up for ever), returns false at once
// when quit is closed, and goes once a second start makes a burst.
func TestWaitQuiet(t *testing.T) {
	c := newCalls()
	c.start() // never ends
	t0 := time.Now()
	if !c.waitQuiet(nil) {
		t.Fatal("waitQuiet(nil) returned false")
	}
	if took := time.Since(t0); took < backgroundPatience || took > backgroundPatience+500*time.Millisecond {
		t.Errorf("a lone start in flight held the work for %v, want backgroundPatience (%v)", took, backgroundPatience)
	}

	quit := make(chan struct{})
	close(quit)
	t0 = time.Now()
	if c.waitQuiet(quit) {
		t.Error("waitQuiet(quit closed) returned true")
	}
	if took := time.Since(t0); took > backgroundPatience/2 {
		t.Errorf("waitQuiet with quit closed took %v", took)
	}

	c = newCalls()
	c.start()
	go func() {
		time.Sleep(100 * time.Millisecond)
		c.start() // a burst
	}()
	t0 = time.Now()
	if !c.waitQuiet(nil) {
		t.Error("waitQuiet(nil) returned false after a burst")
	}
	if took := time.Since(t0); took > backgroundPatience/2 {
		t.Errorf("a burst during the wait let the work go after %v", took)
	}
}
