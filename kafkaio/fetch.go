package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
	"github.com/sirupsen/logrus"
)

// Fetching.
//
// One request asks a leader broker for every assigned partition it leads (kafka-go's Reader
// would send one request per partition), through the Transport, which routes the request to
// the leader in its metadata cache. Each leader has a fetch loop of its own. A partition whose
// fetch fails (its leader moved, its offset left the log, ...) leaves its loop and is routed
// again, after a backoff, by the leaders in the then current metadata, while the other
// partitions keep flowing. While records keep arriving, a fetch lets the broker gather them for
// FetchOptions.Linger; a fetch that came back empty long-polls instead, so an idle consumer
// sends about two fetches a second per broker.

const (
	// fetchMaxBytes bounds one fetch response (all partitions): besides the records in flight,
	// the most memory a fetch loop holds. A record batch bigger than this is still returned
	// whole when it comes first (Kafka's rule), so no record is ever too big to fetch.
	fetchMaxBytes = 2 << 20
	// fetchPartitionMaxBytes bounds one partition's share, so one partition's backlog does not
	// fill every response while the others wait.
	fetchPartitionMaxBytes = 512 << 10
	// fetchLongPoll is how long an idle fetch waits at the broker for a first record.
	fetchLongPoll = 500 * time.Millisecond
	// fetchLingerMinBytes is the data that ends a lingering fetch early: at a backlog the
	// broker answers at once.
	fetchLingerMinBytes = 256 << 10
	// fetchTimeout is how long past its wait a fetch may take before it is given up.
	fetchTimeout = 10 * time.Second
	// readCommitted is the fetch isolation level that hides open transactions.
	readCommitted = 1
	// rerouteMaxBackoff bounds the wait before a failing partition is routed again.
	rerouteMaxBackoff = 2 * time.Second
)

// Partition is one partition being fetched. The fetcher owns its position; the receiver may
// Pause and Resume it from any goroutine.
type Partition struct {
	Topic string
	ID    int
	// Tag is the caller's, e.g. an index into its own per-partition state.
	Tag int

	// Owned by whichever fetch goroutine holds the partition (a leader loop, or the router
	// between loops); handed over under fetcher.mu.
	next        int64 // offset of the next record to fetch; < 0: position per StartOffset
	outOfRange  bool  // the broker refused next as outside its log: position again
	leaderEpoch int32 // from the metadata it was routed by
	failures    int   // consecutive failed routes or fetches
	notBefore   time.Time

	hwm    atomic.Int64
	epoch  atomic.Int32 // leader epoch of the last record batch fetched
	paused atomic.Bool
	f      atomic.Pointer[fetcher]
}

// NewPartition returns a partition to fetch from offset; a negative offset (no committed
// offset) starts per FetchOptions.StartOffset.
func NewPartition(topic string, id int, offset int64) *Partition {
	p := &Partition{Topic: topic, ID: id, next: offset, leaderEpoch: -1}
	p.hwm.Store(-1)
	p.epoch.Store(-1)
	return p
}

// HighWatermark returns the partition's high watermark at its last fetch, -1 before.
func (p *Partition) HighWatermark() int64 { return p.hwm.Load() }

// LeaderEpoch returns the leader epoch of the last record batch fetched, -1 if unknown.
func (p *Partition) LeaderEpoch() int32 { return p.epoch.Load() }

// Pause stops fetching the partition after the fetch in flight; Resume starts it again.
func (p *Partition) Pause() { p.paused.Store(true) }

// Resume undoes Pause.
func (p *Partition) Resume() {
	if p.paused.CompareAndSwap(true, false) {
		if f := p.f.Load(); f != nil {
			f.wakeLoops()
		}
	}
}

// Paused reports whether the partition is paused.
func (p *Partition) Paused() bool { return p.paused.Load() }

// Message is one fetched record, handed to the Receiver in offset order per partition.
type Message struct {
	Offset  int64
	Key     []byte
	Value   []byte
	Headers []kafka.Header
	Time    time.Time
	// Skip marks an offset that is not an event: a transaction marker or a record of an
	// aborted transaction. It takes an offset, and commits pass over it; no admission is held
	// for it.
	Skip bool
}

