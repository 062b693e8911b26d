package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// scenario is one row of the chaos table.
type scenario struct {
	name    string
	about   string
	latency time.Duration // default simulator latency
	members int           // processor children started at the beginning
	faults  int           // default params.Faults, for the scenarios that count them
	// malformed: the scenario produces params.MalformedRate malformed records.
	malformed bool
	// drive injects the scenario's faults until its plan ends or ctx is cancelled (the run is
	// over); it leaves the world whole (members thawed, broker up, WeChat faults removed).
	drive func(r *runner, ctx context.Context) error
	// misses lists the targets of issue 12 (and 11) the result does not meet.
	misses func(p params, res *result) []string
}

const (
	slowCalls = 500 * time.Millisecond // the WeChat latency for process and broker faults
	fastCalls = 5 * time.Millisecond   // and for WeChat faults
)

// scenarios in table order.
var scenarios = []*scenario{
	{name: "kill9", about: "kill -9 of the member, restarted 0-2 s later", latency: slowCalls, members: 1, faults: 6,
		drive: (*runner).killRestarts, misses: perFaultBound((params).resendBound)},
	{name: "sigterm", about: "SIGTERM of the member, restarted 0-2 s after it exits", latency: slowCalls, members: 1, faults: 6,
		drive: (*runner).termRestarts, misses: perFaultBound(func(params) int { return 0 })},
	{name: "broker-restart", about: "the broker closed and started again on its port and data", latency: slowCalls, members: 1, faults: 3,
		drive: (*runner).brokerRestarts, misses: perFaultBound(func(p params) int { return p.MaxInFlight })},
	{name: "drop-conns", about: "1% of Fetch, Produce, OffsetCommit, Heartbeat requests answered by closing the connection", latency: slowCalls, members: 1,
		drive: (*runner).dropConnections, misses: dropMisses},
	{name: "outage-errcode", about: "every send answered -1 for the outage, from 2 s after the first outcome", latency: fastCalls, members: 1,
		drive: outage("", wechatsim.FaultErrcode), misses: outageMisses},
	{name: "outage-503", about: "every send answered HTTP 503 for the outage, from 2 s after the first outcome", latency: fastCalls, members: 1,
		drive: outage("", wechatsim.FaultHTTPStatus), misses: outageMisses},
	{name: "outage-subscribe", about: "subscribeMessage.send alone answered -1 for the subscribe outage", latency: fastCalls, members: 1,
		drive: outage("subscribeMessage.send", wechatsim.FaultErrcode), misses: subscribeOutageMisses},
	{name: "random-faults", about: "5% of sends -1, 5% HTTP 503, 2% stalled 1 s, all run long", latency: fastCalls, members: 1,
		drive: (*runner).randomFaults, misses: noFailedMisses},
	{name: "sigstop", about: "SIGSTOP of one of two members for 1.5 x the session timeout, then SIGCONT", latency: slowCalls, members: 2, faults: 2,
		drive: (*runner).freezes, misses: perFaultBound((params).resendBound)},
	{name: "rebalance-storm", about: "three members, one leaving (SIGTERM) or joining every 1-4 s", latency: slowCalls, members: 3, faults: 12,
		drive: (*runner).storm, misses: perFaultBound(func(p params) int { return p.MaxInFlight })},
	{name: "grow", about: "a working member is joined by a second, then a third (the consumption pause of each rebalance)", latency: slowCalls, members: 1, faults: 2,
		drive: (*runner).grow, misses: perFaultBound(func(p params) int { return p.MaxInFlight })},
	{name: "malformed", about: "1% malformed records: not JSON, or invalid UTF-8 (oBad\\xc3() in a string", latency: fastCalls, members: 1, malformed: true,
		misses: malformedMisses},
}

func scenarioNamed(name string) *scenario {
	for _, s := range scenarios {
		if s.name == name {
			return s
		}
	}
	return nil
}

// sleep waits d or until ctx ends; it reports whether the full wait happened.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func draw(rng *rand.Rand, s span) time.Duration {
	if s.Max <= s.Min {
		return s.Min
	}
	return s.Min + time.Duration(rng.Int64N(int64(s.Max-s.Min)+1))
}

