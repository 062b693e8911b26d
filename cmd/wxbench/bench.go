package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/wxnotify/wxnotify/cmd/internal/app"
	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// options are wxbench's flags.
type options struct {
	mode                       string        // backlog or steady
	events                     int           // backlog size
	rate                       float64       // steady: events per second
	duration                   time.Duration // steady: how long to produce
	latency                    time.Duration // simulator latency per send call
	maxInFlight                int
	fetchLinger, produceLinger string // "" = the config default
	procs                      string // processor.procs
	partitions                 int
	users                      int
	rulesDir                   string
	inProcess                  bool
	cpuProfile                 string
	memProfile                 string
	timeout                    time.Duration // for the outcomes after production
	logLevel                   string
	progress                   bool
	seed                       uint64
}

const (
	eventsTopic   = "events"
	outcomesTopic = "wxnotify.outcomes" // the config default
	weappAppID    = "wxbenchweapp00001"
	mpAppID       = "wxbenchmp00000001"
)

// report is everything a run measured.
type report struct {
	opts              options
	n                 int
	produceD          time.Duration // backlog: writing the backlog (not part of any figure below)
	window            time.Duration // backlog: processor start -> last outcome; steady: first produce -> last outcome
	firstOut          time.Duration // processor start -> first outcome
	mid               time.Duration // 10% -> 90% of events complete
	midEvents         int64
	procCPU           time.Duration // processor's process over the window
	benchCPU          time.Duration // split mode: this process (broker, simulator, producer, reader) over the window
	peakRSS           int64         // processor's process: max sampled VmRSS
	hwm               int64         // processor's process: VmHWM at exit
	oneP, procSamples int64         // status samples of the processor child at one P, and all of them
	lat               []time.Duration
	complete          int64
	missing           int
	dupOut            int // events with more outcomes than expected
	extraOut          int // outcomes beyond expected, summed
	notSent           int64
	foreign           int64
	sim               wechatsim.Summary
	simErrors         int64 // send calls answered with a non-zero errcode or a fault
	wantSends         int   // sends the simulator should have delivered (-1 = unknown: custom rules)
	stopErr           error
}