// Receiver takes fetched records. Package processor implements it.
type Receiver interface {
	// Admit blocks until one more record may be taken into flight (the consumer's in-flight
	// budget), and returns false when ctx ended first. Each fetch holds one admission while it
	// waits for the broker, so a full budget stops fetching.
	Admit(ctx context.Context) bool
	// Return gives back an admission no record used.
	Return()
	// Receive takes one record of p. A record that is not Skip comes with an admission, which
	// the receiver owns from then on. Records of one partition arrive in offset order, from one
	// goroutine at a time; Receive must not block for long. *m is reused for the next record
	// once Receive returns: a receiver that keeps the record copies *m (its Key, Value and
	// Headers are the receiver's; they are not written again).
	Receive(p *Partition, m *Message)
}

// FetchOptions tune Fetch.
type FetchOptions struct {
	// StartOffset is where a partition without an offset starts: kafka.FirstOffset (default)
	// or kafka.LastOffset. An offset that left the log resumes there too, except that an offset
	// below the log start moves to the log start whatever the policy.
	StartOffset int64
	// Linger is how long the broker may gather records for a fetch while records keep arriving
	// (the fetch asks for 256 KiB or Linger, whichever comes first). Default 4ms; negative: off
	// (every fetch answers at its first record).
	Linger time.Duration
}

// Fetch fetches parts (read_committed) and hands their records to recv until ctx ends. It
// returns once every fetch it started has ended; the partitions' positions then point at the
// first record not handed on.
func (c *Client) Fetch(ctx context.Context, parts []*Partition, recv Receiver, o FetchOptions) {
	if o.StartOffset == 0 {
		o.StartOffset = kafka.FirstOffset
	}
	if o.Linger == 0 {
		o.Linger = 4 * time.Millisecond
	}
	f := &fetcher{c: c, recv: recv, opts: o, loops: map[int32]*leaderLoop{}, wake: make(chan struct{}, 1),
		log: c.log.WithField("component", "fetch")}
	for _, p := range parts {
		p.f.Store(f)
	}
	defer func() {
		for _, p := range parts {
			p.f.Store(nil)
		}
	}()
	f.route(ctx, parts)
	f.loopsDone.Wait()
}

type fetcher struct {
	c    *Client
	recv Receiver
	opts FetchOptions
	log  logrus.FieldLogger

	mu        sync.Mutex
	loops     map[int32]*leaderLoop
	rerouted  []*Partition // partitions to route again, handed over by the loops
	wake      chan struct{}
	loopsDone sync.WaitGroup

	lastWarn   time.Time
	suppressed int
}

// leaderLoop fetches the partitions one broker leads.
type leaderLoop struct {
	id    int32
	parts []*Partition // under fetcher.mu
	wake  chan struct{}
}

func (f *fetcher) wakeLoops() {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.loops {
		signal(l.wake)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// route is the router: it positions partitions that need it and hands each to the loop of its
// leader, now and whenever a loop gives partitions back, until ctx ends.
func (f *fetcher) route(ctx context.Context, pending []*Partition) {
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		f.mu.Lock()
		pending = append(pending, f.rerouted...)
		f.rerouted = f.rerouted[:0]
		f.mu.Unlock()
		if ctx.Err() != nil {
			return
		}
		now := time.Now()
		var due, later []*Partition
		for _, p := range pending {
			if p.notBefore.After(now) {
				later = append(later, p)
			} else {
				due = append(due, p)
			}
		}
		if len(due) > 0 {
			later = append(later, f.assign(ctx, due)...)
		}
		pending = later
		wait := time.Hour
		for _, p := range pending {
			wait = min(wait, time.Until(p.notBefore))
		}
		timer.Reset(max(wait, time.Millisecond))
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-timer.C:
		}
	}
}

