// Package procs adapts the number of Ps the Go scheduler runs (GOMAXPROCS) to the CPU the
// process uses: one P while it uses little, Go's default (the CPU limit of its container, or of
// the machine) as soon as it needs more.
//
// Why: at a steady few thousand events a second the processor is idle most of the time and
// wakes hundreds of times a second, for each WeChat answer, fetch and produce acknowledgement.
// With two or more Ps, a wake-up that readies a goroutine while another P is idle also wakes a
// second OS thread to look for work, which mostly finds none and parks again; on a VM a context switch costs ~13 µs of CPU. With
// one P those hand-offs do not happen. Measured with cmd/wxbench at 1,000 events/s
// (cmd/wxbench/README.md), one P used 13–24% less CPU per event at the same latency; under a backlog the
// process needs the cores, and gets them back within one sampling interval.
//
// The package owns GOMAXPROCS while Run runs, and gives it back (runtime.SetDefaultGOMAXPROCS)
// when Run returns. It does not run when GOMAXPROCS is set in the environment: that is the
// operator's choice.
package procs

import (
	"context"
	"runtime"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
)

// Config tunes the adaptation. The zero value means the defaults.
type Config struct {
	// Interval between CPU samples; default 1s.
	Interval time.Duration
	// Low: CPU use, in cores, at or under which the process drops to one P once it has stayed
	// there for Dwell samples; default 0.3.
	Low float64
	// High: CPU use, in cores, over which a process at one P goes back to Go's default at the
	// next sample; default 0.6 (the one P is then busy more than half the time, and queueing
	// would start to add latency).
	High float64
	// Dwell: consecutive samples at or under Low before dropping to one P; default 3.
	Dwell int
}

func (c Config) withDefaults() Config {
	if c.Interval <= 0 {
		c.Interval = time.Second
	}
	if c.Low <= 0 {
		c.Low = 0.3
	}
	if c.High <= 0 {
		c.High = 0.6
	}
	if c.Dwell <= 0 {
		c.Dwell = 3
	}
	return c
}

// policy decides the Ps from CPU samples. It is the whole decision, free of the runtime.
type policy struct {
	cfg   Config
	one   bool // running at one P
	quiet int  // consecutive samples at or under cfg.Low
}

// observe takes the cores used over the last interval and reports whether to switch: to one P
// (down) or back to Go's default (up).
func (p *policy) observe(cores float64) (down, up bool) {
	if p.one {
		if cores > p.cfg.High {
			p.one, p.quiet = false, 0
			return false, true
		}
		return false, false
	}
	if cores > p.cfg.Low {
		p.quiet = 0
		return false, false
	}
	p.quiet++
	if p.quiet < p.cfg.Dwell {
		return false, false
	}
	p.one, p.quiet = true, 0
	return true, false
}

// Run adapts GOMAXPROCS until ctx ends, then restores Go's default. It returns at once, changing
// nothing, when Go's default is already one P or this platform has no process CPU clock.
// reg receives wxnotify_procs (the Ps in use) and wxnotify_procs_changes_total; nil: not
// registered.
func Run(ctx context.Context, cfg Config, reg prometheus.Registerer, log logrus.FieldLogger) {
	run(ctx, cfg, reg, log, cpuTime, nil)
}

// run is Run with the CPU clock and the ticks replaceable by tests (tick nil: a time.Ticker of
// cfg.Interval).
func run(ctx context.Context, cfg Config, reg prometheus.Registerer, log logrus.FieldLogger, clock func() (time.Duration, bool), tick <-chan time.Time) {
	cfg = cfg.withDefaults()
	start, ok := clock()
	if !ok || runtime.GOMAXPROCS(0) <= 1 {
		return
	}
	m := newMetrics(reg)
	defer m.unregister(reg)
	m.procs.Set(float64(runtime.GOMAXPROCS(0)))
	if tick == nil {
		t := time.NewTicker(cfg.Interval)
		defer t.Stop()
		tick = t.C
	}
	pol := policy{cfg: cfg}
	defer func() {
		if pol.one {
			runtime.SetDefaultGOMAXPROCS()
		}
	}()
	lastCPU, lastAt := start, time.Now()
	for {
		var now time.Time
		select {
		case <-ctx.Done():
			return
		case now = <-tick:
		}
		used, _ := clock()
		wall := now.Sub(lastAt)
		if wall <= 0 {
			continue
		}
		cores := float64(used-lastCPU) / float64(wall)
		lastCPU, lastAt = used, now
		down, up := pol.observe(cores)
		switch {
		case down:
			runtime.GOMAXPROCS(1)
		case up:
			// Go's default again, and its updates when the container's CPU limit changes.
			runtime.SetDefaultGOMAXPROCS()
		default:
			continue
		}
		n := runtime.GOMAXPROCS(0)
		m.procs.Set(float64(n))
		m.changes.Inc()
		log.WithFields(logrus.Fields{"procs": n, "cpu_cores": cores}).Debug("procs changed")
	}
}

type metrics struct {
	procs   prometheus.Gauge
	changes prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		procs: prometheus.NewGauge(prometheus.GaugeOpts{Name: "wxnotify_procs",
			Help: "Ps the Go scheduler runs (GOMAXPROCS): one at low load, Go's default when busy (processor.procs: adaptive)."}),
		changes: prometheus.NewCounter(prometheus.CounterOpts{Name: "wxnotify_procs_changes_total",
			Help: "Changes of GOMAXPROCS made by processor.procs: adaptive."}),
	}
	if reg != nil {
		reg.MustRegister(m.procs, m.changes)
	}
	return m
}

func (m *metrics) unregister(reg prometheus.Registerer) {
	if reg != nil {
		reg.Unregister(m.procs)
		reg.Unregister(m.changes)
	}
}
