package sink

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
)

// ErrClosed is reported for a record the writer could not get acknowledged before Close.
var ErrClosed = errors.New("sink: writer closed before the record was acknowledged")

// WriterConfig configures a Writer.
type WriterConfig struct {
	// Brokers are the bootstrap brokers (required).
	Brokers []string
	// BatchTimeout is how long a partial batch waits for more records. Default 2ms: kafka-go's
	// own default of 1s would hold every commit for a second.
	BatchTimeout time.Duration
	// BatchSize is the most records in one produce batch (per partition). Default 100. kafka-go
	// allocates room for BatchSize records for every batch it opens, however few it then holds:
	// with a 2ms BatchTimeout the batches are small, and at 1000 each outcome write cost ~150 KB
	// of garbage per batch, half of the processor's allocation (wxbench, 10k outcomes/s).
	BatchSize int
	// RetryBackoff is the first pause before a failed record is written again; it doubles up to
	// MaxRetryBackoff. Defaults 200ms and 10s. Records are retried until acknowledged or Close.
	RetryBackoff, MaxRetryBackoff time.Duration
	// Transport is the kafka-go transport (TLS, SASL); nil = a private kafka.Transport, never the
	// shared kafka.DefaultTransport whose pooled connections go stale across broker restarts.
	Transport kafka.RoundTripper
	// Balancer places keyed records. Default kafka.Hash (FNV-1a, as kafka-go's own writer).
	Balancer kafka.Balancer
}

func (c *WriterConfig) withDefaults() {
	if c.BatchTimeout <= 0 {
		c.BatchTimeout = 2 * time.Millisecond
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 100
	}
	if c.RetryBackoff <= 0 {
		c.RetryBackoff = 200 * time.Millisecond
	}
	if c.MaxRetryBackoff <= 0 {
		c.MaxRetryBackoff = 10 * time.Second
	}
	if c.Transport == nil {
		c.Transport = &kafka.Transport{}
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
type Writer struct {
	cfg     WriterConfig
	w       *kafka.Writer
	log     logrus.FieldLogger
	metrics writerMetrics

	mu      sync.Mutex
	closed  bool
	retries map[*pending]*time.Timer // records waiting to be written again
	wg      sync.WaitGroup           // records handed out and not yet reported
	failing atomic.Bool              // for logging the first failure and the recovery once
}

type pending struct {
	rec      Record
	done     func(error)
	attempts int
}

type writerMetrics struct {
	acked    *prometheus.CounterVec
	failures *prometheus.CounterVec
}

// NewWriter builds a Writer. Metrics go to reg: wxnotify_kafka_records_written_total{topic} and
// wxnotify_kafka_write_failures_total{topic}.
func NewWriter(cfg WriterConfig, reg prometheus.Registerer, log logrus.FieldLogger) (*Writer, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("sink: writer needs at least one broker")
	}
	cfg.withDefaults()
	w := &Writer{
		cfg:     cfg,
		log:     log,
		retries: make(map[*pending]*time.Timer),
		metrics: writerMetrics{
			acked: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "wxnotify_kafka_records_written_total",
				Help: "Records acknowledged by the broker, by topic.",
			}, []string{"topic"}),
			failures: prometheus.NewCounterVec(prometheus.CounterOpts{
				Name: "wxnotify_kafka_write_failures_total",
				Help: "Record writes that failed and will be retried, by topic (outcome and dead-letter topics).",
			}, []string{"topic"}),
		},
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{w.metrics.acked, w.metrics.failures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register writer metrics: %w", err)
			}
		}
	}
	w.w = &kafka.Writer{
		Addr:         kafka.TCP(cfg.Brokers...),
		Balancer:     cfg.Balancer,
		RequiredAcks: kafka.RequireAll,
		BatchTimeout: cfg.BatchTimeout,
		BatchSize:    cfg.BatchSize,
		Async:        true,
		Transport:    cfg.Transport,
		Completion:   w.completion,
		ErrorLogger:  kafka.LoggerFunc(func(f string, a ...any) { log.Debugf("kafka writer: "+f, a...) }),
	}
	return w, nil
}

// Publish queues rec and calls done exactly once: with nil when the broker acknowledged it, or
// with ErrClosed when the writer closed first. done runs on a writer goroutine and must not block.
func (w *Writer) Publish(rec Record, done func(error)) {
	w.wg.Add(1)
	w.write(&pending{rec: rec, done: done})
}

func (w *Writer) write(p *pending) {
	w.mu.Lock()
	closed := w.closed
	w.mu.Unlock()
	if closed {
		w.report(p, ErrClosed)
		return
	}
	p.attempts++
	msg := kafka.Message{Topic: p.rec.Topic, Key: p.rec.Key, Value: p.rec.Value, Headers: p.rec.Headers, WriterData: p}
	// Async: WriteMessages only queues; errors arrive in completion. It fails at once only when
	// the writer is closed or the message is malformed.
	if err := w.w.WriteMessages(context.Background(), msg); err != nil {
		w.retry(p, err)
	}
}

func (w *Writer) completion(msgs []kafka.Message, err error) {
	for i := range msgs {
		p, ok := msgs[i].WriterData.(*pending)
		if !ok {
			continue
		}
		if err != nil {
			w.retry(p, err)
			continue
		}
		w.metrics.acked.WithLabelValues(p.rec.Topic).Inc()
		if w.failing.CompareAndSwap(true, false) {
			w.log.WithField("topic", p.rec.Topic).Info("kafka writes are being acknowledged again")
		}
		w.report(p, nil)
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
	defer w.mu.Unlock()
	if w.closed {
		go w.report(p, ErrClosed)
		return
	}
	w.retries[p] = time.AfterFunc(backoff, func() {
		w.mu.Lock()
		_, live := w.retries[p]
		delete(w.retries, p)
		w.mu.Unlock()
		if live {
			w.write(p)
		}
	})
}

func (w *Writer) report(p *pending, err error) {
	p.done(err)
	w.wg.Done()
}

// Close flushes queued records, waits for their acknowledgements, fails records still waiting
// for a retry with ErrClosed, and closes the connections. Call it after the processor has
// stopped publishing.
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	w.closed = true
	var abandoned []*pending
	for p, t := range w.retries {
		if t.Stop() {
			abandoned = append(abandoned, p)
		}
		delete(w.retries, p)
	}
	w.mu.Unlock()
	for _, p := range abandoned {
		w.report(p, ErrClosed)
	}
	err := w.w.Close() // flushes the async batches; their completions run before it returns
	w.wg.Wait()
	return err
}
