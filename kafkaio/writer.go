package kafkaio

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	produceapi "github.com/segmentio/kafka-go/protocol/produce"
	"github.com/sirupsen/logrus"
)

// Writing.
//
// Records are placed on a partition by the Balancer and queued per partition. Each partition
// with records queued has one sender goroutine, which sends one produce request at a time
// (acks=all) through the Transport, which routes it to the partition's leader: a partition's
// records are written in publish order, and the records published while a request is in flight
// share the next one, so batches grow with the rate by themselves. A failed request is retried
// whole, at the head of its partition, before anything published after it: order holds across
// retries and leader moves. Produce errors are classified:
//   - retriable (leader moves, timeouts, connection failures, not enough replicas, ...): retried
//     with exponential backoff, for as long as the writer is open;
//   - a record the broker refuses as too large or invalid: a batch of several is split until the
//     refused record is alone; a Truncatable record is then cut to fit (header
//     HeaderTruncated gives its original value size) and written; any other is permanent;
//   - permanent (authorization, missing topic, ...): the record and every record queued behind
//     it on the partition are reported with a *PermanentError, never retried.
//
// kafka-go has no idempotent producer: a request that timed out after the broker appended it
// is written again, so a reader may see a record twice.

const (
	// produceTimeout is how long the broker may wait for the in-sync replicas (acks=all).
	produceTimeout = 10 * time.Second
	// requestTimeout bounds a produce round trip: dial, queueing, the broker's wait.
	requestTimeout = produceTimeout + 5*time.Second
	// routesRefresh is how often the partitions of the written topics are read again from the
	// metadata cache (a topic that gained partitions).
	routesRefresh = 10 * time.Second

	// recordOverhead and headerOverhead bound a v2 record's framing (varint lengths, deltas,
	// attributes) and a header's; batchOverhead is the record batch header.
	recordOverhead = 32
	headerOverhead = 10
	batchOverhead  = 61
	// defaultMaxMessageBytes is Kafka's default max.message.bytes / message.max.bytes.
	defaultMaxMessageBytes = 1048588
	// batchMaxBytes bounds the estimated size of one request's records (a single record larger
	// than this still goes alone).
	batchMaxBytes = 1 << 20
)

// HeaderTruncated is the header of a record that was cut to fit: its value is the original
// value's size in bytes.
const HeaderTruncated = "wxnotify.truncated"

// ErrClosed is reported for a record the writer could not get acknowledged before Close.
var ErrClosed = errors.New("kafka writer closed before the record was acknowledged")

// PermanentError is reported for a record the broker refused in a way retrying cannot change
// (not authorized, topic missing, too large and not truncatable, ...), and for the records
// queued behind it on its partition, which must not be written before it.
type PermanentError struct {
	Topic     string
	Partition int
	Err       error
	// Behind is set for a record that was not refused itself but queued behind a refused one.
	Behind bool
}

func (e *PermanentError) Error() string {
	if e.Behind {
		return fmt.Sprintf("write to topic %q (partition %d): not written: a record before it was refused: %v", e.Topic, e.Partition, e.Err)
	}
	return fmt.Sprintf("write to topic %q (partition %d): %v", e.Topic, e.Partition, e.Err)
}

func (e *PermanentError) Unwrap() error { return e.Err }

// Record is one Kafka record to write.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []kafka.Header
	// Truncatable lets the writer cut the record to fit when the broker refuses it as too large
	// or invalid (dead-letter copies of arbitrary input): the value is cut (and, if that is not
	// enough, the key and the headers not named wxnotify.*), and HeaderTruncated gives the
	// original value size.
	Truncatable bool
}

// WriterConfig configures a Writer. Zero values take the defaults.
type WriterConfig struct {
	// Topics are the topics the writer writes; their partitions are looked up by NewWriter.
	Topics []string
	// Linger is how long the first record of a batch waits for more before its request is
	// sent. Default 0: a request is sent as soon as none to its partition is in flight.
	Linger time.Duration
	// BatchSize bounds the records of one request. Default 1000.
	BatchSize int
	// RetryBackoff is the first pause before a failed request is sent again; it doubles up to
	// MaxRetryBackoff. Defaults 100ms and 5s.
	RetryBackoff, MaxRetryBackoff time.Duration
	// UnknownTopicGrace is how long a partition may be unknown (UNKNOWN_TOPIC_OR_PARTITION, or
	// absent from the client's metadata: metadata still spreading after a topic was created)
	// before the topic counts as missing and its records fail with a *PermanentError. Default 30s.
	UnknownTopicGrace time.Duration
	// Balancer places records. Default kafka.Hash (FNV-1a of the key, as kafka-go's Writer).
	Balancer kafka.Balancer
}

