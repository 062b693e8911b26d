package app

import (
	"runtime"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// TestRunAdaptsProcs: with processor.procs adaptive, an idle processor drops to one P within
// a few seconds, still delivers, and gives Go's default back when it stops.
func TestRunAdaptsProcs(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skip("Go's default here is one P: there is nothing to adapt")
	}
	t.Setenv("GOMAXPROCS", "") // an operator's GOMAXPROCS would turn adaptation off
	h := newHarness(t, wechatsim.Config{})
	h.cfg.Processor.Procs = ProcsAdaptive
	r := h.start()
	deadline := time.Now().Add(15 * time.Second)
	for runtime.GOMAXPROCS(0) != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("GOMAXPROCS still %d after 15s idle", runtime.GOMAXPROCS(0))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if v, _ := series(t, r.reg, "wxnotify_procs"); v != 1 {
		t.Errorf("wxnotify_procs = %v, want 1", v)
	}
	h.produce("events", event("e-1", "order.paid", "u1"))
	h.outcomes(1, 20*time.Second)
	h.stop(r)
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Errorf("after Run: GOMAXPROCS = %d, want Go's default %d", got, def)
	}
}
