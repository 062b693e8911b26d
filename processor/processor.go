package processor

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// Sender sends one WeChat request, with whatever retries its policy allows, and reports the
// final answer. *wechat.Client implements it.
type Sender interface {
	Send(ctx context.Context, req wechat.Request) wechat.Result
}

// Publisher writes a record and reports once, from any goroutine, when the broker acknowledged
// it (nil) or when it never will (an error; a *kafkaio.PermanentError when retrying cannot
// help). *kafkaio.Writer implements it.
type Publisher interface {
	Publish(rec kafkaio.Record, done func(error))
}

// Consumer is the Kafka side of consuming: group membership, commits and fetching.
// *kafkaio.Client implements it.
type Consumer interface {
	JoinGroup(cfg kafkaio.GroupConfig) (*kafkaio.Group, error)
	Fetch(ctx context.Context, parts []*kafkaio.Partition, recv kafkaio.Receiver, o kafkaio.FetchOptions)
}

// RuleSource yields the rule set to evaluate the next event with. Every event is evaluated by
// exactly one set, so a reload that swaps the set takes effect between events.
type RuleSource interface {
	Current() *rules.Set
}

// Config configures a Processor. Zero values take the documented defaults.
type Config struct {
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
	// StartOffset is where a partition with no committed offset starts: kafkaio.FirstOffset
	// (default) or kafkaio.LastOffset.
	StartOffset int64
	// FetchLinger is kafkaio.FetchOptions.Linger: default 4ms, negative off.
	FetchLinger time.Duration
	// CommitMetadataBytes bounds the commit metadata that lists the offsets finished beyond
	// each committed offset (see commitmeta.go). Default 4000, under Kafka's default
	// offset.metadata.max.bytes; negative: none.
	CommitMetadataBytes int
	// DryRun makes every rule dry-run: everything but the WeChat call.
	DryRun bool
	// MaxDelayed bounds the delayed notifications held in memory until their time, across all
	// delay topic partitions; fetching them pauses at the bound. Default 10000.
	MaxDelayed int
	// ControlMaxKeys bounds the keys the dedupe state, and separately the throttle state, of
	// each rule keeps; past it the oldest key is forgotten early. Default 1000000.
	ControlMaxKeys int
	// MaxHeld bounds the events whose notifications are held through a WeChat outage (hold.go)
	// outside the in-flight budget. Default 20000.
	MaxHeld int
	// MaxHold ends a notification held longer than this as failed. Default 1h.
	MaxHold time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

// maxSpan bounds, per partition, the offsets between the commit point and the last offset
// fetched: a partition whose oldest unfinished event is that far behind stops fetching until it
// finishes (memory and the redo after a crash stay bounded whatever one stuck event does).
const maxSpan = 1 << 20

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
		c.StartOffset = kafkaio.FirstOffset
	}
	if c.CommitMetadataBytes == 0 {
		c.CommitMetadataBytes = defaultMetaBudget
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.MaxDelayed <= 0 {
		c.MaxDelayed = 10000
	}
	if c.ControlMaxKeys <= 0 {
		c.ControlMaxKeys = 1000000
	}
	if c.MaxHeld <= 0 {
		c.MaxHeld = 20000
	}
	if c.MaxHold <= 0 {
		c.MaxHold = time.Hour
	}
}