// Writer writes records asynchronously and reports each one's fate through a callback.
type Writer struct {
	c   *Client
	cfg WriterConfig
	log logrus.FieldLogger

	ctx    context.Context // ends at Close's deadline
	cancel context.CancelFunc

	mu      sync.Mutex
	closing bool
	routes  map[string][]int // partitions by topic
	queues  map[TopicPartition]*queue
	maxMsg  map[string]int // max.message.bytes by topic, looked up on the first refusal
	senders sync.WaitGroup
	pending sync.WaitGroup // records published and not yet reported

	refreshDone chan struct{}
}

type pending struct {
	rec   Record
	done  func(error)
	size  int
	cut   int // times the record was cut to fit
	since time.Time
}

// queue is one partition's records waiting to be written, oldest first.
type queue struct {
	tp       TopicPartition
	recs     []*pending
	sending  bool
	maxBatch int // 0: BatchSize; smaller while a refused batch is being split
}

// NewWriter builds a Writer for cfg.Topics, whose partitions it looks up first.
func (c *Client) NewWriter(ctx context.Context, cfg WriterConfig) (*Writer, error) {
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = 1000
	}
	if cfg.RetryBackoff <= 0 {
		cfg.RetryBackoff = 100 * time.Millisecond
	}
	if cfg.MaxRetryBackoff <= 0 {
		cfg.MaxRetryBackoff = 5 * time.Second
	}
	if cfg.UnknownTopicGrace <= 0 {
		cfg.UnknownTopicGrace = 30 * time.Second
	}
	if cfg.Balancer == nil {
		cfg.Balancer = &kafka.Hash{}
	}
	w := &Writer{c: c, cfg: cfg, log: c.log.WithField("component", "kafka_writer"),
		routes: map[string][]int{}, queues: map[TopicPartition]*queue{}, maxMsg: map[string]int{}, refreshDone: make(chan struct{})}
	w.ctx, w.cancel = context.WithCancel(context.Background())
	if err := w.refresh(ctx); err != nil {
		return nil, err
	}
	for _, t := range cfg.Topics {
		if len(w.routes[t]) == 0 {
			return nil, fmt.Errorf("topic %q does not exist", t)
		}
	}
	c.metrics.topicsSeen(cfg.Topics...)
	go w.refreshLoop()
	return w, nil
}

// refresh reads the partitions of the written topics from the metadata cache.
func (w *Writer) refresh(ctx context.Context) error {
	info, err := w.c.Topics(ctx, w.cfg.Topics...)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for t, ti := range info {
		if ti.Partitions > len(w.routes[t]) {
			ids := make([]int, ti.Partitions)
			for i := range ids {
				ids[i] = i
			}
			w.routes[t] = ids
		}
	}
	return nil
}

func (w *Writer) refreshLoop() {
	defer close(w.refreshDone)
	t := time.NewTicker(routesRefresh)
	defer t.Stop()
	for {
		select {
		case <-w.ctx.Done():
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
			_ = w.refresh(ctx) // a failed refresh keeps the routes known
			cancel()
		}
	}
}

// Publish queues rec and calls done exactly once: nil when the broker acknowledged it, a
// *PermanentError when it never will, ErrClosed when the writer closed first. done runs on a
// writer goroutine (or the caller's) and must not block.
func (w *Writer) Publish(rec Record, done func(error)) {
	p := &pending{rec: rec, done: done, size: recordSize(&rec)}
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		done(ErrClosed)
		return
	}
	parts := w.routes[rec.Topic]
	if len(parts) == 0 {
		w.mu.Unlock()
		done(&PermanentError{Topic: rec.Topic, Partition: -1, Err: errors.New("not a topic of this writer")})
		return
	}
	part := w.cfg.Balancer.Balance(kafka.Message{Topic: rec.Topic, Key: rec.Key, Value: rec.Value}, parts...)
	w.pending.Add(1)
	tp := TopicPartition{rec.Topic, part}
	q := w.queues[tp]
	if q == nil {
		q = &queue{tp: tp}
		w.queues[tp] = q
	}
	q.recs = append(q.recs, p)
	start := !q.sending
	q.sending = true
	w.mu.Unlock()
	if start {
		w.senders.Add(1)
		go w.send(q, w.cfg.Linger)
	}
}

