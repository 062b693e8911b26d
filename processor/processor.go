package processor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
	"github.com/wxnotify/wxnotify/sink/kafkaconn"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// Sender sends one WeChat request, with whatever retries its policy allows, and reports the
// final answer. *wechat.Client implements it.
type Sender interface {
	Send(ctx context.Context, req wechat.Request) wechat.Result
}

// Publisher writes a record and reports once, from any goroutine, when the broker acknowledged
// it (nil) or when it never will (an error). *sink.Writer implements it.
type Publisher interface {
	Publish(rec sink.Record, done func(error))
}

// RuleSource yields the rule set to evaluate the next event with. Every event is evaluated by
// exactly one set, so a reload that swaps the set takes effect between events.
type RuleSource interface {
	Current() *rules.Set
}

// Config configures a Processor. Zero values take the documented defaults.
type Config struct {
	Brokers         []string
	GroupID         string
	Topics          []string
	OutcomesTopic   string
	DeadLetterTopic string
	// DelayTopic holds notifications delayed by quiet_hours (action delay) until their time; the
	// processor also consumes it, and it must exist. "" disables delayed delivery: such
	// notifications are then skipped.
	DelayTopic string

	// MaxInFlight bounds the events fetched but not finished, across all partitions: the
	// memory bound and the back-pressure on fetching. Default 1024.
	MaxInFlight int
	// CommitInterval is how often each partition's finished watermark is committed. Default 200ms.
	CommitInterval time.Duration
	// DrainTimeout bounds how long revoked partitions (rebalance or shutdown) wait for in-flight
	// work before their final commit; work still running then is abandoned uncommitted and will be
	// redone by the next owner. Default 15s; keep it below RebalanceTimeout.
	DrainTimeout time.Duration
	// SessionTimeout, HeartbeatInterval and RebalanceTimeout are the consumer group's. Defaults
	// 10s, 3s, 30s.
	SessionTimeout, HeartbeatInterval, RebalanceTimeout time.Duration
	// StartOffset is where a partition with no committed offset starts: kafka.FirstOffset
	// (default) or kafka.LastOffset.
	StartOffset int64
	// Dialer connects to the brokers (TLS, SASL); nil = kafka-go's default dialer. The group
	// protocol and the delay topic use it directly; metadata and offset lookups go through a
	// kafka.Transport with the same TLS, SASL and client ID, and event fetches over connections
	// dialed with that transport's settings.
	Dialer *kafka.Dialer
	// FetchLinger is how long the broker may gather records for a fetch while records keep
	// arriving (the fetch asks for 256 KiB or FetchLinger, whichever comes first; a fetch that
	// came back empty long-polls instead). It trades a few milliseconds of latency for far fewer
	// fetches at moderate rates. Default 4ms; a negative value turns it off (every fetch answers
	// at its first record).
	FetchLinger time.Duration
	// DryRun makes every rule dry-run: everything but the WeChat call.
	DryRun bool
	// MaxDelayed bounds the delayed notifications held in memory until their time, across all
	// delay topic partitions; fetching them pauses at the bound. Default 10000.
	MaxDelayed int
	// ControlMaxKeys bounds the keys the dedupe state, and separately the throttle state, of
	// each rule keeps; past it the oldest key is forgotten early. Default 1000000.
	ControlMaxKeys int
	// Now is the clock; default time.Now.
	Now func() time.Time
}

func (c *Config) withDefaults() {
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1024
	}
	if c.CommitInterval <= 0 {
		c.CommitInterval = 200 * time.Millisecond
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 15 * time.Second
	}
	if c.SessionTimeout <= 0 {
		c.SessionTimeout = 10 * time.Second
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = 3 * time.Second
	}
	if c.RebalanceTimeout <= 0 {
		c.RebalanceTimeout = 30 * time.Second
	}
	if c.StartOffset == 0 {
		c.StartOffset = kafka.FirstOffset
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.FetchLinger == 0 {
		c.FetchLinger = 4 * time.Millisecond
	}
	if c.MaxDelayed <= 0 {
		c.MaxDelayed = 10000
	}
	if c.ControlMaxKeys <= 0 {
		c.ControlMaxKeys = 1000000
	}
}

