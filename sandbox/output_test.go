package sandbox

import (
	"context"
	"testing"
)

// The budget gives what it has; past it only the oldest holder gets more
// (so one call always completes), and a release gives everything back.
func TestOutputBudget(t *testing.T) {
	b := NewOutputBudget(100)
	old, releaseOld := holdOutput(context.Background(), b)
	young, releaseYoung := holdOutput(context.Background(), b)
	if !TakeOutput(old, 60) || !TakeOutput(young, 40) {
		t.Fatal("the budget refused what it had")
	}
	if TakeOutput(young, 1) {
		t.Fatal("a young holder got more than the budget")
	}
	if !TakeOutput(old, 50) {
		t.Fatal("the oldest holder was refused")
	}
	if got := b.Free(); got != -50 {
		t.Fatalf("free = %d, want -50 (the oldest over the budget)", got)
	}
	releaseOld()
	if got := b.Free(); got != 60 {
		t.Fatalf("free after the oldest's release = %d, want 60", got)
	}
	// The young one is the oldest now.
	if !TakeOutput(young, 100) {
		t.Fatal("the holder left was refused")
	}
	releaseYoung()
	if got := b.Free(); got != 100 {
		t.Fatalf("free after every release = %d, want 100", got)
	}
	// A front-end's hold is released by the front-end, not by the call.
	ctx, release := HoldOutput(context.Background())
	call, done := holdOutput(ctx, b)
	TakeOutput(call, 30)
	done()
	if got := b.Free(); got != 70 {
		t.Fatalf("free after the call returned = %d, want 70 (the response still holds it)", got)
	}
	release()
	if got := b.Free(); got != 100 {
		t.Fatalf("free after the response = %d, want 100", got)
	}
	// Without a hold, nothing is counted.
	if !TakeOutput(context.Background(), 1<<40) {
		t.Fatal("a call without a hold was refused")
	}
}