// send writes q's records until none is left. It is the only goroutine sending for q.
func (w *Writer) send(q *queue, linger time.Duration) {
	defer w.senders.Done()
	if linger > 0 {
		select {
		case <-time.After(linger):
		case <-w.ctx.Done():
		}
	}
	failures := 0
	for {
		w.mu.Lock()
		batch := w.takeLocked(q)
		if len(batch) == 0 {
			q.sending = false
			w.mu.Unlock()
			return
		}
		closing := w.closing
		w.mu.Unlock()

		err := w.produce(q.tp, batch)
		if err == nil {
			failures = 0
			w.c.metrics.written.WithLabelValues(q.tp.Topic).Add(float64(len(batch)))
			w.mu.Lock()
			w.dropLocked(q, len(batch))
			if q.maxBatch > 0 && len(batch) >= q.maxBatch {
				q.maxBatch = 0 // past the refused record: full batches again
			}
			w.mu.Unlock()
			for _, p := range batch {
				w.report(p, nil)
			}
			continue
		}
		w.c.metrics.failures.WithLabelValues(q.tp.Topic).Inc()
		switch {
		case refusedRecord(err) && len(batch) > 1:
			// Find the refused record: halve the batch until it is alone.
			w.mu.Lock()
			q.maxBatch = max(len(batch)/2, 1)
			w.mu.Unlock()
			continue
		case refusedRecord(err) && batch[0].rec.Truncatable:
			if w.cut(batch[0], err) {
				continue
			}
			w.failQueue(q, fmt.Errorf("%w (even when cut to its headers)", err))
			continue
		case permanent(err, batch[0].since, w.cfg.UnknownTopicGrace):
			w.log.WithError(err).WithFields(logrus.Fields{"topic": q.tp.Topic, "partition": q.tp.Partition}).Error("kafka write refused; not retrying")
			w.failQueue(q, err)
			continue
		case closing || w.ctx.Err() != nil:
			w.failQueue(q, ErrClosed)
			continue
		}
		failures++
		if failures == 1 || failures%10 == 0 {
			w.log.WithError(err).WithFields(logrus.Fields{"topic": q.tp.Topic, "partition": q.tp.Partition, "attempt": failures}).
				Warn("kafka write failed; retrying until acknowledged (offsets are not committed past it meanwhile)")
		}
		d := min(w.cfg.RetryBackoff<<min(failures-1, 16), w.cfg.MaxRetryBackoff)
		select {
		case <-time.After(d/2 + rand.N(d/2+1)):
		case <-w.ctx.Done():
		}
	}
}

// takeLocked returns the next request's worth of q's records, oldest first, leaving them
// queued until they are acknowledged or failed.
func (w *Writer) takeLocked(q *queue) []*pending {
	limit := w.cfg.BatchSize
	if q.maxBatch > 0 {
		limit = q.maxBatch
	}
	n, size := 0, batchOverhead
	for n < len(q.recs) && n < limit {
		s := q.recs[n].size
		if n > 0 && size+s > batchMaxBytes {
			break
		}
		size += s
		n++
	}
	return append([]*pending(nil), q.recs[:n]...)
}

// dropLocked removes the first n records of q.
func (w *Writer) dropLocked(q *queue, n int) {
	rest := copy(q.recs, q.recs[n:])
	clear(q.recs[rest:])
	q.recs = q.recs[:rest]
}

// failQueue reports err for every record queued on q: the first gets err, the rest are
// behind it. The queue stays usable for later records.
func (w *Writer) failQueue(q *queue, err error) {
	w.mu.Lock()
	recs := q.recs
	q.recs = nil
	w.mu.Unlock()
	for i, p := range recs {
		switch {
		case errors.Is(err, ErrClosed):
			w.report(p, ErrClosed)
		default:
			w.report(p, &PermanentError{Topic: q.tp.Topic, Partition: q.tp.Partition, Err: err, Behind: i > 0})
		}
	}
}

func (w *Writer) report(p *pending, err error) {
	p.done(err)
	w.pending.Done()
}