// stillRunning turns the end of a driver's wait into its return: a cancelled run or a finished
// one (every outcome in) is not a driver error.
func stillRunning(err error) (bool, error) {
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, errAllDone), errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return false, nil
	}
	return false, err
}

// beforeFault waits for progress since the previous fault (a first outcome of some notification
// read after since), then for params.FaultEvery. It returns false when the run is over.
func (r *runner) beforeFault(ctx context.Context, since time.Time) (bool, error) {
	if ok, err := stillRunning(r.led.waitNew(ctx, since)); !ok {
		return false, err
	}
	return sleep(ctx, draw(r.rng, r.p.FaultEvery)), nil
}

// the member of slot 0, started again if it is not running.
func (r *runner) slot0() (*member, error) {
	for _, m := range r.fleet.running() {
		if m.slot == 0 {
			return m, nil
		}
	}
	return r.fleet.start(0)
}

func (r *runner) killRestarts(ctx context.Context) error {
	return r.restarts(ctx, "kill -9", r.fleet.kill)
}

func (r *runner) termRestarts(ctx context.Context) error {
	return r.restarts(ctx, "SIGTERM", func(m *member) { r.fleet.term(m, r.p.DrainTimeout+10*time.Second) })
}

// restarts stops the member with stop, keeps it down for RestartAfter and starts it again, Faults
// times. Recovery is measured from the signal.
func (r *runner) restarts(ctx context.Context, kind string, stop func(*member)) error {
	since := time.Time{}
	for range r.p.Faults {
		m, err := r.slot0()
		if err != nil {
			return err
		}
		if ok, err := r.beforeFault(ctx, since); !ok {
			return err
		}
		since = time.Now()
		stop(m)
		r.faults.add(fault{kind: kind, start: since, end: since, recovery: true})
		if !sleep(ctx, draw(r.rng, r.p.RestartAfter)) {
			return nil
		}
		if _, err := r.fleet.start(0); err != nil {
			return err
		}
	}
	return nil
}

func (r *runner) brokerRestarts(ctx context.Context) error {
	since := time.Time{}
	for range r.p.Faults {
		if ok, err := r.beforeFault(ctx, since); !ok {
			return err
		}
		start := time.Now()
		if err := r.broker.restart(ctx, draw(r.rng, r.p.RestartAfter)); err != nil {
			return err
		}
		since = time.Now()
		r.faults.add(fault{kind: "broker restart", start: start, end: since, recovery: true})
	}
	return nil
}

func (r *runner) dropConnections(ctx context.Context) error {
	d := newDropper(r.p.DropRate, r.seed, func(kind string) {
		now := time.Now()
		r.faults.add(fault{kind: "drop " + kind, start: now, end: now})
	})
	r.broker.setHooks(d.install)
	if _, err := r.led.waitFirst(ctx); err != nil {
		_, err = stillRunning(err)
		return err
	}
	d.arm()
	<-ctx.Done()
	return nil
}

// outage answers every call to api ("" = every send API) with kind (-1, or HTTP 503) for the
// scenario's outage length, from OutageDelay after the first outcome.
func outage(api string, kind wechatsim.FaultKind) func(*runner, context.Context) error {
	return func(r *runner, ctx context.Context) error {
		first, err := r.led.waitFirst(ctx)
		if err != nil || first.IsZero() {
			_, err = stillRunning(err)
			return err
		}
		if !sleep(ctx, time.Until(first.Add(r.p.OutageDelay))) {
			return nil
		}
		length := r.p.Outage
		if api != "" {
			length = r.p.SubscribeOutage
		}
		from := time.Now()
		f := wechatsim.Fault{ID: "outage", Kind: kind, API: api, From: from, Until: from.Add(length)}
		if kind == wechatsim.FaultErrcode {
			f.ErrCode = -1
		} else {
			f.Status = 503
		}
		if err := r.sim.SetFault(f); err != nil {
			return err
		}
		defer r.sim.RemoveFault(f.ID)
		name := "outage"
		if api != "" {
			name = api + " outage"
		}
		r.faults.add(fault{kind: name, start: from, end: f.Until, recovery: true})
		sleep(ctx, time.Until(f.Until))
		return nil
	}
}

