package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"math"
	mrand "math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// soakOptions are the soak mode's flags.
type soakOptions struct {
	duration time.Duration // 0 = no soak
	rate     float64
	every    span
	sample   time.Duration
	warmup   time.Duration
	flat     float64 // allowed drift of the level after warm-up (judgeFlat)
}

func (o *soakOptions) flags(fs *flag.FlagSet) {
	o.rate, o.every, o.sample, o.warmup, o.flat = 1000, span{3 * time.Second, 8 * time.Second}, 10*time.Second, 2*time.Minute, 0.10
	fs.DurationVar(&o.duration, "soak", 0, "instead of the scenarios, produce steadily at -rate for this long with a fault every -soak-every, sampling the processor's memory and goroutines")
	fs.Float64Var(&o.rate, "rate", o.rate, "soak: events per second")
	fs.Var(&o.every, "soak-every", "soak: wait between faults (default 3s-8s)")
	fs.DurationVar(&o.sample, "sample", o.sample, "soak: how often to sample memory and goroutines")
	fs.DurationVar(&o.warmup, "warmup", o.warmup, "soak: samples before this are warm-up, not judged")
	fs.Float64Var(&o.flat, "flat", o.flat, "soak: memory and goroutines may drift this share after warm-up (median of the first third of the samples against the last third)")
}

// soakSample is one look at the processor.
type soakSample struct {
	at         time.Duration
	goroutines float64 // go_goroutines
	rss        float64 // process_resident_memory_bytes
	vmRSS      int64   // /proc/PID/status VmRSS
	outcomes   int
	produced   int
}

// soakTally counts outcomes per event; compact, for millions of events.
type soakTally struct {
	mu              sync.Mutex
	count           []uint8
	outcomes        int
	failedTransient int
	failedOther     int
	foreign         int
	secrets         int
	deadLetters     int
	changed         chan struct{} // closed and replaced when an event gets its first outcome
}

// waitOutcomes waits until want events have an outcome.
func (t *soakTally) waitOutcomes(ctx context.Context, want int) error {
	for {
		t.mu.Lock()
		have, ch := t.outcomes, t.changed
		t.mu.Unlock()
		if have >= want {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d of %d events have an outcome: %w", have, want, ctx.Err())
		}
	}
}

func (t *soakTally) record(r *kgo.Record, _ time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.secrets += sentinels(r)
	if r.Topic == deadLetters {
		t.deadLetters++
		return
	}
	var o outcomeRecord
	i := -1
	if json.Unmarshal(r.Value, &o) == nil {
		i = eventgen.Index(o.EventID)
	}
	if i < 0 || i >= len(t.count) {
		t.foreign++
		return
	}
	t.count[i] = min(t.count[i]+1, 255)
	if t.count[i] == 1 {
		t.outcomes++
		close(t.changed)
		t.changed = make(chan struct{})
	}
	switch {
	case o.Status == "failed" && o.Class == "transient":
		t.failedTransient++
	case o.Status == "failed":
		t.failedOther++
	}
}

// soak produces at o.rate for o.duration into one processor member, injects a fault every
// o.every, samples the member every o.sample, then waits for the outcomes and reports whether
// memory and goroutines stayed flat after warm-up (judgeFlat, within o.flat).
func soak(ctx context.Context, p params, o soakOptions, seed uint64, dir string, stdout, stderr io.Writer) int {
	if p.Latency == 0 {
		p.Latency = 50 * time.Millisecond
	}
	n := int(o.rate * o.duration.Seconds())
	fmt.Fprintf(stdout, "soak: %d events at %.0f/s for %s, %s per call, a fault every %s, samples every %s, warm-up %s\n",
		n, o.rate, o.duration, p.Latency, o.every, o.sample, o.warmup)
	w, err := newWorld(dir, p, true)
	if err != nil {
		fmt.Fprintf(stderr, "wxchaos: soak: %v\n", err)
		return 1
	}
	grace := p.DrainTimeout + 10*time.Second
	defer w.close(grace)
	tally := &soakTally{count: make([]uint8, n), changed: make(chan struct{})}
	rd, err := startReader(w.broker, tally.record)
	if err != nil {
		fmt.Fprintf(stderr, "wxchaos: soak: %v\n", err)
		return 1
	}
	defer rd.close()
	var faults faultLog
	drops := newDropper(p.DropRate, seed, func(string) {})
	w.broker.setHooks(drops.install)
	m, err := w.fleet.start(0)
	if err != nil {
		fmt.Fprintf(stderr, "wxchaos: soak: %v\n", err)
		return 1
	}
	prod, err := newProducer(w.broker)
	if err != nil {
		fmt.Fprintf(stderr, "wxchaos: soak: %v\n", err)
		return 1
	}
	defer prod.Close()

	t0 := time.Now()
	runCtx, stopRun := context.WithTimeout(ctx, o.duration)
	defer stopRun()
	var produced, produceErrs atomic.Int64
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		produceSteady(runCtx, prod, eventgen.New(p.Users, 0, seed), n, o.rate, &produced, &produceErrs)
	}()
	go func() {
		defer wg.Done()
		soakFaults(runCtx, w, drops, o.every, mrand.New(mrand.NewPCG(seed, 0x50a4)), &faults)
	}()

	var samples []soakSample
	tick := time.NewTicker(o.sample)
	defer tick.Stop()
	fmt.Fprintf(stdout, "%8s %11s %13s %11s %10s %10s\n", "at", "goroutines", "rss (metrics)", "VmRSS", "produced", "outcomes")
