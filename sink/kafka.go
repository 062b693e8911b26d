package sink

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
	"github.com/wxnotify/wxnotify/sink/kafkaconn"
)

// ErrClosed is reported for a record the writer could not get acknowledged before Close.
var ErrClosed = errors.New("sink: writer closed before the record was acknowledged")

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Brokers are the bootstrap brokers (required).
	Brokers []string
	// BatchTimeout is the linger: how long the first record of a batch waits for more records
	// bound for the same broker before the batch is sent. Default (0 or negative): none. A batch
	// is then sent as soon as no request to its broker is in flight, and the records published
	// while one is in flight share the next request, so the batches grow with the rate and the
	// broker's round trip by themselves (as Nagle's algorithm does, and franz-go's default). A
	// linger sends fewer requests only when the round trip is much shorter than the gaps
	// between records, and it delays every acknowledgement by itself.
	BatchTimeout time.Duration
	// BatchSize is the most records in one produce request, which carries every partition
	// led by one broker. Default 1000.
	BatchSize int
	// BatchBytes is the most bytes (an uncompressed estimate) in one produce request. Default
	// 1 MiB, the broker's default message.max.bytes. A record larger than that is still sent,
	// alone; the broker will probably refuse it, and it is retried like any failure.
	BatchBytes int
	// RetryBackoff is the first pause before a failed record is written again; it doubles up to
	// MaxRetryBackoff. Defaults 200ms and 10s. Records are retried until acknowledged or Close.
	RetryBackoff, MaxRetryBackoff time.Duration
	// Transport is the kafka-go transport (TLS, SASL); nil = a private kafka.Transport, never the
	// shared kafka.DefaultTransport whose pooled connections go stale across broker restarts.
	// The writer routes records by the transport's cached metadata, so after a leader moves,
	// records are retried until the transport refreshes it (kafka.Transport.MetadataTTL,
	// default 6s), as with kafka-go's own writer.
	Transport kafka.RoundTripper
	// Balancer places keyed records. Default kafka.Hash (FNV-1a, as kafka-go's own writer).
	Balancer kafka.Balancer
}

func (c *WriterConfig) withDefaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.BatchBytes <= 0 {
		c.BatchBytes = 1 << 20
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 200 * time.Millisecond
	}
	if c.MaxRetryBackoff <= 0 {
		c.MaxRetryBackoff = 10 * time.Second
	}
	if c.Balancer == nil {
		c.Balancer = &kafka.Hash{}
	}
}

// Record is one Kafka record to write.
type Record struct {
	Topic   string
	Key     []byte
	Value   []byte
	Headers []kafka.Header
}

// Writer publishes records asynchronously with acks from all in-sync replicas and reports each
// record's acknowledgement through a callback. A record that fails is written again with backoff
// until it is acknowledged or the writer closes, so a caller that waits for the callback before
// committing its input never loses a record.
//
// Records are batched per partition leader: one produce request carries every partition a broker
// leads (see produce.go), so at a steady low rate the writer sends about one request per broker
// per round trip rather than one per partition batch as kafka-go's Writer does.
type Writer struct {
	cfg     WriterConfig
	addr    net.Addr         // the bootstrap address: the key of the transport's connection pool
	own     *kafka.Transport // the private transport, closed by Close; nil when cfg gave one
	dialer  kafkaconn.Dialer // the produce connections' settings: the transport's
	log     logrus.FieldLogger
	metrics writerMetrics

	// refreshEvery is how often the routes are re-read from the transport's metadata cache
	// without a failure asking for it.
	refreshEvery time.Duration

	mu            sync.Mutex
	closed        bool
	retries       map[*pending]*time.Timer // records waiting to be written again
	routes        map[string]*route        // by topic: partitions and their leaders
	brokers       map[int32]*brokerQueue   // records waiting for a produce request, by leader
	addrs         map[int32]string         // broker addresses, by node id, from the lookups
	unplaced      []*pending               // records for topics not yet in routes
	refreshWanted bool                     // a failure suggested the routes are stale
	lastRefresh   time.Time

	wake     chan struct{} // nudges the run loop; capacity 1
	loopDone chan struct{} // closed when the run loop returns
	sends    sync.WaitGroup
	wg       sync.WaitGroup // records handed out and not yet reported
	failing  atomic.Bool    // for logging the first failure and the recovery once
}

type pending struct {
	rec       Record
	done      func(error)
	attempts  int
	size      int   // estimated encoded size, for BatchBytes
	partition int32 // where the current attempt goes
}

type writerMetrics struct {
	acked    *prometheus.CounterVec
	failures *prometheus.CounterVec
	requests prometheus.Counter
}