func bench(ctx context.Context, o options, stdout, stderr io.Writer) (*report, error) {
	log := logrus.New()
	log.SetOutput(stderr)
	if lvl, err := logrus.ParseLevel(o.logLevel); err == nil {
		log.SetLevel(lvl)
	}

	n := o.events
	if o.mode == "steady" {
		n = int(o.rate * o.duration.Seconds())
	}
	if n <= 0 {
		return nil, errors.New("no events to send")
	}

	cluster, err := kfake.NewCluster(
		kfake.NumBrokers(1),
		kfake.SeedTopics(int32(o.partitions), eventsTopic),
		kfake.SeedTopics(8, outcomesTopic),
		kfake.SeedTopics(1, "wxnotify.dlq"),
		kfake.SeedTopics(2, "wxnotify.delayed"),
		kfake.GroupMinSessionTimeout(500*time.Millisecond),
	)
	if err != nil {
		return nil, fmt.Errorf("start kafka broker: %w", err)
	}
	defer cluster.Close()
	broker := cluster.ListenAddrs()[0]

	weappSecret, mpSecret := randomHex(16), randomHex(16)
	sim, err := wechatsim.Start(wechatsim.Config{
		Accounts: map[string]string{weappAppID: weappSecret, mpAppID: mpSecret},
		Latency:  o.latency,
		NoRecord: true,
	})
	if err != nil {
		return nil, fmt.Errorf("start wechat simulator: %w", err)
	}
	defer sim.Close()

	if o.inProcess {
		o.procs = app.ProcsAll // the bench's own load would steer the processor's Ps
	}
	pc := procConfig{
		Broker: broker, SimURL: sim.URL(), WeappAppID: weappAppID, WeappSecret: weappSecret,
		MPAppID: mpAppID, MPSecret: mpSecret, MaxInFlight: o.maxInFlight, RulesDir: o.rulesDir,
		FetchLinger: o.fetchLinger, ProduceLinger: o.produceLinger,
		Procs:    o.procs,
		LogLevel: o.logLevel, CPUProfile: o.cpuProfile, MemProfile: o.memProfile,
	}
	t := newTally(n)
	r := &report{opts: o, n: n, wantSends: n}
	if o.rulesDir != "" {
		if err := expectFromRules(pc, t, n, o); err != nil {
			return nil, err
		}
		r.wantSends = -1
	}

	readCtx, stopReading := context.WithCancel(ctx)
	defer stopReading()
	var readers sync.WaitGroup
	defer readers.Wait()
	defer stopReading()
	if err := readOutcomes(readCtx, broker, outcomesTopic, t, &readers); err != nil {
		return nil, err
	}

	prod := newProducer(broker, eventsTopic)
	defer prod.Close()
	gen := eventgen.New(o.users, 0, o.seed)
	if o.mode == "backlog" {
		t0 := time.Now()
		if err := produceBacklog(ctx, prod, gen, n, t); err != nil {
			return nil, err
		}
		r.produceD = time.Since(t0)
		fmt.Fprintf(stdout, "backlog: %d events written to %d partitions in %s (not measured)\n", n, o.partitions, r.produceD.Round(time.Millisecond))
	}

	// Start the processor.
	var proc processorHandle
	procStart := t.now()
	benchCPU0 := selfCPU()
	if o.inProcess {
		if o.cpuProfile != "" {
			stop, err := startProfile(o.cpuProfile)
			if err != nil {
				return nil, err
			}
			defer stop()
		}
		proc, err = startInProcess(pc, log)
	} else {
		proc, err = startChild(pc, stderr)
	}
	if err != nil {
		return nil, err
	}
	stopped := false
	stopProc := func() {
		if stopped {
			return
		}
		stopped = true
		r.oneP, r.procSamples = proc.procs()
		_, r.hwm, r.stopErr = proc.stop()
	}
	defer stopProc()

	// Peak RSS, sampled every 100ms from now on.
	var peak atomic.Int64
	sampleCtx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	go func() {
		tk := time.NewTicker(100 * time.Millisecond)
		defer tk.Stop()
		for {
			if rss, _ := proc.mem(); rss > peak.Load() {
				peak.Store(rss)
			}
			select {
			case <-sampleCtx.Done():
				return
			case <-tk.C:
			}
		}
	}()

	// The CPU window starts at processor start: a child starts from zero (its startup counts as
	// processor work); in one process, from what the process had used by then.
	windowStart, cpu0 := procStart, time.Duration(0)
	if o.inProcess {
		cpu0 = benchCPU0
	}
	prodErr := make(chan error, 1)
	if o.mode == "steady" {
		if err := waitAssigned(ctx, proc, 30*time.Second); err != nil {
			return nil, err
		}
		windowStart, cpu0, benchCPU0 = t.now(), proc.cpu(), selfCPU()
		go func() { prodErr <- produceSteady(ctx, prod, gen, n, o.rate, t) }()
	}

	// Wait for every outcome, printing progress.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var deadline <-chan time.Time
	if o.mode == "backlog" {
		deadline = time.After(o.timeout)
	}
	last, lastAt := int64(0), time.Now()
wait:
	for {
		select {
		case <-t.allDone:
			break wait
		case err := <-prodErr:
			if err != nil {
				return nil, err
			}
			deadline = time.After(o.timeout)
		case <-deadline:
			fmt.Fprintf(stderr, "timeout: %d of %d events have their outcomes after %s\n", t.complete.Load(), t.want, o.timeout)
			break wait
		case <-ctx.Done():
			break wait
		case now := <-tick.C:
			if o.progress {
				c := t.complete.Load()
				in, _ := proc.status()
				rss, _ := proc.mem()
				fmt.Fprintf(stdout, "%6.1fs  done %7d/%d  %6.0f ev/s  in-flight %5d  processor cpu %5.1fs rss %4d MiB\n",
					time.Duration(t.now()-procStart).Seconds(), c, t.want, float64(c-last)/now.Sub(lastAt).Seconds(), in,
					proc.cpu().Seconds(), rss>>20)
				last, lastAt = c, now
			}
		}
	}
	end := t.now()
	if m := t.marks[markAll].Load(); m > 0 {
		end = m
	}
	r.procCPU = proc.cpu() - cpu0
	if !o.inProcess {
		r.benchCPU = selfCPU() - benchCPU0
	}
	r.window = time.Duration(end - windowStart)
	if f := t.first.Load(); f > 0 {
		r.firstOut = time.Duration(f - procStart)
	}
	if a, b := t.marks[mark10].Load(), t.marks[mark90].Load(); a > 0 && b > a {
		r.mid = time.Duration(b - a)
		r.midEvents = t.want*9/10 - t.want/10
	}

	stopProc()
	stopSampling()
	r.peakRSS = peak.Load()
	// Outcomes written during the drain would be duplicates: give the reader a moment for them.
	time.Sleep(300 * time.Millisecond)
	stopReading()
	readers.Wait()

	r.complete = t.complete.Load()
	for i := range t.count {
		c, want := atomic.LoadUint32(&t.count[i]), uint32(t.expected[i])
		switch {
		case c < want:
			r.missing++
		case c > want:
			r.dupOut++
			r.extraOut += int(c - want)
		}
		if want > 0 && c >= want {
			r.lat = append(r.lat, time.Duration(t.recv[i]-t.sent[i]))
		}
	}
	slices.Sort(r.lat)
	r.notSent, r.foreign = t.notSent.Load(), t.foreign.Load()
	r.sim = sim.Summary()
	for api, outcomes := range sim.Stats().Calls {
		if !isSendAPI(api) {
			continue
		}
		for oc, c := range outcomes {
			if oc != "0" {
				r.simErrors += c
			}
		}
	}
	return r, nil
}

