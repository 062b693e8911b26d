package main

import (
	"errors"
	"flag"
	"fmt"
	"math"
	"strings"
	"time"
)

// params are the sizes and timings of a run. The processor's config keys are named where a field
// is one; the rest shape the world and the fault plan.
type params struct {
	Events int // events produced before the processor starts (malformed ones included)
	Users  int // recipients (and Kafka keys) the events are spread over (wxbench's default: 20000)

	// Latency is the simulator's delay per send call; 0 = the scenario's default (500ms where
	// processes, the broker or its connections fail, 5ms for WeChat faults and malformed records).
	Latency     time.Duration
	MaxInFlight int // processor.max_in_flight

	CommitInterval    time.Duration // processor.commit_interval
	DrainTimeout      time.Duration // processor.drain_timeout
	SessionTimeout    time.Duration // kafka.session_timeout
	HeartbeatInterval time.Duration // kafka.heartbeat_interval
	RebalanceTimeout  time.Duration // kafka.rebalance_timeout

	// Faults is how many faults the process and broker scenarios inject: kills, SIGTERM
	// restarts, broker restarts, SIGSTOPs, storm membership changes and grow's joins (0 = the
	// scenario's default: 6, 6, 3, 2, 12 and 2).
	Faults int
	// FaultEvery is the wait before each such fault, drawn uniformly, counted from the first new
	// outcome after the previous fault (so every fault meets a processor that makes progress).
	FaultEvery span
	// RestartAfter is how long a killed or stopped member, or the broker, stays down.
	RestartAfter span

	OutageDelay     time.Duration // WeChat outages start this long after the first outcome
	Outage          time.Duration // length of the outage of every send API
	SubscribeOutage time.Duration // length of the subscribeMessage.send outage
	DropRate        float64       // share of Fetch/Produce/OffsetCommit/Heartbeat requests dropped
	MalformedRate   float64       // share of malformed records in the malformed scenario

	// Timeout ends a scenario that has not got every expected outcome by then (reported as a
	// timeout, and checked as it stands).
	Timeout time.Duration
}

// span is a range of durations, written "2s-8s" (or one duration).
type span struct{ Min, Max time.Duration }

func (s span) String() string {
	if s.Min == s.Max {
		return s.Min.String()
	}
	return s.Min.String() + "-" + s.Max.String()
}

// Set parses "2s-8s" or "1s".
func (s *span) Set(v string) error {
	lo, hi, ok := strings.Cut(v, "-")
	if !ok {
		hi = lo
	}
	a, err := time.ParseDuration(lo)
	if err != nil {
		return err
	}
	b, err := time.ParseDuration(hi)
	if err != nil {
		return err
	}
	if a < 0 || b < a {
		return fmt.Errorf("%q is not a range MIN-MAX with 0 <= MIN <= MAX", v)
	}
	*s = span{a, b}
	return nil
}

// fullParams are the sizes (issue 12 item 5, issue 11 item 3): 50k events,
// max_in_flight 1024, 500ms calls for the process and broker faults, the processor's default
// group timing.
func fullParams() params {
	return params{
		Events:            50000,
		Users:             20000,
		MaxInFlight:       1024,
		CommitInterval:    200 * time.Millisecond,
		DrainTimeout:      15 * time.Second,
		SessionTimeout:    10 * time.Second,
		HeartbeatInterval: 3 * time.Second,
		RebalanceTimeout:  30 * time.Second,
		FaultEvery:        span{2 * time.Second, 8 * time.Second},
		RestartAfter:      span{0, 2 * time.Second},
		OutageDelay:       2 * time.Second,
		Outage:            60 * time.Second,
		SubscribeOutage:   30 * time.Second,
		DropRate:          0.01,
		MalformedRate:     0.01,
		Timeout:           10 * time.Minute,
	}
}