// Validate reports the first missing or inconsistent field, named as in the config file.
func (c Config) Validate() error {
	switch {
	case len(c.Brokers) == 0:
		return errors.New("kafka.brokers: empty")
	case c.GroupID == "":
		return errors.New("kafka.group_id: empty")
	case len(c.Topics) == 0:
		return errors.New("kafka.events_topic: empty")
	case c.OutcomesTopic == "":
		return errors.New("kafka.outcomes_topic: empty")
	case c.DeadLetterTopic == "":
		return errors.New("kafka.dead_letter_topic: empty")
	case c.StartOffset != 0 && c.StartOffset != kafka.FirstOffset && c.StartOffset != kafka.LastOffset:
		return errors.New("kafka.start_offset: must be first or last")
	}
	for _, t := range c.Topics {
		if t == c.OutcomesTopic || t == c.DeadLetterTopic {
			return fmt.Errorf("kafka.events_topic: %q is also the outcomes or dead-letter topic", t)
		}
		if t == c.DelayTopic {
			return fmt.Errorf("kafka.events_topic: %q is also the delay topic", t)
		}
	}
	if c.DelayTopic != "" && (c.DelayTopic == c.OutcomesTopic || c.DelayTopic == c.DeadLetterTopic) {
		return fmt.Errorf("kafka.delay_topic: %q is also the outcomes or dead-letter topic", c.DelayTopic)
	}
	return nil
}

// Processor consumes events and produces notifications and outcomes. Run it once.
type Processor struct {
	cfg     Config
	rules   RuleSource
	sender  Sender
	pub     Publisher
	log     logrus.FieldLogger
	metrics *metrics
	sched   *scheduler
	budget  chan struct{}
	// delayBudget bounds the delayed notifications held (delay.go).
	delayBudget chan struct{}
	controls    *controls
	sendCtx     context.Context
	joined      atomic.Bool
	warn        *logLimiter
	// client sends what kafka-go's ConsumerGroup does not: metadata and offset
	// lookups (fetch.go), and heartbeats while draining (heartbeat.go).
	client *kafka.Client
	// conns connects each fetch loop to its broker, with client's settings.
	conns kafkaconn.Dialer
}

// New builds a Processor. Metrics are registered on reg.
func New(cfg Config, rs RuleSource, sender Sender, pub Publisher, reg prometheus.Registerer, log logrus.FieldLogger) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	return &Processor{
		cfg: cfg, rules: rs, sender: sender, pub: pub, log: log, metrics: m,
		sched:       newScheduler(),
		budget:      make(chan struct{}, cfg.MaxInFlight),
		delayBudget: make(chan struct{}, cfg.MaxDelayed),
		controls:    newControls(cfg.ControlMaxKeys, m.controlEvicted),
		warn:        newLogLimiter(log, 20),
	}, nil
}

// Joined reports whether the processor currently holds a consumer group generation.
func (p *Processor) Joined() bool { return p.joined.Load() }

