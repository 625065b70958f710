package network

import (
	"flag"
	"os"
	"runtime"
	"strconv"
	"testing"

	"github.com/msb-dev/msb/sandbox/network/networktest"
)

var stressConns = flag.Int("stress.conns", 0, "TestStressConnect: connections per round (0 skips)")

// TestStressConnect opens many short connections through a link, each
// under a client timeout, to catch stalls.
func TestStressConnect(t *testing.T) {
	if *stressConns == 0 {
		t.Skip("pass -stress.conns")
	}
	w := networktest.New(t)
	startHelperServer(t, w, addr(w.Plain, 8080))
	sb := newVariant(t, w, *benchAB, MustParsePolicy(Deny, "allow "+w.Plain.String())).sb
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("stats: %+v", sb.link.Stats())
			buf := make([]byte, 4<<20)
			os.WriteFile("/tmp/stress-goroutines.txt", buf[:runtime.Stack(buf, true)], 0o644)
		}
	})
	for i := 0; i < 10; i++ {
		runClient(t, sb.ns, "", "download", addr(w.Plain, 8080), strconv.Itoa(256<<20))
		runClient(t, sb.ns, "", "latency", addr(w.Plain, 8080), strconv.Itoa(*stressConns))
	}
}