sampling:
	for {
		select {
		case <-runCtx.Done():
			break sampling
		case <-tick.C:
		}
		s := sampleMember(ctx, m)
		s.at, s.produced = time.Since(t0), int(produced.Load())
		tally.mu.Lock()
		s.outcomes = tally.outcomes
		tally.mu.Unlock()
		samples = append(samples, s)
		fmt.Fprintf(stdout, "%7.0fs %11.0f %9.1f MiB %7.1f MiB %10d %10d\n", s.at.Seconds(), s.goroutines, s.rss/(1<<20), float64(s.vmRSS)/(1<<20), s.produced, s.outcomes)
	}
	wg.Wait()
	if ctx.Err() != nil {
		return 1
	}

	// Production is over: wait for the outcomes (up to p.Timeout), stop, read to the end.
	wctx, cancel := context.WithTimeout(ctx, p.Timeout)
	waitErr := tally.waitOutcomes(wctx, int(produced.Load()))
	cancel()
	if waitErr != nil {
		fmt.Fprintf(stdout, "soak: timeout: %v\n", waitErr)
	}
	metricSecrets := scrapeSecrets(ctx, w.fleet.running())
	w.fleet.close(grace)
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	readerErr := rd.catchUp(cctx)
	cancel()
	logSecrets, races := scanLogs(w.fleet.logFiles())

	tally.mu.Lock()
	defer tally.mu.Unlock()
	total := int(produced.Load())
	missing, dup := 0, 0
	for i := range total {
		switch c := tally.count[i]; {
		case c == 0:
			missing++
		case c > 1:
			dup += int(c) - 1
		}
	}
	sum := w.sim.Summary()
	simDup := 0
	for _, d := range sum.Duplicates {
		simDup += d.Count - 1
	}
	fmt.Fprintf(stdout, "\nsoak: %d events produced (%d produce errors), %d without an outcome, %d duplicate outcomes, %d failed transient (%d other), simulator re-deliveries %d, dead letters %d\n",
		total, produceErrs.Load(), missing, dup, tally.failedTransient, tally.failedOther, simDup, tally.deadLetters)
	fmt.Fprintf(stdout, "soak: faults: %s\n", faultCounts(faults.snapshot()))
	fmt.Fprintf(stdout, "soak: secrets found: %d (logs %d, metrics %d, outcomes and dead letters %d); data races %d\n",
		logSecrets+metricSecrets+tally.secrets, logSecrets, metricSecrets, tally.secrets, races)
	ok := true
	for _, v := range []struct {
		name string
		get  func(soakSample) float64
	}{{"goroutines", func(s soakSample) float64 { return s.goroutines }}, {"resident memory", func(s soakSample) float64 { return s.rss }}} {
		verdict, flat := judgeFlat(samples, o.warmup, o.flat, v.get)
		fmt.Fprintf(stdout, "soak: %s %s\n", v.name, verdict)
		ok = ok && flat
	}
	if readerErr != nil {
		fmt.Fprintf(stdout, "soak: %v\n", readerErr)
		ok = false
	}
	if !ok || missing > 0 || logSecrets+metricSecrets+tally.secrets > 0 {
		return 1
	}
	return 0
}