// Run consumes until ctx is cancelled, then shuts down in order: stop fetching, finish
// in-flight work within DrainTimeout, commit, leave the group. Outcomes of finished work have
// been acknowledged by the broker before their offsets are committed; the caller closes the
// Publisher after Run returns.
func (p *Processor) Run(ctx context.Context) error {
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		// Sends abandoned by the drain stop, and the workers that ran them exit, before Run
		// returns: the caller closes the Publisher next.
		cancelSends()
		p.sched.close()
		p.sched.wait()
	}()
	p.sendCtx = sendCtx

	if err := p.ensureTopics(ctx); err != nil {
		return err
	}
	topics := p.cfg.Topics
	if p.cfg.DelayTopic != "" {
		topics = append(slices.Clip(topics), p.cfg.DelayTopic)
	}
	p.client = brokerClient(p.cfg.Brokers, p.cfg.Dialer)
	p.conns = kafkaconn.FromTransport(p.client.Transport)
	defer closeIdle(p.client)
	group, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                p.cfg.GroupID,
		Brokers:           p.cfg.Brokers,
		Dialer:            p.cfg.Dialer,
		Topics:            topics,
		SessionTimeout:    p.cfg.SessionTimeout,
		HeartbeatInterval: p.cfg.HeartbeatInterval,
		RebalanceTimeout:  p.cfg.RebalanceTimeout,
		StartOffset:       p.cfg.StartOffset,
		JoinGroupBackoff:  time.Second,
		ErrorLogger:       kafka.LoggerFunc(func(f string, a ...any) { p.log.Warnf("kafka group: "+f, a...) }),
		Logger:            kafka.LoggerFunc(func(f string, a ...any) { p.log.Debugf("kafka group: "+f, a...) }),
	})
	if err != nil {
		return fmt.Errorf("consumer group: %w", err)
	}
	for {
		gen, err := group.Next(ctx)
		if ctx.Err() != nil {
			break
		}
		if err != nil {
			p.log.WithError(err).Warn("joining the consumer group failed; retrying")
			continue
		}
		p.metrics.rebalances.Inc()
		gen.Start(func(gctx context.Context) { p.runGeneration(gctx, gen) })
	}
	// Closing the group ends the current generation: runGeneration drains, commits and returns
	// before Close leaves the group.
	err = group.Close()
	p.joined.Store(false)
	return err
}

// partition is one assigned partition within a generation.
type partition struct {
	topic   string
	id      int
	tracker *tracker
	hwm     atomic.Int64 // high watermark seen at the last fetch
	next    int64        // events: offset of the next record to fetch (fetch goroutine only)
	// outOfRange marks an events partition whose offset the broker refused as outside its log:
	// it is positioned again before the next fetch (fetch goroutine only).
	outOfRange bool
	committed  int64                // last committed offset (committer goroutine only)
	consumed   prometheus.Counter   // the topic's consumed counter (fetch goroutine only)
	notes      []rules.Notification // handle's buffer (fetch goroutine only)
}

// countConsumed counts one fetched record; it runs on the partition's fetch goroutine.
func (pt *partition) countConsumed(m *metrics) {
	if pt.consumed == nil {
		pt.consumed = m.consumed.WithLabelValues(pt.topic)
	}
	pt.consumed.Inc()
}

func (p *Processor) runGeneration(gctx context.Context, gen *kafka.Generation) {
	var parts []*partition
	for topic, assigned := range gen.Assignments {
		for _, a := range assigned {
			parts = append(parts, &partition{topic: topic, id: a.ID, tracker: newTracker(a.Offset), committed: a.Offset, next: a.Offset})
		}
	}
	p.joined.Store(true)
	p.metrics.assigned.Set(float64(len(parts)))
	p.log.WithFields(logrus.Fields{"generation": gen.ID, "member": gen.MemberID, "partitions": len(parts)}).Info("joined consumer group generation")

	var fetchers, holds sync.WaitGroup
	var events []*partition
	for _, pt := range parts {
		if pt.topic != p.cfg.DelayTopic {
			events = append(events, pt)
			continue
		}
		fetchers.Add(1)
		go func() {
			defer fetchers.Done()
			p.fetchDelayed(gctx, pt, &holds)
		}()
	}
	slices.SortFunc(events, func(a, b *partition) int {
		return cmp.Or(cmp.Compare(a.topic, b.topic), cmp.Compare(a.id, b.id))
	})
	fetchers.Add(1)
	go func() {
		defer fetchers.Done()
		p.fetchEvents(gctx, events)
	}()

	ticker := time.NewTicker(p.cfg.CommitInterval)
	defer ticker.Stop()
loop:
	for {
		select {
		case <-gctx.Done():
			break loop
		case <-ticker.C:
			p.commit(gen, parts)
		}
	}

	// Revoked (rebalance or shutdown): fetching stops with gctx; wait for in-flight work within
	// the drain deadline, then make the final commit while the generation is still ours.
	fetchers.Wait()
	holds.Wait() // held delayed records are handed back at once, not drained
	// kafka-go stops heartbeating when a generation ends; without heartbeats a drain longer than
	// the session timeout would get this member evicted, and its partitions handed to another
	// member while its sends are still running (duplicates). Keep the session alive meanwhile.
	stopHeartbeats := p.heartbeatWhileDraining(gen)
	defer stopHeartbeats()
	deadline := time.NewTimer(p.cfg.DrainTimeout)
	defer deadline.Stop()
	abandoned := 0
	for _, pt := range parts {
		select {
		case <-pt.tracker.drained():
		case <-deadline.C:
			deadline.Reset(0)
		}
		abandoned += pt.tracker.inFlight()
	}
	p.commit(gen, parts)
	for _, pt := range parts {
		p.metrics.lag.DeleteLabelValues(pt.topic, fmt.Sprint(pt.id))
	}
	p.metrics.assigned.Set(0)
	fields := logrus.Fields{"generation": gen.ID, "partitions": len(parts)}
	if abandoned > 0 {
		p.log.WithFields(fields).WithField("abandoned_events", abandoned).Warn("partitions revoked before their in-flight work finished; the next owner will redo it")
	} else {
		p.log.WithFields(fields).Info("partitions revoked after finishing in-flight work and committing")
	}
}

