package auth_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth"
)

// Eight goroutines authenticate (the victim key, and a key nobody revokes)
// while another registry on the same database revokes the victim. Once
// Revoke has returned, no call that starts afterwards may succeed with the
// victim, and the other key must keep working. Run with -race.
func TestConcurrentAuthenticateAndRevoke(t *testing.T) {
	t.Parallel()
	h := newHome(t, nil)
	ctx := context.Background()
	_, cli := h.openRegistry(t)
	keep, _ := h.issue(t, auth.IssueOptions{Label: "keep"})

	const workers = 8
	for round := 0; round < 5; round++ {
		victim, vk := h.issue(t, auth.IssueOptions{Label: "victim"})
		var (
			revoked    atomic.Bool
			warmed     atomic.Int64
			afterCalls atomic.Int64
			failed     atomic.Bool
			wg         sync.WaitGroup
		)
		stop := make(chan struct{})
		for g := 0; g < workers; g++ {
			wg.Add(1)
			go func(g int) {
				defer wg.Done()
				isWarm := false
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					if i%4 == 3 {
						if _, err := h.authn.Authenticate(ctx, keep); err != nil {
							t.Errorf("round %d goroutine %d: unrevoked key refused: %v", round, g, err)
							failed.Store(true)
							return
						}
						continue
					}
					startedAfterRevoke := revoked.Load()
					_, err := h.authn.Authenticate(ctx, victim)
					switch {
					case startedAfterRevoke && err == nil:
						t.Errorf("round %d goroutine %d: a call started after Revoke returned succeeded", round, g)
						failed.Store(true)
						return
					case startedAfterRevoke && err != auth.ErrRevoked: //nolint:errorlint
						t.Errorf("round %d goroutine %d: after revoke got %v, want ErrRevoked", round, g, err)
						failed.Store(true)
						return
					case !startedAfterRevoke && err != nil && err != auth.ErrRevoked: //nolint:errorlint
						t.Errorf("round %d goroutine %d: %v", round, g, err)
						failed.Store(true)
						return
					}
					if startedAfterRevoke {
						afterCalls.Add(1)
					} else if err == nil && !isWarm {
						isWarm = true
						warmed.Add(1)
					}
				}
			}(g)
		}
		waitFor := func(what string, cond func() bool) {
			deadline := time.Now().Add(20 * time.Second)
			for !cond() && !failed.Load() {
				if time.Now().After(deadline) {
					close(stop)
					wg.Wait()
					t.Fatalf("round %d: timed out waiting for %s", round, what)
				}
				time.Sleep(time.Millisecond)
			}
		}
		waitFor("every goroutine to authenticate", func() bool { return warmed.Load() == workers })
		if _, err := cli.Revoke(ctx, vk.ID); err != nil {
			close(stop)
			wg.Wait()
			t.Fatalf("Revoke: %v", err)
		}
		revoked.Store(true)
		waitFor("calls after the revocation", func() bool { return afterCalls.Load() >= workers*50 })
		close(stop)
		wg.Wait()
		if failed.Load() {
			return
		}
	}
}