// produce sends one request with batch to its partition's leader and returns the partition's
// error, or the request's.
func (w *Writer) produce(tp TopicPartition, batch []*pending) error {
	now := time.Now()
	recs := make([]Record, len(batch))
	for i, p := range batch {
		recs[i] = p.rec
		if p.since.IsZero() {
			p.since = now
		}
	}
	req := &produceapi.Request{
		Acks:    int16(kafka.RequireAll),
		Timeout: int32(produceTimeout / time.Millisecond),
		Topics: []produceapi.RequestTopic{{Topic: tp.Topic, Partitions: []produceapi.RequestPartition{{
			// RecordSet.Version is left 0: the request's Prepare picks it from the negotiated
			// API version (2 for any broker since 0.11), as kafka.Client.Produce does.
			Partition: int32(tp.Partition), RecordSet: protocol.RecordSet{Records: &recordIter{recs: recs}},
		}}}},
	}
	ctx, cancel := context.WithTimeout(w.ctx, requestTimeout)
	defer cancel()
	w.c.metrics.produces.Inc()
	m, err := w.c.tr.RoundTrip(ctx, w.c.addr, req)
	if errors.Is(err, protocol.ErrNoTopic) || errors.Is(err, protocol.ErrNoPartition) {
		// The Transport's metadata has no such partition (the topic was deleted, or is not
		// known yet): what a broker answers UNKNOWN_TOPIC_OR_PARTITION, and classified alike.
		return kafka.UnknownTopicOrPartition
	}
	if err != nil {
		return err
	}
	res, ok := m.(*produceapi.Response)
	if !ok || len(res.Topics) != 1 || len(res.Topics[0].Partitions) != 1 {
		return fmt.Errorf("produce: unexpected response %T", m)
	}
	if code := res.Topics[0].Partitions[0].ErrorCode; code != 0 {
		return kafka.Error(code)
	}
	return nil
}

// refusedRecord reports whether the broker refused the records themselves.
func refusedRecord(err error) bool {
	return errors.Is(err, kafka.MessageSizeTooLarge) || errors.Is(err, kafka.RecordListTooLarge) ||
		errors.Is(err, kafka.InvalidRecord)
}

// permanent reports whether retrying err cannot help: the broker refused the request for a
// reason that stays (authorization, a missing or invalid topic, a record it will never take, a
// protocol mismatch). UNKNOWN_TOPIC_OR_PARTITION is retried for unknownTopicGrace, while a new
// topic's metadata may still be spreading. Every other error (leader moves, timeouts,
// connection failures, not enough replicas, errors the broker does not explain) is retried with
// backoff: a processor that stops on them would redo more than one that waits.
func permanent(err error, since time.Time, unknownTopicGrace time.Duration) bool {
	var kerr kafka.Error
	if !errors.As(err, &kerr) {
		return false
	}
	switch kerr {
	case kafka.UnknownTopicOrPartition:
		return time.Since(since) > unknownTopicGrace
	case kafka.TopicAuthorizationFailed, kafka.ClusterAuthorizationFailed, kafka.TransactionalIDAuthorizationFailed,
		kafka.SASLAuthenticationFailed, kafka.InvalidTopic, kafka.InvalidRequiredAcks, kafka.UnsupportedVersion,
		kafka.UnsupportedForMessageFormat, kafka.PolicyViolation, kafka.InvalidTimestamp,
		kafka.MessageSizeTooLarge, kafka.RecordListTooLarge, kafka.InvalidRecord:
		return true
	}
	return false
}

// cut shortens a truncatable record the broker refused: the first cut aims at the topic's
// max.message.bytes; each later one halves the value; with no value left the key and foreign
// headers go. It reports false when nothing is left to cut.
func (w *Writer) cut(p *pending, cause error) bool {
	rec := &p.rec
	orig := len(rec.Value)
	if p.cut > 0 {
		orig = truncatedSize(rec)
	}
	var value []byte
	switch {
	case p.cut == 0:
		limit := w.maxMessageBytes(rec.Topic) - batchOverhead - recordOverhead - 64
		fixed := len(rec.Key) + headerOverhead + len(HeaderTruncated) + 20
		for _, h := range rec.Headers {
			fixed += headerOverhead + len(h.Key) + len(h.Value)
		}
		keep := min(limit-fixed, len(rec.Value)/2)
		value = rec.Value[:max(keep, 0)]
	case len(rec.Value) > 0:
		value = rec.Value[:len(rec.Value)/2]
	case len(rec.Key) > 0 || hasForeignHeaders(rec.Headers):
		rec.Key = nil
		var hs []kafka.Header
		for _, h := range rec.Headers {
			if isOwnHeader(h.Key) {
				hs = append(hs, h)
			}
		}
		rec.Headers = hs
		value = nil
	default:
		return false
	}
	rec.Value = value
	hs := make([]kafka.Header, 0, len(rec.Headers)+1)
	for _, h := range rec.Headers {
		if h.Key != HeaderTruncated {
			hs = append(hs, h)
		}
	}
	rec.Headers = append(hs, kafka.Header{Key: HeaderTruncated, Value: []byte(strconv.Itoa(orig))})
	p.size = recordSize(rec)
	p.cut++
	if p.cut == 1 {
		w.log.WithError(cause).WithFields(logrus.Fields{"topic": rec.Topic, "original_bytes": orig, "cut_to_bytes": len(rec.Value)}).
			Warn("record refused by the broker; writing it cut to fit")
	}
	return true
}