func isSendAPI(name string) bool {
	return name != wechatsim.APIToken && name != wechatsim.APIStableToken
}

// expectFromRules evaluates every event with a custom rule set to learn how many outcomes it
// should have (the embedded set gives exactly one per event).
func expectFromRules(pc procConfig, t *tally, n int, o options) error {
	cfg, err := appConfig(pc)
	if err != nil {
		return err
	}
	set, err := loadRules(cfg, o.rulesDir)
	if err != nil {
		return err
	}
	g := eventgen.New(o.users, 0, o.seed)
	var dst []rules.Notification
	for i := range n {
		m := message(g, i)
		ev, err := rules.DecodeEvent(m.Value)
		if err != nil {
			return err
		}
		dst = set.Evaluate(ev, rules.Meta{EventID: ev.ID(), Topic: eventsTopic, Key: m.Key}, dst[:0])
		k := 0
		for _, nt := range dst {
			if !nt.WhenErr {
				k++
			}
		}
		t.setExpected(i, k)
	}
	return nil
}

func waitAssigned(ctx context.Context, p processorHandle, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		if _, a := p.status(); a > 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the processor was not assigned partitions within %s", limit)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// failures lists what makes the run fail (exit status 1).
func (r *report) failures() []string {
	var f []string
	if r.missing > 0 {
		f = append(f, fmt.Sprintf("%d events are missing outcomes", r.missing))
	}
	if r.dupOut > 0 {
		f = append(f, fmt.Sprintf("%d events have duplicate outcomes (%d extra)", r.dupOut, r.extraOut))
	}
	if d := len(r.sim.Duplicates); d > 0 {
		f = append(f, fmt.Sprintf("the simulator delivered %d messages more than once", d))
	}
	if r.wantSends >= 0 && r.sim.Total != r.wantSends {
		f = append(f, fmt.Sprintf("the simulator delivered %d messages, want %d", r.sim.Total, r.wantSends))
	}
	if r.wantSends >= 0 && r.notSent > 0 {
		f = append(f, fmt.Sprintf("%d outcomes are not \"sent\"", r.notSent))
	}
	if r.foreign > 0 {
		f = append(f, fmt.Sprintf("%d outcomes name unknown events", r.foreign))
	}
	if r.stopErr != nil {
		f = append(f, "processor: "+r.stopErr.Error())
	}
	return f
}

func pct(s []time.Duration, p float64) time.Duration {
	if len(s) == 0 {
		return 0
	}
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

func ms(d time.Duration) string { return fmt.Sprintf("%.1fms", float64(d)/1e6) }

func (r *report) print(w io.Writer) {
	o := r.opts
	where := "processor in a child process (CPU and memory below are the processor's alone)"
	if o.inProcess {
		where = "everything in one process (CPU and memory below include broker, simulator and bench)"
	}
	fmt.Fprintf(w, "\nwxbench: mode=%s events=%d partitions=%d latency=%s max-in-flight=%d users=%d procs=%s; %s\n",
		o.mode, r.n, o.partitions, o.latency, o.maxInFlight, o.users, o.procs, where)
	window := "processor start -> last outcome"
	if o.mode == "steady" {
		fmt.Fprintf(w, "  produced at %.0f ev/s for %s\n", o.rate, o.duration)
		window = "first event produced -> last outcome"
	}
	eps := float64(r.complete) / r.window.Seconds()
	fmt.Fprintf(w, "  throughput        %8.0f events/s  (%d events, %s: %s)\n", eps, r.complete, window, r.window.Round(time.Millisecond))
	if r.mid > 0 {
		fmt.Fprintf(w, "  steady-state      %8.0f events/s  (10%% -> 90%% of events complete: %d events in %s)\n",
			float64(r.midEvents)/r.mid.Seconds(), r.midEvents, r.mid.Round(time.Millisecond))
	}
	fmt.Fprintf(w, "  first outcome     %8s after processor start\n", ms(r.firstOut))
	perEv := func(d time.Duration) string { return fmt.Sprintf("%.4fms", float64(d)/1e6/float64(max(r.complete, 1))) }
	if o.inProcess {
		fmt.Fprintf(w, "  CPU per event     %8s  (whole process: %s over the window; %.2f cores)\n", perEv(r.procCPU), r.procCPU.Round(time.Millisecond), r.procCPU.Seconds()/r.window.Seconds())
	} else {
		fmt.Fprintf(w, "  CPU per event     %8s  (processor process: %s over the window; %.2f cores)\n", perEv(r.procCPU), r.procCPU.Round(time.Millisecond), r.procCPU.Seconds()/r.window.Seconds())
		fmt.Fprintf(w, "    + bench process %8s  (broker + simulator + producer + outcome reader: %s)\n", perEv(r.benchCPU), r.benchCPU.Round(time.Millisecond))
		fmt.Fprintf(w, "    = total         %8s\n", perEv(r.procCPU+r.benchCPU))
	}
	if r.procSamples > 0 {
		fmt.Fprintf(w, "  processor Ps      one P in %d of %d samples (every 250ms; processor.procs: %s)\n", r.oneP, r.procSamples, o.procs)
	}
	fmt.Fprintf(w, "  peak RSS          %8d MiB  (max VmRSS sampled every 100ms; VmHWM %d MiB)\n", r.peakRSS>>20, r.hwm>>20)
	fmt.Fprintf(w, "  event -> outcome  p50 %s  p90 %s  p99 %s  p99.9 %s  max %s  (produce call -> outcome read back)\n",
		ms(pct(r.lat, .5)), ms(pct(r.lat, .9)), ms(pct(r.lat, .99)), ms(pct(r.lat, .999)), ms(pct(r.lat, 1)))
	fmt.Fprintf(w, "  deliveries        simulator %d (duplicates %d, error answers %d); outcomes: missing %d, duplicated %d, not sent %d\n",
		r.sim.Total, len(r.sim.Duplicates), r.simErrors, r.missing, r.dupOut, r.notSent)
	fmt.Fprintf(w, "result mode=%s events=%d latency=%s procs=%s eps=%.0f eps_mid=%.0f cpu_ms_per_event=%.4f bench_cpu_ms_per_event=%.4f peak_rss_mib=%d hwm_mib=%d p50_ms=%.1f p99_ms=%.1f missing=%d dup=%d\n",
		o.mode, r.n, o.latency, o.procs, eps, float64(r.midEvents)/max(r.mid.Seconds(), 1e-9),
		float64(r.procCPU)/1e6/float64(max(r.complete, 1)), float64(r.benchCPU)/1e6/float64(max(r.complete, 1)),
		r.peakRSS>>20, r.hwm>>20, float64(pct(r.lat, .5))/1e6, float64(pct(r.lat, .99))/1e6, r.missing, r.dupOut+len(r.sim.Duplicates))
}