// assign positions and routes parts; it returns the partitions that could not be routed, with
// their next attempt scheduled.
func (f *fetcher) assign(ctx context.Context, parts []*Partition) (failed []*Partition) {
	if err := f.position(ctx, parts); err != nil {
		for _, p := range parts {
			f.backoff(p)
		}
		f.warn(err, "positioning partitions failed; retrying")
		return parts
	}
	topics := make([]string, 0, 2)
	for _, p := range parts {
		if !slices.Contains(topics, p.Topic) {
			topics = append(topics, p.Topic)
		}
	}
	meta, err := f.c.metadata(ctx, topics)
	if err != nil {
		for _, p := range parts {
			f.backoff(p)
		}
		f.warn(err, "reading the partitions' leaders failed; retrying")
		return parts
	}
	type leader struct{ id, epoch int32 }
	leaders := map[TopicPartition]leader{}
	for _, t := range meta.Topics {
		for _, mp := range t.Partitions {
			if mp.ErrorCode == 0 && mp.LeaderID >= 0 {
				leaders[TopicPartition{t.Name, int(mp.PartitionIndex)}] = leader{mp.LeaderID, mp.LeaderEpoch}
			}
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range parts {
		l, ok := leaders[TopicPartition{p.Topic, p.ID}]
		if !ok {
			f.backoff(p)
			failed = append(failed, p)
			f.warnLocked(fmt.Errorf("partition %s/%d has no leader in the metadata", p.Topic, p.ID), "waiting for a leader")
			continue
		}
		p.leaderEpoch = l.epoch
		loop := f.loops[l.id]
		if loop == nil {
			loop = &leaderLoop{id: l.id, wake: make(chan struct{}, 1)}
			f.loops[l.id] = loop
			f.loopsDone.Add(1)
			go func() {
				defer f.loopsDone.Done()
				f.run(ctx, loop)
			}()
		}
		loop.parts = append(loop.parts, p)
		signal(loop.wake)
	}
	return failed
}

// backoff schedules p's next route after a failure.
func (f *fetcher) backoff(p *Partition) {
	p.failures++
	d := min(100*time.Millisecond<<min(p.failures-1, 5), rerouteMaxBackoff)
	p.notBefore = time.Now().Add(d/2 + rand.N(d/2+1))
}

// giveBack hands parts from loop back to the router, each after a backoff.
func (f *fetcher) giveBack(loop *leaderLoop, parts ...*Partition) {
	f.mu.Lock()
	for _, p := range parts {
		if i := slices.Index(loop.parts, p); i >= 0 {
			loop.parts = slices.Delete(loop.parts, i, i+1)
		}
		f.backoff(p)
		f.rerouted = append(f.rerouted, p)
	}
	f.mu.Unlock()
	signal(f.wake)
}

// position sets the fetch offset of partitions that have none (no committed offset) or whose
// offset left the log, per StartOffset, as Kafka's auto.offset.reset does.
func (f *fetcher) position(ctx context.Context, parts []*Partition) error {
	req := map[string][]kafka.OffsetRequest{}
	var todo []*Partition
	for _, p := range parts {
		if p.next < 0 || p.outOfRange {
			req[p.Topic] = append(req[p.Topic], kafka.FirstOffsetOf(p.ID), kafka.LastOffsetOf(p.ID))
			todo = append(todo, p)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, fetchTimeout)
	defer cancel()
	res, err := f.c.kc.ListOffsets(lctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return fmt.Errorf("list offsets: %w", err)
	}
	for _, p := range todo {
		var po *kafka.PartitionOffsets
		for i := range res.Topics[p.Topic] {
			if res.Topics[p.Topic][i].Partition == p.ID {
				po = &res.Topics[p.Topic][i]
			}
		}
		switch {
		case po == nil:
			return fmt.Errorf("list offsets of %s/%d: no answer for the partition", p.Topic, p.ID)
		case po.Error != nil:
			return fmt.Errorf("list offsets of %s/%d: %w", p.Topic, p.ID, po.Error)
		}
		from, to := p.next, po.FirstOffset
		if (from < 0 || from > po.FirstOffset) && f.opts.StartOffset == kafka.LastOffset {
			to = po.LastOffset
		}
		if p.outOfRange {
			f.log.WithFields(logrus.Fields{"topic": p.Topic, "partition": p.ID, "offset": from, "log_start": po.FirstOffset, "log_end": po.LastOffset, "resume_at": to}).
				Warn("the partition's offset is outside its log (records removed by retention, or the log was truncated); resuming at the start offset policy")
		}
		p.next, p.outOfRange = to, false
	}
	return nil
}

// run is one leader's fetch loop: it fetches the loop's unpaused partitions until ctx ends, a
// request fails (every partition goes back to the router) or no partition is left.
func (f *fetcher) run(ctx context.Context, loop *leaderLoop) {
	req := &fetchapi.Request{ReplicaID: -1, MaxBytes: fetchMaxBytes, SessionID: -1, SessionEpoch: -1, IsolationLevel: readCommitted}
	byID := map[TopicPartition]*Partition{}
	var active []*Partition
	linger, rotate := false, 0
	for {
		f.mu.Lock()
		if len(loop.parts) == 0 || ctx.Err() != nil {
			delete(f.loops, loop.id)
			f.mu.Unlock()
			return
		}
		active = active[:0]
		for _, p := range loop.parts {
			if !p.paused.Load() {
				active = append(active, p)
			}
		}
		f.mu.Unlock()
		if len(active) == 0 {
			select {
			case <-loop.wake:
				continue
			case <-ctx.Done():
				continue
			}
		}
		if !f.recv.Admit(ctx) {
			continue
		}
		clear(byID)
		for _, p := range active {
			byID[TopicPartition{p.Topic, p.ID}] = p
		}
		buildFetch(req, active, rotate)
		rotate++
		wait := fetchLongPoll
		req.MinBytes = 1
		if linger {
			wait, req.MinBytes = f.opts.Linger, fetchLingerMinBytes
		}
		req.MaxWaitTime = int32(wait / time.Millisecond)
		rctx, cancel := context.WithTimeout(ctx, wait+fetchTimeout)
		m, err := f.c.tr.RoundTrip(rctx, f.c.addr, req)
		cancel()
		f.c.metrics.fetches.Inc()
		if err != nil {
			f.recv.Return()
			if ctx.Err() != nil {
				continue
			}
			f.warn(err, "fetch failed; routing its partitions again")
			f.giveBack(loop, slices.Clone(active)...)
			continue
		}
		res, ok := m.(*fetchapi.Response)
		if !ok {
			f.recv.Return()
			f.giveBack(loop, slices.Clone(active)...)
			continue
		}
		held := true
		got := f.deliver(ctx, loop, res, byID, &held)
		if held {
			f.recv.Return()
		}
		linger = got > 0 && f.opts.Linger > 0
	}
}

// buildFetch fills req with parts, grouped by topic, at their next offsets. Each topic's
// partitions start at a rotating position, so that no partition is always served last from a
// response's byte budget.
func buildFetch(req *fetchapi.Request, parts []*Partition, rotate int) {
	req.Topics = req.Topics[:0]
	var topics []string
	for _, p := range parts {
		if !slices.Contains(topics, p.Topic) {
			topics = append(topics, p.Topic)
		}
	}
	for _, topic := range topics {
		var same []*Partition
		for _, p := range parts {
			if p.Topic == topic {
				same = append(same, p)
			}
		}
		t := fetchapi.RequestTopic{Topic: topic, Partitions: make([]fetchapi.RequestPartition, len(same))}
		for i := range same {
			p := same[(i+rotate)%len(same)]
			t.Partitions[i] = fetchapi.RequestPartition{Partition: int32(p.ID), CurrentLeaderEpoch: p.leaderEpoch,
				FetchOffset: p.next, LogStartOffset: -1, PartitionMaxBytes: fetchPartitionMaxBytes}
		}
		req.Topics = append(req.Topics, t)
	}
}

// deliver hands the response's records on, partition by partition, and gives partitions
// whose fetch failed back to the router. It returns how many records it handed on. *held
// reports whether the admission taken before the fetch is still unused.
func (f *fetcher) deliver(ctx context.Context, loop *leaderLoop, res *fetchapi.Response, byID map[TopicPartition]*Partition, held *bool) int {
	got := 0
	for ti := range res.Topics {
		t := &res.Topics[ti]
		for pi := range t.Partitions {
			rp := &t.Partitions[pi]
			p := byID[TopicPartition{t.Topic, int(rp.Partition)}]
			if p == nil || ctx.Err() != nil {
				continue
			}
			if rp.ErrorCode != 0 {
				err := kafka.Error(rp.ErrorCode)
				if errors.Is(err, kafka.OffsetOutOfRange) {
					p.outOfRange = true
				}
				f.warn(fmt.Errorf("fetch %s/%d at offset %d: %w", p.Topic, p.ID, p.next, err), "routing the partition again")
				f.giveBack(loop, p)
				continue
			}
			p.failures = 0
			if rp.HighWatermark >= 0 {
				p.hwm.Store(rp.HighWatermark)
			}
			n, err := f.deliverPartition(ctx, p, rp, held)
			got += n
			if err != nil {
				f.warn(err, "reading fetched records failed; routing the partition again")
				f.giveBack(loop, p)
			}
		}
	}
	return got
}

// warn logs a fetch problem, at most once a second (with the count of those not logged).
func (f *fetcher) warn(err error, msg string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.warnLocked(err, msg)
}

func (f *fetcher) warnLocked(err error, msg string) {
	now := time.Now()
	if now.Sub(f.lastWarn) < time.Second {
		f.suppressed++
		return
	}
	l := f.log.WithError(err)
	if f.suppressed > 0 {
		l = l.WithField("suppressed", f.suppressed)
	}
	l.Warn(msg)
	f.lastWarn, f.suppressed = now, 0
}

// Start offsets for FetchOptions.StartOffset.
const (
	FirstOffset = kafka.FirstOffset
	LastOffset  = kafka.LastOffset
)

// Header is a record header.
type Header = kafka.Header
