package sink

// The batching producer behind Writer.
//
// kafka-go's Writer sends one produce request per partition batch, so at a steady low rate
// spread over many partitions it sends about one request per record, and its per-partition
// goroutines, request encoding and syscalls cost a quarter of the processor's CPU. Here records
// accumulate per partition leader and one request carries all of a broker's partitions: at a
// steady rate the writer sends at most one request per broker per round trip.
//
// Only the batching and the connections are ours. kafka-go's protocol layer encodes the
// requests (record batch v2, no compression); its Transport keeps the metadata cache the routes
// are read from. Each broker's produce requests go over a connection the writer owns
// (sink/kafkaconn), dialed with the Transport's settings: the goroutine that sends a request
// reads its answer, with no hand-off to a connection goroutine and back.
//
// Goroutines: one run loop per Writer (route lookups and refreshes) and, per broker with records
// queued, at most one sender, started when a batch starts (or by its linger timer, when
// BatchTimeout is set, or at once when the batch is full or the writer is closing). The sender sends, reads the answer, reports it, and goes on
// with whatever queued meanwhile, so there is at most one produce request in flight per broker
// and a partition's records are written in publish order. Publish only appends to a queue under
// Writer.mu and starts a sender (or arms the linger timer) when a batch starts.

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	meta "github.com/segmentio/kafka-go/protocol/metadata"
	"github.com/segmentio/kafka-go/protocol/produce"
	"github.com/wxnotify/wxnotify/sink/kafkaconn"
)

const (
	// produceTimeout is how long the broker may wait for the in-sync replicas (acks=all).
	produceTimeout = 10 * time.Second
	// requestTimeout bounds a whole produce round trip: dial, queueing, the broker's wait. A
	// request that times out is retried, so a record the broker did append is written twice
	// (as with kafka-go's writer: there is no idempotent producer). Readers must dedupe.
	requestTimeout = produceTimeout + 5*time.Second
	// metadataTimeout bounds a routes lookup. Only the first waits for the network: later
	// ones are answered from the transport's cache.
	metadataTimeout = 10 * time.Second
	// minRefresh rate-limits the routes refreshes that failures ask for.
	minRefresh = 500 * time.Millisecond
	// defaultRefreshEvery is the routes refresh period without failures; kafka.Transport's
	// default MetadataTTL, the most the cache we read can lag anyway.
	defaultRefreshEvery = 6 * time.Second

	// recordOverhead and headerOverhead bound a v2 record's framing (varint lengths, deltas,
	// attributes) and a header's; batchOverhead is the record batch header.
	recordOverhead = 32
	headerOverhead = 10
	batchOverhead  = 61
)

// recordSize estimates rec's encoded size, erring high.
func recordSize(rec *Record) int {
	n := recordOverhead + len(rec.Key) + len(rec.Value)
	for _, h := range rec.Headers {
		n += headerOverhead + len(h.Key) + len(h.Value)
	}
	return n
}

// route is a topic's partitions and their leaders, as the transport's metadata cache has them.
type route struct {
	partitions []int   // ascending: what the Balancer picks from (kafka.Hash needs them sorted)
	leaders    []int32 // by partition id; -1 for a partition without a known leader
}

func (r *route) equal(o *route) bool {
	return slices.Equal(r.partitions, o.partitions) && slices.Equal(r.leaders, o.leaders)
}

// brokerQueue is the records waiting for a produce request to one leader.
type brokerQueue struct {
	id      int32
	recs    []*pending
	bytes   int       // estimated size of recs, without batchOverhead
	first   time.Time // when recs went from empty to not empty
	sending bool      // a sender is sending or about to: it goes on with what queues meanwhile
	linger  *time.Timer
	armed   bool       // linger will start a sender
	spare   []*pending // a slice to reuse for recs, from an answered request
	conn    *kafkaconn.Conn
}