func (r *runner) randomFaults(ctx context.Context) error {
	fs := []wechatsim.Fault{
		{ID: "random-1", Kind: wechatsim.FaultErrcode, ErrCode: -1, Rate: 0.05},
		{ID: "random-503", Kind: wechatsim.FaultHTTPStatus, Status: 503, Rate: 0.05},
		{ID: "random-stall", Kind: wechatsim.FaultLatency, Latency: time.Second, Rate: 0.02},
	}
	for _, f := range fs {
		if err := r.sim.SetFault(f); err != nil {
			return err
		}
		defer r.sim.RemoveFault(f.ID)
	}
	i := r.faults.add(fault{kind: "random faults", start: time.Now()})
	<-ctx.Done()
	r.faults.setEnd(i, time.Now())
	return nil
}

// freezes SIGSTOPs a random member for 1.5 x the session timeout, Faults times.
func (r *runner) freezes(ctx context.Context) error {
	since := time.Time{}
	for range r.p.Faults {
		if ok, err := r.beforeFault(ctx, since); !ok {
			return err
		}
		ms := r.fleet.running()
		if len(ms) == 0 {
			return errors.New("no member left to stop")
		}
		m := ms[r.rng.IntN(len(ms))]
		start := time.Now()
		r.fleet.freeze(m)
		sleep(ctx, r.p.SessionTimeout*3/2)
		r.fleet.thaw(m)
		since = time.Now()
		r.faults.add(fault{kind: "SIGSTOP", start: start, end: since, recovery: true})
		if ctx.Err() != nil {
			return nil
		}
	}
	return nil
}

// storm makes one of three members leave (SIGTERM, waiting for its exit) or a new one join every
// FaultEvery/2, Faults times: always a leave at three members, a join at one.
func (r *runner) storm(ctx context.Context) error {
	every := span{r.p.FaultEvery.Min / 2, r.p.FaultEvery.Max / 2}
	for range r.p.Faults {
		if !sleep(ctx, draw(r.rng, every)) {
			return nil
		}
		ms := r.fleet.running()
		leave := len(ms) == r.sc.members || (len(ms) > 1 && r.rng.IntN(2) == 0)
		now := time.Now()
		if leave {
			r.fleet.term(ms[r.rng.IntN(len(ms))], r.p.DrainTimeout+10*time.Second)
			r.faults.add(fault{kind: "member leaves", start: now, end: now, recovery: true})
			continue
		}
		slot := freeSlot(ms)
		if _, err := r.fleet.start(slot); err != nil {
			return err
		}
		r.faults.add(fault{kind: "member joins", start: now, end: now, recovery: true})
	}
	return nil
}

// grow joins members to a working group one at a time, after progress since the previous join,
// up to 1 + params.Faults members, measuring each rebalance's pause.
func (r *runner) grow(ctx context.Context) error {
	since := time.Time{}
	for range r.p.Faults {
		if ok, err := r.beforeFault(ctx, since); !ok {
			return err
		}
		now := time.Now()
		if _, err := r.fleet.start(freeSlot(r.fleet.running())); err != nil {
			return err
		}
		r.faults.add(fault{kind: "member joins", start: now, end: now, pause: true})
		since = now
	}
	return nil
}

func freeSlot(ms []*member) int {
	used := make(map[int]bool)
	for _, m := range ms {
		used[m.slot] = true
	}
	for s := 0; ; s++ {
		if !used[s] {
			return s
		}
	}
}

// fault is one fault the run injected. Sends delivered again are charged to the latest fault that
// started before the re-delivery; recovery runs from end.
type fault struct {
	kind       string
	start, end time.Time
	recovery   bool // measure the time from end to the next new outcome
	pause      bool // measure the longest gap between new outcomes after start (a rebalance)
}

type faultLog struct {
	mu   sync.Mutex
	list []fault
}

func (l *faultLog) add(f fault) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list = append(l.list, f)
	return len(l.list) - 1
}

func (l *faultLog) setEnd(i int, end time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list[i].end = end
}

func (l *faultLog) snapshot() []fault {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]fault(nil), l.list...)
}

