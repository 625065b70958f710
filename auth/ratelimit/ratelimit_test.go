package ratelimit_test

import (
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/msb-dev/msb/auth/ratelimit"
)

func TestParse(t *testing.T) {
	for _, c := range []struct {
		in   string
		want ratelimit.Rate
	}{
		{"600/m", ratelimit.Rate{N: 600, Per: time.Minute}},
		{"10/s", ratelimit.Rate{N: 10, Per: time.Second}},
		{"1000/h", ratelimit.Rate{N: 1000, Per: time.Hour}},
		{"5/d", ratelimit.Rate{N: 5, Per: 24 * time.Hour}},
		{"1/s", ratelimit.Rate{N: 1, Per: time.Second}},
		{"1000000000/s", ratelimit.Rate{N: 1_000_000_000, Per: time.Second}},
		{"007/m", ratelimit.Rate{N: 7, Per: time.Minute}},
	} {
		got, err := ratelimit.Parse(c.in)
		if err != nil || got != c.want {
			t.Errorf("Parse(%q) = %+v, %v; want %+v", c.in, got, err, c.want)
		}
		if again, err := ratelimit.Parse(got.String()); err != nil || again != got {
			t.Errorf("Parse(String(%+v)) = %+v, %v", got, again, err)
		}
	}
}