// NewWriter builds a Writer and starts its goroutine; Close stops it. Metrics go to reg:
// wxnotify_kafka_records_written_total{topic}, wxnotify_kafka_write_failures_total{topic} and
// wxnotify_kafka_produce_requests_total.
func NewWriter(cfg WriterConfig, reg prometheus.Registerer, log logrus.FieldLogger) (*Writer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("sink: writer needs at least one broker")
	}
	cfg.withDefaults()
	var own *kafka.Transport
	if cfg.Transport == nil {
		own = &kafka.Transport{}
		cfg.Transport = own
	}
	w := &Writer{
		own:          own,
		cfg:          cfg,
		addr:         kafka.TCP(cfg.Brokers...),
		log:          log,
		refreshEvery: defaultRefreshEvery,
		retries:      make(map[*pending]*time.Timer),
		routes:       make(map[string]*route),
		brokers:      make(map[int32]*brokerQueue),
		addrs:        make(map[int32]string),
		dialer:       kafkaconn.FromTransport(cfg.Transport),
		wake:         make(chan struct{}, 1),
		loopDone:     make(chan struct{}),
		metrics: writerMetrics{
			acked: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "wxnotify_kafka_records_written_total",
				Help: "Records acknowledged by the broker, by topic.",
			}, []string{"topic"}),
			failures: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "wxnotify_kafka_write_failures_total",
				Help: "Record writes that failed and will be retried, by topic (outcome and dead-letter topics).",
			}, []string{"topic"}),
			requests: prometheus.NewCounter(prometheus.CounterOpts{
				Name: "wxnotify_kafka_produce_requests_total",
				Help: "Produce requests sent; records written / requests is the batching achieved.",
			}),
		},
	}
	if t, ok := cfg.Transport.(*kafka.Transport); ok && t.MetadataTTL > 0 {
		w.refreshEvery = t.MetadataTTL
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{w.metrics.acked, w.metrics.failures, w.metrics.requests} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register writer metrics: %w", err)
			}
		}
	}
	go w.run()
	return w, nil
}

// Publish queues rec and calls done exactly once: with nil when the broker acknowledged it, or
// with ErrClosed when the writer closed first. done runs on a writer goroutine (or, after
// Close, on the caller's) and must not block.
func (w *Writer) Publish(rec Record, done func(error)) {
	p := &pending{rec: rec, done: done, size: recordSize(&rec)}
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		done(ErrClosed)
		return
	}
	w.wg.Add(1) // under mu while open, so it never races Close's Wait
	w.enqueueLocked(p)
}

// write queues p again after a retry backoff.
func (w *Writer) write(p *pending) {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.report(p, ErrClosed)
		return
	}
	w.enqueueLocked(p)
}

// enqueueLocked places p and unlocks mu.
func (w *Writer) enqueueLocked(p *pending) {
	p.attempts++
	wake, err := w.placeLocked(p)
	w.mu.Unlock()
	if wake {
		w.signal()
	}
	if err != nil {
		w.retry(p, err)
	}
}

func (w *Writer) retry(p *pending, err error) {
	w.metrics.failures.WithLabelValues(p.rec.Topic).Inc()
	if w.failing.CompareAndSwap(false, true) {
		w.log.WithError(err).WithField("topic", p.rec.Topic).Error("kafka write failed; retrying until acknowledged (offsets are not committed meanwhile)")
	}
	backoff := w.cfg.RetryBackoff << min(p.attempts-1, 16)
	if backoff > w.cfg.MaxRetryBackoff || backoff <= 0 {
		backoff = w.cfg.MaxRetryBackoff
	}
	backoff = backoff/2 + rand.N(backoff/2+1)
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		w.report(p, ErrClosed)
		return
	}
	// Whoever deletes p from retries owns it: the timer, or Close.
	w.retries[p] = time.AfterFunc(backoff, func() {
		w.mu.Lock()
		_, live := w.retries[p]
		delete(w.retries, p)
		w.mu.Unlock()
		if live {
			w.write(p)
		}
	})
	w.mu.Unlock()
}

func (w *Writer) acked(topic string, recs []*pending) {
	w.metrics.acked.WithLabelValues(topic).Add(float64(len(recs)))
	if w.failing.CompareAndSwap(true, false) {
		w.log.WithField("topic", topic).Info("kafka writes are being acknowledged again")
	}
	for _, p := range recs {
		w.report(p, nil)
	}
}

func (w *Writer) report(p *pending, err error) {
	p.done(err)
	w.wg.Done()
}

// signal wakes the run loop; a wake already pending absorbs it.
func (w *Writer) signal() {
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

// Close sends the queued records at once (ignoring BatchTimeout) and waits for their
// acknowledgements, fails records waiting for a retry with ErrClosed, and closes the private
// transport's connections. A write that fails once Close began is not retried: its records get
// ErrClosed, and so do the records queued behind a broker that failed a whole request, so a
// dead broker holds Close for about one request timeout (15s), not one per batch. Call it
// after the processor has stopped publishing; later publishes get ErrClosed.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	for _, b := range w.brokers {
		w.kickLocked(b) // send at once, without waiting for the linger
	}
	abandoned := make([]*pending, 0, len(w.retries))
	for p, t := range w.retries {
		t.Stop()
		abandoned = append(abandoned, p)
		delete(w.retries, p)
	}
	w.mu.Unlock()
	for _, p := range abandoned {
		w.report(p, ErrClosed)
	}
	w.signal()
	<-w.loopDone // the loop returns once no record waits for a route
	w.sends.Wait()
	w.wg.Wait()
	var errs []error
	for _, b := range w.brokers {
		if b.conn != nil {
			if err := b.conn.Close(); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if w.own != nil {
		w.own.CloseIdleConnections() // a transport from cfg may be shared: its owner closes it
	}
	return errors.Join(errs...)
}