// placeLocked picks rec's partition and queues it for the partition's leader, which it makes
// sure will send it. It reports whether the run loop must wake: the topic needs a lookup.
func (w *Writer) placeLocked(p *pending) (wake bool, err error) {
	rt := w.routes[p.rec.Topic]
	if rt == nil {
		w.unplaced = append(w.unplaced, p)
		return len(w.unplaced) == 1, nil
	}
	part := w.cfg.Balancer.Balance(kafka.Message{Topic: p.rec.Topic, Key: p.rec.Key, Value: p.rec.Value, Headers: p.rec.Headers}, rt.partitions...)
	if part < 0 || part >= len(rt.leaders) || rt.leaders[part] < 0 {
		w.refreshWanted = true
		return true, fmt.Errorf("place %s/%d: %w", p.rec.Topic, part, kafka.LeaderNotAvailable)
	}
	p.partition = int32(part)
	leader := rt.leaders[part]
	b := w.brokers[leader]
	if b == nil {
		b = &brokerQueue{id: leader}
		w.brokers[leader] = b
	}
	if len(b.recs) == 0 {
		b.first = time.Now()
	}
	b.recs = append(b.recs, p)
	before := b.bytes
	b.bytes += p.size
	if len(b.recs) == 1 || len(b.recs) == w.cfg.BatchSize ||
		batchOverhead+before < w.cfg.BatchBytes && batchOverhead+b.bytes >= w.cfg.BatchBytes {
		w.kickLocked(b) // a batch started or filled
	}
	return false, nil
}

// kickLocked makes sure b's queued records will be sent: at once when the batch is full or the
// writer is closing, after the linger otherwise. A sender already at work goes on with them.
func (w *Writer) kickLocked(b *brokerQueue) {
	if b.sending || len(b.recs) == 0 {
		return
	}
	if w.closed || w.fullLocked(b) || w.cfg.BatchTimeout <= 0 {
		if b.armed {
			if !b.linger.Stop() {
				return // it fired: its sender is about to start
			}
			b.armed = false
			w.sends.Done()
		}
		b.sending = true
		w.sends.Add(1)
		go w.sender(b, false)
		return
	}
	if !b.armed {
		w.armLocked(b, time.Until(b.first.Add(w.cfg.BatchTimeout)))
	}
}

// armLocked starts a sender for b after d.
func (w *Writer) armLocked(b *brokerQueue, d time.Duration) {
	b.armed = true
	w.sends.Add(1)
	if b.linger == nil {
		b.linger = time.AfterFunc(d, func() { w.sender(b, true) })
		return
	}
	b.linger.Reset(d)
}

func (w *Writer) fullLocked(b *brokerQueue) bool {
	return len(b.recs) >= w.cfg.BatchSize || batchOverhead+b.bytes >= w.cfg.BatchBytes
}

// takeLocked removes the next request's worth of records from b: at most BatchSize records and
// BatchBytes bytes, but at least one record.
func (w *Writer) takeLocked(b *brokerQueue) []*pending {
	n, size := 0, batchOverhead
	for n < len(b.recs) && n < w.cfg.BatchSize {
		s := b.recs[n].size
		if n > 0 && size+s > w.cfg.BatchBytes {
			break
		}
		size += s
		n++
	}
	if n == len(b.recs) {
		recs := b.recs
		b.recs, b.spare, b.bytes = b.spare, nil, 0
		return recs
	}
	recs := append(b.spare, b.recs[:n]...)
	b.spare = nil
	rest := copy(b.recs, b.recs[n:])
	clear(b.recs[rest:])
	b.recs = b.recs[:rest]
	b.bytes -= size - batchOverhead
	return recs // b.first stays: what is left is due no later than it was
}

// run is the writer's loop: it looks up the routes of new topics and refreshes them, and
// returns once Close was called and no record waits for a route.
func (w *Writer) run() {
	defer close(w.loopDone)
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		w.syncRoutes()
		wait, exit := w.nextLookup()
		switch {
		case exit:
			return
		case wait == 0:
			continue
		case wait < 0:
			<-w.wake
		default:
			timer.Reset(wait)
			select {
			case <-w.wake:
			case <-timer.C:
			}
			timer.Stop()
		}
	}
}

// nextLookup returns how long the loop may sleep (-1: until woken, 0: not at all) and whether
// the loop is done.
func (w *Writer) nextLookup() (wait time.Duration, exit bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.unplaced) > 0 {
		return 0, false // published during the last lookup, for another topic
	}
	if w.closed {
		return 0, true
	}
	wait = -1
	if len(w.routes) > 0 {
		due := w.lastRefresh.Add(w.refreshEvery)
		if w.refreshWanted {
			due = w.lastRefresh.Add(minRefresh)
		}
		wait = max(time.Until(due), time.Millisecond)
	}
	return wait, false
}