func TestParseRejectsJunk(t *testing.T) {
	for _, in := range []string{
		"", "/", "600", "600/", "/m", "0/m", "-1/m", "+5/m", "1.5/m", "600/min", "600/M", "600 /m", " 600/m",
		"600/m ", "600/mo", "1000000001/s", "99999999999/s", "600/m/s", "600//m", "x/m", "600/ms", "0x10/s", "1e3/s",
		"١٢/m", strings.Repeat("9", 100) + "/s",
	} {
		r, err := ratelimit.Parse(in)
		if err == nil {
			t.Errorf("Parse(%q) = %+v, want an error", in, r)
			continue
		}
		if !errors.Is(err, ratelimit.ErrInvalid) {
			t.Errorf("Parse(%q) error %v does not wrap ErrInvalid", in, err)
		}
		if !strings.Contains(err.Error(), "600/m") {
			t.Errorf("Parse(%q) error %q does not show an example", in, err)
		}
		if len(err.Error()) > 300 {
			t.Errorf("Parse(%q) error is %d bytes: the input must be cut", in, len(err.Error()))
		}
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"600/m", "10/s", "1000/h", "0/m", "1/d", "", "/", "9999999999/s", "1/", "a/b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ratelimit.Parse(s)
		if err != nil {
			if !errors.Is(err, ratelimit.ErrInvalid) || r != (ratelimit.Rate{}) {
				t.Fatalf("Parse(%q) = %+v, %v", s, r, err)
			}
			return
		}
		if r.N < 1 || r.N > ratelimit.MaxN || r.Per < time.Second {
			t.Fatalf("Parse(%q) = %+v: out of range", s, r)
		}
		if again, err := ratelimit.Parse(r.String()); err != nil || again != r {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

// clock is a manual clock for the limiter.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestLimiterBurstThenRefill(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l := ratelimit.New(clk.Now)
	r := ratelimit.Rate{N: 3, Per: time.Minute}
	for i := 0; i < 3; i++ {
		st := l.Take("k", r)
		if !st.Allowed || st.Limit != 3 || st.Remaining != int64(2-i) {
			t.Fatalf("call %d: %+v", i, st)
		}
	}
	st := l.Take("k", r)
	if st.Allowed || st.Remaining != 0 {
		t.Fatalf("4th call within the minute allowed: %+v", st)
	}
	if st.RetryAfter != 20*time.Second {
		t.Fatalf("RetryAfter = %v, want 20s (one call every 20s)", st.RetryAfter)
	}
	if want := clk.Now().Add(time.Minute); !st.Reset.Equal(want) {
		t.Fatalf("Reset = %v, want %v (empty bucket: a full period)", st.Reset, want)
	}
	// Other keys have their own bucket.
	if st := l.Take("other", r); !st.Allowed {
		t.Fatalf("another key refused: %+v", st)
	}
	clk.Add(19 * time.Second)
	if st := l.Take("k", r); st.Allowed {
		t.Fatalf("allowed before a call's worth refilled: %+v", st)
	}
	clk.Add(time.Second)
	if st := l.Take("k", r); !st.Allowed || st.Remaining != 0 {
		t.Fatalf("refused after 20s: %+v", st)
	}
	// Long idle: back to a full bucket, never more.
	clk.Add(time.Hour)
	if st := l.Peek("k", r); st.Remaining != 3 || !st.Allowed || !st.Reset.Equal(clk.Now()) {
		t.Fatalf("after an hour: %+v, want 3 left and reset now", st)
	}
	// Peek takes nothing.
	if st := l.Peek("k", r); st.Remaining != 3 {
		t.Fatalf("Peek took a call: %+v", st)
	}
}

func TestLimiterRateChange(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l := ratelimit.New(clk.Now)
	big := ratelimit.Rate{N: 100, Per: time.Second}
	for i := 0; i < 10; i++ {
		l.Take("k", big)
	}
	small := ratelimit.Rate{N: 2, Per: time.Minute}
	// A lowered rate caps what is left at its own size at once.
	if st := l.Take("k", small); !st.Allowed || st.Remaining != 1 || st.Limit != 2 {
		t.Fatalf("after lowering: %+v", st)
	}
	l.Take("k", small)
	if st := l.Take("k", small); st.Allowed {
		t.Fatalf("lowered rate not enforced: %+v", st)
	}
}

// A raised rate takes effect with a full bucket of its new size, however
// little time passed: an operator who raised a drained key's rate expects
// its next call to go through.
func TestLimiterRateRaised(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l := ratelimit.New(clk.Now)
	slow := ratelimit.Rate{N: 1, Per: time.Hour}
	if !l.Take("k", slow).Allowed || l.Take("k", slow).Allowed {
		t.Fatal("a 1/h bucket did not drain after one call")
	}
	fast := ratelimit.Rate{N: 10, Per: time.Minute}
	st := l.Take("k", fast)
	if !st.Allowed || st.Remaining != 9 || st.Limit != 10 {
		t.Fatalf("first call after the raise: %+v", st)
	}
	// Lowering it again does not refill it.
	for range 9 {
		l.Take("k", fast)
	}
	if st := l.Take("k", ratelimit.Rate{N: 5, Per: time.Minute}); st.Allowed {
		t.Fatalf("a lowered rate refilled a drained bucket: %+v", st)
	}
}

func TestLimiterConcurrent(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l := ratelimit.New(clk.Now)
	r := ratelimit.Rate{N: 500, Per: time.Hour}
	var wg sync.WaitGroup
	var mu sync.Mutex
	allowed := 0
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				if l.Take("k", r).Allowed {
					mu.Lock()
					allowed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if allowed != 500 {
		t.Fatalf("%d of 1600 concurrent calls allowed, want exactly 500", allowed)
	}
}

func TestFasterAndDescribe(t *testing.T) {
	m600 := ratelimit.Rate{N: 600, Per: time.Minute}
	s10 := ratelimit.Rate{N: 10, Per: time.Second}
	s11 := ratelimit.Rate{N: 11, Per: time.Second}
	if m600.Faster(s10) || s10.Faster(m600) {
		t.Fatal("600/m and 10/s are the same rate")
	}
	if !s11.Faster(m600) || m600.Faster(s11) {
		t.Fatal("11/s is faster than 600/m")
	}
	if got := m600.Describe(); got != "600 calls per minute" {
		t.Fatalf("Describe = %q", got)
	}
	if got := (ratelimit.Rate{N: 1, Per: time.Hour}).Describe(); got != "1 call per hour" {
		t.Fatalf("Describe = %q", got)
	}
}
