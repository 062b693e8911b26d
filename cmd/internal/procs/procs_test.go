package procs

import (
	"context"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

func TestPolicy(t *testing.T) {
	cfg := Config{}.withDefaults() // low 0.3 for 3 samples, high 0.6
	type step struct {
		cores    float64
		down, up bool
	}
	for _, tc := range []struct {
		name  string
		steps []step
	}{
		{"drops to one P after three quiet samples", []step{{0.1, false, false}, {0.2, false, false}, {0.3, true, false}}},
		{"a busy sample restarts the count", []step{{0.1, false, false}, {0.2, false, false}, {0.5, false, false}, {0.1, false, false}, {0.1, false, false}, {0.1, true, false}}},
		{"stays at one P up to high", []step{{0, false, false}, {0, false, false}, {0, true, false}, {0.45, false, false}, {0.6, false, false}}},
		{"goes back at the first sample over high", []step{{0, false, false}, {0, false, false}, {0, true, false}, {0.61, false, true}}},
		{"after going back, needs three quiet samples again", []step{{0, false, false}, {0, false, false}, {0, true, false}, {0.9, false, true}, {0.1, false, false}, {0.1, false, false}, {0.1, true, false}}},
		{"busy all along stays at the default", []step{{1.5, false, false}, {0.31, false, false}, {0.8, false, false}, {1.9, false, false}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := policy{cfg: cfg}
			for i, s := range tc.steps {
				down, up := p.observe(s.cores)
				if down != s.down || up != s.up {
					t.Fatalf("sample %d (%.2f cores): down=%v up=%v, want down=%v up=%v", i, s.cores, down, up, s.down, s.up)
				}
			}
		})
	}
}

// TestRunSetsGOMAXPROCS drives run with a fake CPU clock: quiet samples take the process to one
// P, a busy one gives it Go's default back, and ending run restores the default.
func TestRunSetsGOMAXPROCS(t *testing.T) {
	def := runtime.GOMAXPROCS(0)
	if def < 2 {
		t.Skip("Go's default here is one P: there is nothing to adapt")
	}
	// The fake clock: sample adds a second's use before it ticks. (run's first reading may
	// already see the first sample's use; that sample is a quiet one either way.)
	var cpu atomic.Int64
	clock := func() (time.Duration, bool) { return time.Duration(cpu.Load()), true }
	tick := make(chan time.Time)
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		run(ctx, Config{}, reg, logrus.New(), clock, tick)
	}()
	at := time.Now()
	sample := func(cores float64) {
		cpu.Add(int64(cores * float64(time.Second)))
		at = at.Add(time.Second)
		tick <- at
	}
	// waitProcs polls: the sample is applied after the tick is taken.
	waitProcs := func(want int) {
		t.Helper()
		for i := 0; i < 500; i++ {
			if runtime.GOMAXPROCS(0) == want && gauge(t, reg, "wxnotify_procs") == float64(want) {
				return
			}
			time.Sleep(2 * time.Millisecond)
		}
		t.Fatalf("GOMAXPROCS = %d, want %d", runtime.GOMAXPROCS(0), want)
	}
	sample(0.1)
	sample(0.1)
	sample(0.1)
	waitProcs(1)
	sample(0.5)
	sample(0.9)
	waitProcs(def)
	sample(0.05)
	sample(0.05)
	sample(0.05)
	waitProcs(1)
	if got := gauge(t, reg, "wxnotify_procs_changes_total"); got != 3 {
		t.Fatalf("wxnotify_procs_changes_total = %v, want 3", got)
	}
	cancel()
	<-done
	if got := runtime.GOMAXPROCS(0); got != def {
		t.Fatalf("after run: GOMAXPROCS = %d, want the default %d", got, def)
	}
}

// gauge reads one unlabelled gauge or counter from reg (-1 when it is not there).
func gauge(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) != 1 {
			continue
		}
		m := mf.GetMetric()[0]
		if g := m.GetGauge(); g != nil {
			return g.GetValue()
		}
		return m.GetCounter().GetValue()
	}
	return -1
}