// sender sends b's queued records, a request at a time, until the queue is empty or the rest
// may linger. timer tells it was started by b's linger timer.
func (w *Writer) sender(b *brokerQueue, timer bool) {
	defer w.sends.Done()
	w.mu.Lock()
	defer w.mu.Unlock()
	if timer {
		b.armed = false
		if b.sending {
			return // started at once meanwhile
		}
		b.sending = true
	}
	for len(b.recs) > 0 {
		if !w.closed && !w.fullLocked(b) && w.cfg.BatchTimeout > 0 {
			if due := time.Until(b.first.Add(w.cfg.BatchTimeout)); due > 0 {
				w.armLocked(b, due)
				break
			}
		}
		recs := w.takeLocked(b)
		addr := w.addrs[b.id]
		w.mu.Unlock()
		err := w.send(b, addr, recs)
		w.mu.Lock()
		if err != nil && w.closed && len(b.recs) > 0 {
			// One attempt at Close: the broker just failed a whole request, so the records
			// queued behind it are not tried too, one request timeout each.
			abandoned := b.recs
			b.recs, b.bytes = nil, 0
			w.mu.Unlock()
			for _, p := range abandoned {
				w.report(p, ErrClosed)
			}
			w.mu.Lock()
		}
	}
	b.sending = false
}

// syncRoutes looks up the topics of unplaced records and, when due, re-reads every route.
// When a leader moved it places the queued records again, so a request never mixes leaders.
func (w *Writer) syncRoutes() {
	w.mu.Lock()
	var topics []string
	for _, p := range w.unplaced {
		if !slices.Contains(topics, p.rec.Topic) {
			topics = append(topics, p.rec.Topic)
		}
	}
	since := time.Since(w.lastRefresh)
	refresh := len(w.routes) > 0 && (since >= w.refreshEvery || w.refreshWanted && since >= minRefresh)
	if refresh {
		for t := range w.routes {
			if !slices.Contains(topics, t) {
				topics = append(topics, t)
			}
		}
	}
	w.mu.Unlock()
	if len(topics) == 0 {
		return
	}

	routes, addrs, errs, err := w.lookup(topics)

	var failed []*pending
	var failedErr []error
	fail := func(p *pending, err error) {
		failed, failedErr = append(failed, p), append(failedErr, err)
	}
	w.mu.Lock()
	if refresh || w.lastRefresh.IsZero() {
		w.lastRefresh, w.refreshWanted = time.Now(), false
	}
	moved := false
	if err != nil {
		w.refreshWanted = true
		if refresh {
			w.log.WithError(err).Debug("kafka writer: metadata lookup failed")
		}
	} else {
		maps.Copy(w.addrs, addrs)
		for t, rt := range routes {
			if old := w.routes[t]; old == nil || !old.equal(rt) {
				moved = moved || old != nil
				w.routes[t] = rt
			}
		}
		for t := range errs {
			if _, ok := w.routes[t]; ok {
				delete(w.routes, t)
				moved = true
			}
		}
	}
	unplaced := w.unplaced
	w.unplaced = nil
	for _, p := range unplaced {
		switch {
		case err != nil && slices.Contains(topics, p.rec.Topic):
			fail(p, err)
		case errs[p.rec.Topic] != nil:
			fail(p, errs[p.rec.Topic])
		default:
			if _, perr := w.placeLocked(p); perr != nil { // back in unplaced if still unknown
				fail(p, perr)
			}
		}
	}
	if moved {
		w.log.Debug("kafka writer: partition leaders moved; placing queued records again")
		var queued []*pending
		for _, b := range w.brokers {
			queued = append(queued, b.recs...)
			clear(b.recs)
			b.recs, b.bytes = b.recs[:0], 0
		}
		for _, p := range queued {
			if _, perr := w.placeLocked(p); perr != nil {
				fail(p, perr)
			}
		}
	}
	w.mu.Unlock()
	for i, p := range failed {
		w.retry(p, failedErr[i])
	}
}