// Targets. Each miss is one line naming the target and the figure.

// margin widens every bound computed from the run's parameters, for a noisy machine.
const margin = 1.25

func bounded(n int) int { return int(float64(n) * margin) }

// commonMisses are the targets of every scenario.
func commonMisses(res *result) []string {
	var m []string
	add := func(cond bool, format string, a ...any) {
		if cond {
			m = append(m, fmt.Sprintf(format, a...))
		}
	}
	add(res.TimedOut, "timed out: %d of %d notifications have an outcome", res.Expected-res.NoOutcome, res.Expected)
	add(res.Lost > 0, "lost %d (no delivery and no outcome), want 0", res.Lost)
	add(res.NoOutcome > 0, "%d notifications without an outcome, want 0", res.NoOutcome)
	add(res.TemplateTwice > 0, "template.send delivered twice %d times, want never", res.TemplateTwice)
	add(res.OrderViolations > 0, "%d per-key order violations, want 0", res.OrderViolations)
	add(res.secretsTotal() > 0, "%d occurrences of a secret (%s), want 0", res.secretsTotal(), res.secretsText())
	add(res.Races > 0, "%d data races reported by processor children", res.Races)
	add(!res.malformed && res.DeadLettered+res.ForeignDLQ > 0, "%d dead letters in a run without malformed records", res.DeadLettered+res.ForeignDLQ)
	add(res.ForeignOutcomes > 0, "%d outcomes name no expected notification", res.ForeignOutcomes)
	add(len(res.Unclean) > 0, "%d members did not stop cleanly on SIGTERM (%s)", len(res.Unclean), strings.Join(res.Unclean, "; "))
	return m
}

// perFaultBound: at most bound(p) re-sends charged to any one fault (margin included).
func perFaultBound(bound func(params) int) func(params, *result) []string {
	return func(p params, res *result) []string {
		m := commonMisses(res)
		limit := bounded(bound(p))
		for _, f := range res.PerFault {
			if f.Resent > limit {
				m = append(m, fmt.Sprintf("%s at %s re-sent %d, want at most %d (%d + %d%% margin)", f.Kind, f.At, f.Resent, limit, bound(p), int(margin*100-100)))
			}
		}
		return m
	}
}

// dropMisses: at most 1% of events sent twice (margin included).
func dropMisses(_ params, res *result) []string {
	m := commonMisses(res)
	if limit := bounded(res.Events / 100); res.ResentNotifs > limit {
		m = append(m, fmt.Sprintf("%d notifications sent twice (%.1f%% of events), want at most %d (1%% + margin)", res.ResentNotifs, 100*float64(res.ResentNotifs)/float64(res.Events), limit))
	}
	return m
}

func noFailedMisses(_ params, res *result) []string {
	m := commonMisses(res)
	if res.FailedTransient > 0 {
		m = append(m, fmt.Sprintf("%d notifications failed on transient answers, want 0", res.FailedTransient))
	}
	return m
}

// outageMisses: 0 failed, every notification delivered once WeChat is back.
func outageMisses(p params, res *result) []string {
	m := noFailedMisses(p, res)
	if res.Undelivered > 0 {
		m = append(m, fmt.Sprintf("%d notifications never delivered, want 0", res.Undelivered))
	}
	return m
}

// subscribeOutageMisses adds: every template.send notification delivered before the outage ends.
func subscribeOutageMisses(p params, res *result) []string {
	m := outageMisses(p, res)
	if res.LateTemplate > 0 {
		m = append(m, fmt.Sprintf("%d template.send notifications not delivered before the subscribe outage ended, want 0", res.LateTemplate))
	}
	return m
}

// malformedMisses: every malformed record dead-lettered, none sent.
func malformedMisses(_ params, res *result) []string {
	m := commonMisses(res)
	if res.DeadLettered < res.Malformed {
		m = append(m, fmt.Sprintf("%d of %d malformed records dead-lettered, want all", res.DeadLettered, res.Malformed))
	}
	if res.MalformedSent > 0 {
		m = append(m, fmt.Sprintf("%d malformed records sent or given an outcome, want 0", res.MalformedSent))
	}
	return m
}