func (p *params) flags(fs *flag.FlagSet) {
	fs.IntVar(&p.Events, "n", p.Events, "events to produce before the processor starts")
	fs.IntVar(&p.Users, "users", p.Users, "recipients (Kafka keys) the events are spread over")
	fs.DurationVar(&p.Latency, "latency", p.Latency, "simulator latency per send call (0 = the scenario's default: 500ms, or 5ms for WeChat faults and malformed)")
	fs.IntVar(&p.MaxInFlight, "max-in-flight", p.MaxInFlight, "processor.max_in_flight")
	fs.DurationVar(&p.CommitInterval, "commit-interval", p.CommitInterval, "processor.commit_interval")
	fs.DurationVar(&p.DrainTimeout, "drain-timeout", p.DrainTimeout, "processor.drain_timeout")
	fs.DurationVar(&p.SessionTimeout, "session-timeout", p.SessionTimeout, "kafka.session_timeout")
	fs.DurationVar(&p.HeartbeatInterval, "heartbeat-interval", p.HeartbeatInterval, "kafka.heartbeat_interval")
	fs.DurationVar(&p.RebalanceTimeout, "rebalance-timeout", p.RebalanceTimeout, "kafka.rebalance_timeout")
	fs.IntVar(&p.Faults, "faults", p.Faults, "kills, restarts, SIGSTOPs, storm changes or joins per scenario (0 = the scenario's default)")
	fs.Var(&p.FaultEvery, "fault-every", "wait before each process or broker fault, counted from the first new outcome after the previous one")
	fs.Var(&p.RestartAfter, "restart-after", "how long a killed member or the broker stays down")
	fs.DurationVar(&p.OutageDelay, "outage-delay", p.OutageDelay, "WeChat outages start this long after the first outcome")
	fs.DurationVar(&p.Outage, "outage", p.Outage, "length of the outage of every send API")
	fs.DurationVar(&p.SubscribeOutage, "subscribe-outage", p.SubscribeOutage, "length of the subscribeMessage.send outage")
	fs.Float64Var(&p.DropRate, "drop-rate", p.DropRate, "share of Fetch, Produce, OffsetCommit and Heartbeat requests answered by closing the connection")
	fs.Float64Var(&p.MalformedRate, "malformed-rate", p.MalformedRate, "share of malformed records in the malformed scenario")
	fs.DurationVar(&p.Timeout, "timeout", p.Timeout, "give up on a scenario whose outcomes are not all in by then")
}

// Validate reports every unusable value.
func (p *params) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if p.Events < 10 {
		bad("-n: at least 10 events")
	}
	if p.Users < 1 || p.MaxInFlight < 1 || p.Faults < 0 {
		bad("-users and -max-in-flight must be positive, -faults not negative")
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{{"-commit-interval", p.CommitInterval}, {"-drain-timeout", p.DrainTimeout}, {"-session-timeout", p.SessionTimeout},
		{"-heartbeat-interval", p.HeartbeatInterval}, {"-rebalance-timeout", p.RebalanceTimeout}, {"-outage", p.Outage},
		{"-subscribe-outage", p.SubscribeOutage}, {"-timeout", p.Timeout}} {
		if d.v <= 0 {
			bad("%s: must be positive", d.name)
		}
	}
	if p.Latency < 0 || p.OutageDelay < 0 {
		bad("-latency and -outage-delay must not be negative")
	}
	if p.SessionTimeout < 500*time.Millisecond {
		bad("-session-timeout: the broker's minimum is 500ms")
	}
	if p.DrainTimeout >= p.RebalanceTimeout {
		bad("-drain-timeout must be below -rebalance-timeout (the processor refuses it otherwise)")
	}
	if p.DropRate < 0 || p.DropRate > 1 || p.MalformedRate < 0 || p.MalformedRate > 1 {
		bad("-drop-rate and -malformed-rate are shares between 0 and 1")
	}
	return errors.Join(errs...)
}

// resendBound is what one crash may re-send by the delivery promise (README, "Delivery
// guarantees"): the events in flight, max_in_flight, plus what one commit interval finishes, at
// most max_in_flight sends every Latency, so max_in_flight × commit_interval / latency. For the
// issue's run (1024, 200ms, 500ms) that is 1024 + 410 = 1434.
func (p params) resendBound() int {
	if p.Latency <= 0 {
		return p.MaxInFlight
	}
	return p.MaxInFlight + int(math.Ceil(float64(p.MaxInFlight)*float64(p.CommitInterval)/float64(p.Latency)))
}

// command is the wxchaos command line that repeats scenario name with these params and seed:
// the flags whose values differ from fullParams, in flag order.
func (p params) command(name string, seed uint64) string {
	def := fullParams()
	fsDef, fsCur := flag.NewFlagSet("", flag.ContinueOnError), flag.NewFlagSet("", flag.ContinueOnError)
	def.flags(fsDef)
	p.flags(fsCur)
	args := []string{"wxchaos", "-scenario", name, "-seed", fmt.Sprint(seed)}
	fsCur.VisitAll(func(f *flag.Flag) {
		if v := f.Value.String(); v != fsDef.Lookup(f.Name).Value.String() {
			args = append(args, "-"+f.Name, v)
		}
	})
	return strings.Join(args, " ")
}