// Validate reports the first missing or inconsistent field, named as in the config file.
func (c Config) Validate() error {
	switch {
	case c.GroupID == "":
		return errors.New("kafka.group_id: empty")
	case len(c.Topics) == 0:
		return errors.New("kafka.events_topic: empty")
	case c.OutcomesTopic == "":
		return errors.New("kafka.outcomes_topic: empty")
	case c.DeadLetterTopic == "":
		return errors.New("kafka.dead_letter_topic: empty")
	case c.StartOffset != 0 && c.StartOffset != kafkaio.FirstOffset && c.StartOffset != kafkaio.LastOffset:
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
	kafka   Consumer
	log     logrus.FieldLogger
	metrics *metrics
	sched   *scheduler
	budget  chan struct{}
	// delayBudget bounds the delayed notifications held (delay.go).
	delayBudget chan struct{}
	// heldBudget bounds the events held through a WeChat outage (hold.go).
	heldBudget chan struct{}
	holds      *holds
	controls   *controls
	sendCtx    context.Context
	joined     atomic.Bool
	warn       *logLimiter
	// fatal ends Run with an error: an outcome the broker refuses for good.
	fatal     context.CancelCauseFunc
	fatalOnce sync.Once
}

// New builds a Processor. Metrics are registered on reg.
func New(cfg Config, rs RuleSource, sender Sender, pub Publisher, kc Consumer, reg prometheus.Registerer, log logrus.FieldLogger) (*Processor, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.withDefaults()
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	p := &Processor{
		cfg: cfg, rules: rs, sender: sender, pub: pub, kafka: kc, log: log, metrics: m,
		sched:       newScheduler(),
		budget:      make(chan struct{}, cfg.MaxInFlight),
		delayBudget: make(chan struct{}, cfg.MaxDelayed),
		heldBudget:  make(chan struct{}, cfg.MaxHeld),
		controls:    newControls(cfg.ControlMaxKeys, m.controlEvicted),
		warn:        newLogLimiter(log, 20),
		fatal:       func(error) {},
	}
	p.holds = newHolds(p)
	m.prepare(cfg)
	m.prepareRules(rs.Current())
	return p, nil
}

// RulesChanged creates the metric series of set's rules at 0 (notifications by status, `when`
// errors, delays, held account and API), so that alerts and dashboards see a rule before its
// first event. Call it when a reload installs a new set in the RuleSource; New does it for the
// set current then.
func (p *Processor) RulesChanged(set *rules.Set) { p.metrics.prepareRules(set) }

// Joined reports whether the processor currently holds a consumer group generation.
func (p *Processor) Joined() bool { return p.joined.Load() }

// Run consumes until ctx is cancelled, then shuts down in order: stop fetching, finish
// in-flight work within DrainTimeout, commit, leave the group. Outcomes of finished work have
// been acknowledged by the broker before their offsets are committed; the caller closes the
// Publisher after Run returns. Run returns an error, after the same shutdown, when the broker
// refuses an outcome for good (a *kafkaio.PermanentError: not authorized, topic missing): its
// event and everything after it stay uncommitted.
func (p *Processor) Run(ctx context.Context) error {
	runCtx, fatal := context.WithCancelCause(ctx)
	defer fatal(nil)
	p.fatal = fatal
	sendCtx, cancelSends := context.WithCancel(context.WithoutCancel(ctx))
	defer func() {
		// Sends abandoned by the drain stop, and the workers that ran them exit, before Run
		// returns: the caller closes the Publisher next.
		cancelSends()
		p.holds.close()
		p.sched.close()
		p.sched.wait()
	}()
	p.sendCtx = sendCtx

	topics := slices.Clone(p.cfg.Topics)
	if p.cfg.DelayTopic != "" {
		topics = append(topics, p.cfg.DelayTopic)
	}
	group, err := p.kafka.JoinGroup(kafkaio.GroupConfig{
		GroupID: p.cfg.GroupID, Topics: topics, SessionTimeout: p.cfg.SessionTimeout,
		HeartbeatInterval: p.cfg.HeartbeatInterval, RebalanceTimeout: p.cfg.RebalanceTimeout,
	})
	if err != nil {
		return err
	}
	for {
		gen, err := group.Next(runCtx)
		if err != nil {
			break // runCtx ended, or the group closed
		}
		p.metrics.rebalances.Inc()
		gen.Start(func(gctx context.Context) { p.runGeneration(mergeDone(gctx, runCtx), gen) })
	}
	// Closing the group ends the current generation: runGeneration drains, commits and returns
	// before Close leaves the group.
	err = group.Close()
	p.joined.Store(false)
	if cause := context.Cause(runCtx); ctx.Err() == nil && cause != nil && !errors.Is(cause, context.Canceled) {
		return cause
	}
	return err
}

// mergeDone returns a context that ends when a or b ends.
func mergeDone(a, b context.Context) context.Context {
	ctx, cancel := context.WithCancel(a)
	stop := context.AfterFunc(b, cancel)
	context.AfterFunc(ctx, func() { stop() })
	return ctx
}

// stopWith ends Run because of err (the first such error wins).
func (p *Processor) stopWith(err error) {
	p.fatalOnce.Do(func() {
		p.log.WithError(err).Error("stopping: an outcome cannot be written; nothing past it is committed")
		p.fatal(err)
	})
}

// partition is one assigned partition within a generation.
type partition struct {
	topic   string
	id      int
	kp      *kafkaio.Partition
	tracker *tracker
	gctx    context.Context
	// committed and committedMeta are the last commit (committer goroutine only); metaBudget
	// is how much metadata commits carry, halved when the broker refuses it as too large.
	committed     int64
	committedMeta string
	metaBudget    int
	consumed      prometheus.Counter   // the topic's consumed counter (fetch goroutine only)
	notes         []rules.Notification // handle's buffer (fetch goroutine only)
	label         string               // the partition id as a metric label
}

// revoked reports whether the partition's generation ended: its work is handed back, not
// finished.
func (pt *partition) revoked() bool { return pt.gctx.Err() != nil }

// countConsumed counts one fetched record; it runs on the partition's fetch goroutine.
func (pt *partition) countConsumed(m *metrics) {
	if pt.consumed == nil {
		pt.consumed = m.consumed.WithLabelValues(pt.topic)
	}
	pt.consumed.Inc()
}

// checkSpan pauses fetching the partition while maxSpan offsets or more lie between its commit
// point and its last fetched offset, and resumes it below half of that.
func (pt *partition) checkSpan() {
	switch span := pt.tracker.span(); {
	case span >= maxSpan:
		pt.kp.Pause()
	case span < maxSpan/2 && pt.kp.Paused():
		pt.kp.Resume()
	}
}

func (p *Processor) runGeneration(gctx context.Context, gen *kafkaio.Generation) {
	parts := make([]*partition, len(gen.Assignments))
	var events, delayed []*kafkaio.Partition
	for i, a := range gen.Assignments {
		pt := &partition{topic: a.Topic, id: a.Partition, gctx: gctx, tracker: newTracker(a.Offset), committed: a.Offset,
			committedMeta: a.Metadata, metaBudget: p.cfg.CommitMetadataBytes, label: strconv.Itoa(a.Partition)}
		pt.kp = kafkaio.NewPartition(a.Topic, a.Partition, a.Offset)
		pt.kp.Tag = i
		if a.Offset >= 0 {
			fs, err := decodeFinished(a.Offset, a.Metadata)
			if err != nil {
				p.log.WithError(err).WithFields(logrus.Fields{"topic": a.Topic, "partition": a.Partition}).Warn("ignoring the commit metadata: events finished beyond the committed offset will be redone")
			} else if len(fs.ranges) > 0 {
				pt.tracker.restore(fs)
				p.log.WithFields(logrus.Fields{"topic": a.Topic, "partition": a.Partition, "offset": a.Offset, "finished_beyond": fs.count()}).
					Info("resuming a partition: events finished beyond the committed offset will be passed over")
			}
		}
		parts[i] = pt
		if a.Topic == p.cfg.DelayTopic {
			delayed = append(delayed, pt.kp)
		} else {
			events = append(events, pt.kp)
		}
	}
	p.joined.Store(true)
	p.metrics.assigned.Set(float64(len(parts)))
	p.log.WithFields(logrus.Fields{"generation": gen.ID, "member": gen.MemberID, "partitions": len(parts)}).Info("joined consumer group generation")

	var fetchers, holds sync.WaitGroup
	opts := kafkaio.FetchOptions{StartOffset: p.cfg.StartOffset, Linger: p.cfg.FetchLinger}
	fetchers.Add(2)
	go func() {
		defer fetchers.Done()
		p.kafka.Fetch(gctx, events, p.eventReceiver(parts), opts)
	}()
	go func() {
		defer fetchers.Done()
		p.kafka.Fetch(gctx, delayed, p.delayReceiver(parts, &holds), opts)
	}()

	c := &committer{p: p, gen: gen}
	ticker := time.NewTicker(p.cfg.CommitInterval)
	defer ticker.Stop()
loop:
	for {
		select {
		case <-gctx.Done():
			break loop
		case <-ticker.C:
			c.commit(parts)
		}
	}

	// Revoked (rebalance or shutdown): fetching stops with gctx. Held delayed records are handed
	// back at once; every other partition commits as soon as its own in-flight work is done,
	// within the drain deadline, while the generation is still ours.
	fetchers.Wait()
	holds.Wait()
	p.holds.abandonRevoked() // held notifications cannot finish in a drain: hand them back now
	// kafka-go stops heartbeating when a generation ends; without heartbeats a drain longer than
	// the session timeout would get this member evicted, and its partitions handed to another
	// member while its sends are still running (duplicates). Keep the session alive meanwhile.
	stopHeartbeats := gen.KeepAlive(p.log)
	defer stopHeartbeats()
	abandoned := c.drain(parts)
	for _, pt := range parts {
		p.metrics.lag.DeleteLabelValues(pt.topic, pt.label)
	}
	p.metrics.assigned.Set(0)
	fields := logrus.Fields{"generation": gen.ID, "partitions": len(parts)}
	if abandoned > 0 {
		p.log.WithFields(fields).WithField("abandoned_events", abandoned).Warn("partitions revoked before their in-flight work finished; the next owner will redo it")
	} else {
		p.log.WithFields(fields).Info("partitions revoked after finishing in-flight work and committing")
	}
}

// committer commits a generation's partitions.
type committer struct {
	p     *Processor
	gen   *kafkaio.Generation
	ended bool // the coordinator ended the generation: commits are refused from now on
}

// commit commits, in one request, every partition whose commit point or finished offsets
// beyond it changed.
func (c *committer) commit(parts []*partition) {
	p := c.p
	if c.ended {
		return
	}
	var offsets []kafkaio.Offset
	var moved []*partition
	for _, pt := range parts {
		cp, meta := pt.tracker.state(pt.metaBudget)
		if hwm := pt.kp.HighWatermark(); hwm >= 0 && cp >= 0 {
			p.metrics.lag.WithLabelValues(pt.topic, pt.label).Set(float64(max(hwm-cp, 0)))
		}
		if cp < 0 || cp == pt.committed && meta == pt.committedMeta {
			continue
		}
		offsets = append(offsets, kafkaio.Offset{Topic: pt.topic, Partition: pt.id, Offset: cp, Metadata: meta, LeaderEpoch: pt.kp.LeaderEpoch()})
		moved = append(moved, pt)
	}
	if len(offsets) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t0 := time.Now()
	err := c.gen.Commit(ctx, offsets)
	cancel()
	if d := time.Since(t0); d > time.Second {
		p.warn.WithFields(logrus.Fields{"took": d.Round(time.Millisecond).String(), "partitions": len(offsets)}).Warn("offset commit was slow: nothing else was committed meanwhile")
	}
	var cerr *kafkaio.CommitError
	errors.As(err, &cerr)
	if err != nil && cerr == nil { // the request failed: nothing committed, retried next tick
		p.metrics.commitErrors.Inc()
		p.warn.WithError(err).WithField("generation", c.gen.ID).Warn("offset commit failed; will retry")
		return
	}
	for i, pt := range moved {
		if cerr != nil {
			if perr := cerr.Failed[kafkaio.TopicPartition{Topic: pt.topic, Partition: pt.id}]; perr != nil {
				if errors.Is(perr, kafkaio.ErrOffsetMetadataTooLarge) && pt.metaBudget > 0 {
					pt.metaBudget /= 2 // the broker's offset.metadata.max.bytes is lower: retried next tick
				}
				continue
			}
		}
		pt.committed, pt.committedMeta = offsets[i].Offset, offsets[i].Metadata
	}
	if cerr != nil {
		p.metrics.commitErrors.Inc()
		if errors.Is(cerr, kafkaio.ErrGenerationEnded) {
			c.ended = true
			p.log.WithError(cerr).WithField("generation", c.gen.ID).Warn("the group ended this generation before its offsets were committed; the next owner redoes what was not")
			return
		}
		p.warn.WithError(cerr).WithField("generation", c.gen.ID).Warn("offset commit failed for some partitions; will retry")
	}
	p.metrics.lastCommit.Set(float64(p.cfg.Now().UnixNano()) / 1e9)
}

// drain commits each revoked partition as soon as its in-flight work is done, until every one
// is or the drain deadline passes; then it commits what is finished of the rest. It returns how
// many events were left unfinished.
func (c *committer) drain(parts []*partition) int {
	p := c.p
	done := make(chan *partition, len(parts))
	quit := make(chan struct{})
	defer close(quit)
	for _, pt := range parts {
		go func() {
			select {
			case <-pt.tracker.drained():
				done <- pt
			case <-quit:
			}
		}()
	}
	deadline := time.NewTimer(p.cfg.DrainTimeout)
	defer deadline.Stop()
	left := len(parts)
wait:
	for left > 0 {
		select {
		case pt := <-done:
			ready := []*partition{pt}
			for more := true; more; {
				select {
				case pt := <-done:
					ready = append(ready, pt)
				default:
					more = false
				}
			}
			left -= len(ready)
			c.commit(ready)
		case <-deadline.C:
			break wait
		}
	}
	abandoned := 0
	for _, pt := range parts {
		abandoned += pt.tracker.inFlight()
	}
	c.commit(parts)
	return abandoned
}