// lookup reads topics' routes. A kafka.Transport answers from its metadata cache, the same view
// it routes produce requests by. It reads the protocol response rather than kafka.Client's,
// which reports a partition without a leader as led by broker 0.
func (w *Writer) lookup(topics []string) (map[string]*route, map[int32]string, map[string]error, error) {
	ctx, cancel := context.WithTimeout(context.Background(), metadataTimeout)
	defer cancel()
	m, err := w.cfg.Transport.RoundTrip(ctx, w.addr, &meta.Request{TopicNames: topics})
	if err != nil {
		return nil, nil, nil, fmt.Errorf("metadata: %w", err)
	}
	res, ok := m.(*meta.Response)
	if !ok {
		return nil, nil, nil, fmt.Errorf("metadata: unexpected response %T", m)
	}
	brokers := make(map[int32]string, len(res.Brokers))
	for _, b := range res.Brokers {
		brokers[b.NodeID] = net.JoinHostPort(b.Host, strconv.Itoa(int(b.Port)))
	}
	routes := make(map[string]*route, len(topics))
	errs := make(map[string]error)
	for _, t := range res.Topics {
		if !slices.Contains(topics, t.Name) {
			continue
		}
		if t.ErrorCode != 0 {
			errs[t.Name] = fmt.Errorf("metadata for %s: %w", t.Name, kafka.Error(t.ErrorCode))
			continue
		}
		if len(t.Partitions) == 0 { // the balancers divide by the partition count
			errs[t.Name] = fmt.Errorf("metadata for %s: no partitions: %w", t.Name, kafka.LeaderNotAvailable)
			continue
		}
		rt := &route{partitions: make([]int, 0, len(t.Partitions))}
		top := int32(-1)
		for _, p := range t.Partitions {
			rt.partitions = append(rt.partitions, int(p.PartitionIndex))
			top = max(top, p.PartitionIndex)
		}
		slices.Sort(rt.partitions)
		rt.leaders = make([]int32, top+1)
		for i := range rt.leaders {
			rt.leaders[i] = -1
		}
		for _, p := range t.Partitions {
			if _, ok := brokers[p.LeaderID]; ok && p.PartitionIndex >= 0 {
				rt.leaders[p.PartitionIndex] = p.LeaderID
			}
		}
		routes[t.Name] = rt
	}
	for _, t := range topics {
		if routes[t] == nil && errs[t] == nil {
			errs[t] = fmt.Errorf("metadata for %s: %w", t, kafka.UnknownTopicOrPartition)
		}
	}
	return routes, brokers, errs, nil
}

// partBatch is one partition's records in a produce request.
type partBatch struct {
	topic     string
	partition int32
	recs      []*pending
	err       error
	answered  bool
}

func comparePart(a *partBatch, topic string, partition int32) int {
	return compareTopicPartition(a.topic, a.partition, topic, partition)
}

func compareTopicPartition(t1 string, p1 int32, t2 string, p2 int32) int {
	if c := strings.Compare(t1, t2); c != 0 {
		return c
	}
	return cmp.Compare(p1, p2)
}

// send writes recs (all led by b) in one produce request over b's connection to addr and
// reports the outcome: acked partitions are reported, failed ones retried. It returns the error
// that failed the whole request, if one did.
func (w *Writer) send(b *brokerQueue, addr string, recs []*pending) error {
	// Stable: records of a partition keep their publish order.
	slices.SortStableFunc(recs, func(x, y *pending) int {
		return compareTopicPartition(x.rec.Topic, x.partition, y.rec.Topic, y.partition)
	})
	req, parts := buildRequest(recs)

	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	w.metrics.requests.Inc()
	m, err := w.roundTrip(ctx, b, addr, req)
	cancel()
	if err == nil {
		if res, ok := m.(*produce.Response); ok {
			answer(parts, res)
		} else {
			err = fmt.Errorf("unexpected response %T", m)
		}
	}

	refresh := false
	if err != nil {
		// Connection errors and timeouts fail the whole request; they may mean the broker
		// moved or is gone, so the routes are refreshed.
		refresh = true
		err = fmt.Errorf("produce to broker %d: %w", b.id, err)
		for _, p := range recs {
			w.retry(p, err)
		}
	} else {
		for i := range parts {
			pb := &parts[i]
			if pb.err == nil {
				w.acked(pb.topic, pb.recs)
				continue
			}
			refresh = refresh || routingError(pb.err)
			perr := fmt.Errorf("produce %s/%d: %w", pb.topic, pb.partition, pb.err)
			for _, p := range pb.recs {
				w.retry(p, perr)
			}
		}
	}

	w.mu.Lock()
	if refresh && !w.refreshWanted {
		w.refreshWanted = true
		defer w.signal()
	}
	if b.spare == nil && cap(recs) <= 4*w.cfg.BatchSize {
		clear(recs)
		b.spare = recs[:0]
	}
	w.mu.Unlock()
	return err
}

// roundTrip sends req over b's connection, dialing addr first when b has none or it leads
// elsewhere.
func (w *Writer) roundTrip(ctx context.Context, b *brokerQueue, addr string, req protocol.Message) (protocol.Message, error) {
	if addr == "" {
		return nil, fmt.Errorf("broker %d is not in the metadata", b.id)
	}
	if b.conn != nil && (b.conn.Addr() != addr || b.conn.Closed()) {
		b.conn.Close()
		b.conn = nil
	}
	if b.conn == nil {
		c, err := w.dialer.DialContext(ctx, addr)
		if err != nil {
			return nil, err
		}
		b.conn = c
	}
	return b.conn.RoundTrip(ctx, req)
}