func truncatedSize(rec *Record) int {
	for _, h := range rec.Headers {
		if h.Key == HeaderTruncated {
			if n, err := strconv.Atoi(string(h.Value)); err == nil {
				return n
			}
		}
	}
	return len(rec.Value)
}

func isOwnHeader(k string) bool { return len(k) > 9 && k[:9] == "wxnotify." }

func hasForeignHeaders(hs []kafka.Header) bool {
	for _, h := range hs {
		if !isOwnHeader(h.Key) {
			return true
		}
	}
	return false
}

// maxMessageBytes returns the topic's max.message.bytes, asking the broker once; Kafka's
// default when it cannot say.
func (w *Writer) maxMessageBytes(topic string) int {
	w.mu.Lock()
	n, ok := w.maxMsg[topic]
	w.mu.Unlock()
	if ok {
		return n
	}
	n = defaultMaxMessageBytes
	ctx, cancel := context.WithTimeout(w.ctx, 10*time.Second)
	defer cancel()
	res, err := w.c.kc.DescribeConfigs(ctx, &kafka.DescribeConfigsRequest{Resources: []kafka.DescribeConfigRequestResource{{
		ResourceType: kafka.ResourceTypeTopic, ResourceName: topic, ConfigNames: []string{"max.message.bytes"},
	}}})
	if err == nil && len(res.Resources) == 1 && res.Resources[0].Error == nil {
		for _, e := range res.Resources[0].ConfigEntries {
			if v, err := strconv.Atoi(e.ConfigValue); err == nil && e.ConfigName == "max.message.bytes" && v > 0 {
				n = v
			}
		}
	}
	w.mu.Lock()
	w.maxMsg[topic] = n
	w.mu.Unlock()
	return n
}

// Close stops accepting records and waits until every queued record is acknowledged or
// failed, for at most timeout: records still unwritten then get ErrClosed. A request that
// fails once Close began is not retried.
func (w *Writer) Close(timeout time.Duration) error {
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		return nil
	}
	w.closing = true
	w.mu.Unlock()
	done := make(chan struct{})
	go func() {
		w.pending.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-time.After(timeout):
		err = fmt.Errorf("kafka writer: records still unacknowledged after %s", timeout)
	}
	w.cancel()
	w.senders.Wait()
	<-w.refreshDone
	<-done
	return err
}

// recordSize estimates rec's encoded size, erring high.
func recordSize(rec *Record) int {
	n := recordOverhead + len(rec.Key) + len(rec.Value)
	for _, h := range rec.Headers {
		n += headerOverhead + len(h.Key) + len(h.Value)
	}
	return n
}

// recordIter streams records into the encoder, reusing one protocol.Record and its key and
// value readers (protocol.NewRecordReader copies its records and NewBytes allocates per key
// and value). It owns a copy of the records: the Transport may still be encoding a request
// whose wait was given up.
type recordIter struct {
	recs       []Record
	i          int
	rec        protocol.Record
	key, value bytesReader
}

func (r *recordIter) ReadRecord() (*protocol.Record, error) {
	if r.i >= len(r.recs) {
		return nil, io.EOF
	}
	p := &r.recs[r.i]
	r.i++
	// Time is left zero: the encoder stamps the batch's encoding time, as kafka-go's writer
	// does for a message without one.
	r.rec = protocol.Record{Headers: p.Headers}
	if p.Key != nil {
		r.key.Reset(p.Key)
		r.rec.Key = &r.key
	}
	if p.Value != nil {
		r.value.Reset(p.Value)
		r.rec.Value = &r.value
	}
	return &r.rec, nil
}

type bytesReader struct{ bytes.Reader }

func (*bytesReader) Close() error { return nil }