// commit commits every partition whose finished watermark moved, in one request.
func (p *Processor) commit(gen *kafka.Generation, parts []*partition) {
	offsets := map[string]map[int]int64{}
	var moved []*partition
	for _, pt := range parts {
		cp := pt.tracker.commitPoint()
		if hwm := pt.hwm.Load(); hwm > 0 && cp >= 0 {
			p.metrics.lag.WithLabelValues(pt.topic, fmt.Sprint(pt.id)).Set(float64(max(hwm-cp, 0)))
		}
		// The commit point only moves back through tracker.reset, after the log was truncated
		// below it: then the committed offset moves back too.
		if cp < 0 || cp == pt.committed {
			continue
		}
		if offsets[pt.topic] == nil {
			offsets[pt.topic] = map[int]int64{}
		}
		offsets[pt.topic][pt.id] = cp
		moved = append(moved, pt)
	}
	if len(moved) == 0 {
		return
	}
	if err := gen.CommitOffsets(offsets); err != nil {
		p.metrics.commitErrors.Inc()
		p.log.WithError(err).WithField("generation", gen.ID).Warn("offset commit failed; will retry")
		return
	}
	for _, pt := range moved {
		pt.committed = offsets[pt.topic][pt.id]
	}
	p.metrics.lastCommit.Set(float64(p.cfg.Now().UnixNano()) / 1e9)
}

// consume reads one partition from its commit point until gctx ends, taking a slot of budget
// before each fetch (the back-pressure: a full budget stops fetching) and passing each record to
// handle in offset order. handle owns the slot from then on.
func (p *Processor) consume(gctx context.Context, pt *partition, budget chan struct{}, handle func(kafka.Message)) {
	r := p.newReader(pt)
	defer r.Close()
	if err := r.SetOffset(pt.tracker.commitPoint()); err != nil {
		p.log.WithError(err).WithFields(logrus.Fields{"topic": pt.topic, "partition": pt.id}).Error("cannot position the partition reader")
		return
	}
	for {
		select {
		case budget <- struct{}{}:
		case <-gctx.Done():
			return
		}
		msg, err := r.FetchMessage(gctx)
		if err != nil {
			<-budget
			if gctx.Err() != nil {
				return
			}
			p.warn.WithError(err).WithFields(logrus.Fields{"topic": pt.topic, "partition": pt.id}).Warn("fetch failed; retrying")
			select {
			case <-time.After(200 * time.Millisecond):
			case <-gctx.Done():
				return
			}
			continue
		}
		handle(msg)
	}
}