// buildRequest makes one produce request of recs, sorted by topic and partition, and the
// partition batches its answer is matched against (in the same order).
func buildRequest(recs []*pending) (*produce.Request, []partBatch) {
	var parts []partBatch
	for i := 0; i < len(recs); {
		j := i + 1
		for j < len(recs) && recs[j].rec.Topic == recs[i].rec.Topic && recs[j].partition == recs[i].partition {
			j++
		}
		parts = append(parts, partBatch{topic: recs[i].rec.Topic, partition: recs[i].partition, recs: recs[i:j:j]})
		i = j
	}
	iters := make([]recordIter, len(parts))
	reqParts := make([]produce.RequestPartition, len(parts))
	var topics []produce.RequestTopic
	for i := range parts {
		iters[i].recs = parts[i].recs
		// RecordSet.Version is left 0: the request's Prepare picks it from the negotiated
		// API version (2 for any broker since 0.11), as kafka.Client.Produce does.
		reqParts[i] = produce.RequestPartition{Partition: parts[i].partition, RecordSet: protocol.RecordSet{Records: &iters[i]}}
		if n := len(topics); n > 0 && topics[n-1].Topic == parts[i].topic {
			topics[n-1].Partitions = reqParts[i-len(topics[n-1].Partitions) : i+1]
			continue
		}
		topics = append(topics, produce.RequestTopic{Topic: parts[i].topic, Partitions: reqParts[i : i+1]})
	}
	return &produce.Request{
		Acks:    int16(kafka.RequireAll),
		Timeout: int32(produceTimeout / time.Millisecond),
		Topics:  topics,
	}, parts
}

// answer matches a produce response to the partition batches; a partition the broker did not
// answer for counts as failed.
func answer(parts []partBatch, res *produce.Response) {
	for _, t := range res.Topics {
		for _, rp := range t.Partitions {
			i, ok := slices.BinarySearchFunc(parts, rp, func(pb partBatch, rp produce.ResponsePartition) int {
				return comparePart(&pb, t.Topic, rp.Partition)
			})
			if !ok || parts[i].answered {
				continue
			}
			parts[i].answered = true
			if rp.ErrorCode != 0 {
				parts[i].err = kafka.Error(rp.ErrorCode)
				if rp.ErrorMessage != "" {
					parts[i].err = fmt.Errorf("%w: %s", kafka.Error(rp.ErrorCode), rp.ErrorMessage)
				}
			}
		}
	}
	for i := range parts {
		if !parts[i].answered {
			parts[i].err = errNoAnswer
		}
	}
}

var errNoAnswer = errors.New("the broker did not answer for the partition")

// routingError reports whether a partition's error suggests its leader is not where the routes
// say.
func routingError(err error) bool {
	for _, e := range []kafka.Error{kafka.NotLeaderForPartition, kafka.LeaderNotAvailable,
		kafka.UnknownTopicOrPartition, kafka.FencedLeaderEpoch, kafka.UnknownLeaderEpoch} {
		if errors.Is(err, e) {
			return true
		}
	}
	return errors.Is(err, errNoAnswer)
}

// recordIter streams a partition's records into the encoder without copying them, reusing one
// protocol.Record and its key and value readers, as kafka-go's writer does
// (protocol.NewRecordReader copies its records and NewBytes allocates per key and value).
type recordIter struct {
	recs       []*pending
	i          int
	rec        protocol.Record
	key, value bytesReader
}

func (r *recordIter) ReadRecord() (*protocol.Record, error) {
	if r.i >= len(r.recs) {
		return nil, io.EOF
	}
	p := r.recs[r.i]
	r.i++
	// Time is left zero: the encoder stamps the batch's encoding time, as kafka-go's writer
	// does for a message without one.
	r.rec = protocol.Record{Headers: p.rec.Headers}
	if p.rec.Key != nil {
		r.key.Reset(p.rec.Key)
		r.rec.Key = &r.key
	}
	if p.rec.Value != nil {
		r.value.Reset(p.rec.Value)
		r.rec.Value = &r.value
	}
	return &r.rec, nil
}

type bytesReader struct{ bytes.Reader }

func (*bytesReader) Close() error { return nil }