// judgeFlat compares the median of the first third of the samples after warmup with the median
// of the last third: a fault moves single samples a lot (a held backlog, idle workers exiting
// during a broker restart), a leak moves the level. allowed is the largest drift that is flat.
func judgeFlat(samples []soakSample, warmup time.Duration, allowed float64, get func(soakSample) float64) (string, bool) {
	var vs []float64
	for _, s := range samples {
		if s.at >= warmup {
			vs = append(vs, get(s))
		}
	}
	if len(vs) < 3 {
		return fmt.Sprintf("not judged: %d samples after the %s warm-up, need 3", len(vs), warmup), false
	}
	third := len(vs) / 3
	first, last := median(vs[:third]), median(vs[len(vs)-third:])
	drift := last/first - 1
	flat := first > 0 && math.Abs(drift) <= allowed
	word := "flat"
	if !flat {
		word = "NOT flat"
	}
	return fmt.Sprintf("%s: median of the first third after warm-up %.4g, of the last third %.4g (%+.1f%%, allowed %.0f%%); samples ranged %.4g-%.4g (%d after warm-up)",
		word, first, last, 100*drift, 100*allowed, slices.Min(vs), slices.Max(vs), len(vs)), flat
}

func median(vs []float64) float64 {
	s := slices.Sorted(slices.Values(vs))
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// produceSteady writes events [0, n) at rate per second, in 10ms ticks, until ctx ends.
func produceSteady(ctx context.Context, cl *kgo.Client, g *eventgen.Generator, n int, rate float64, produced, errs *atomic.Int64) {
	tk := time.NewTicker(10 * time.Millisecond)
	defer tk.Stop()
	start := time.Now()
	for i := 0; i < n; {
		for due := min(n, int(time.Since(start).Seconds()*rate)+1); i < due; i++ {
			e := newEvent(g, i)
			cl.Produce(ctx, e.record(), func(_ *kgo.Record, err error) {
				if err != nil {
					errs.Add(1)
				}
			})
			produced.Add(1)
		}
		select {
		case <-tk.C:
		case <-ctx.Done():
			_ = cl.Flush(context.Background())
			return
		}
	}
	_ = cl.Flush(context.Background())
}

// soakFaults injects, every draw of every, one fault that leaves the processor process running
// (a restart would reset what the soak measures): a 2 s WeChat outage answering -1 or HTTP 503,
// 3 s of 1 s stalls on a fifth of the calls, 5 s of dropped Kafka connections, or a broker
// restart with 1 s down.
func soakFaults(ctx context.Context, w *world, drops *dropper, every span, rng *mrand.Rand, log *faultLog) {
	for sleep(ctx, draw(rng, every)) {
		now := time.Now()
		switch k := rng.IntN(5); k {
		case 0, 1, 2:
			f := []wechatsim.Fault{
				{ID: "soak", Kind: wechatsim.FaultErrcode, ErrCode: -1},
				{ID: "soak", Kind: wechatsim.FaultHTTPStatus, Status: 503},
				{ID: "soak", Kind: wechatsim.FaultLatency, Latency: time.Second, Rate: 0.2},
			}[k]
			length := 2 * time.Second
			if f.Kind == wechatsim.FaultLatency {
				length = 3 * time.Second
			}
			f.From, f.Until = now, now.Add(length)
			if w.sim.SetFault(f) == nil {
				log.add(fault{kind: "wechat " + string(f.Kind), start: now, end: f.Until})
				sleep(ctx, length)
				w.sim.RemoveFault(f.ID)
			}
		case 3:
			drops.arm()
			sleep(ctx, 5*time.Second)
			drops.disarm()
			log.add(fault{kind: "dropped connections", start: now, end: time.Now()})
		case 4:
			if err := w.broker.restart(ctx, time.Second); err == nil {
				log.add(fault{kind: "broker restart", start: now, end: time.Now()})
			}
		}
	}
}

func faultCounts(fs []fault) string {
	counts := make(map[string]int)
	var order []string
	for _, f := range fs {
		if counts[f.kind] == 0 {
			order = append(order, f.kind)
		}
		counts[f.kind]++
	}
	var parts []string
	for _, k := range order {
		parts = append(parts, fmt.Sprintf("%d %s", counts[k], k))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

// sampleMember reads the member's goroutines and resident memory from its /metrics, and VmRSS
// from /proc.
func sampleMember(ctx context.Context, m *member) soakSample {
	var s soakSample
	if body, err := httpGet(ctx, "http://"+m.ops+"/metrics"); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(body))
		for sc.Scan() {
			f := strings.Fields(sc.Text())
			if len(f) != 2 {
				continue
			}
			v, _ := strconv.ParseFloat(f[1], 64)
			switch f[0] {
			case "go_goroutines":
				s.goroutines = v
			case "process_resident_memory_bytes":
				s.rss = v
			}
		}
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", m.pid)); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
				kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
				s.vmRSS = kb << 10
			}
		}
	}
	return s
}
