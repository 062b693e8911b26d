package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// results collects each record's single done call.
type results struct {
	mu   sync.Mutex
	errs map[string][]error
	all  sync.WaitGroup
}

func (r *results) done(key string) func(error) {
	r.all.Add(1)
	return func(err error) {
		r.mu.Lock()
		r.errs[key] = append(r.errs[key], err)
		r.mu.Unlock()
		r.all.Done()
	}
}

func publish(w *Writer, r *results, n int) {
	for i := 0; i < n; i++ {
		key := fmt.Sprintf("k%d", i)
		w.Publish(Record{Topic: "out", Key: []byte(key), Value: []byte("v")}, r.done(key))
	}
}

func wait(t *testing.T, r *results) {
	t.Helper()
	ch := make(chan struct{})
	go func() { r.all.Wait(); close(ch) }()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatal("not every record was reported")
	}
}

// A write the broker refuses is retried until it is acknowledged; each record is reported once.
func TestWriterRetriesUntilAcknowledged(t *testing.T) {
	w, c := startWriter(t, WriterConfig{}, 1, 2)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.UnknownServerError, Count: 3})
	r := newResults()
	publish(w, r, 10)
	wait(t, r)
	for k, errs := range r.errs {
		if len(errs) != 1 || errs[0] != nil {
			t.Errorf("%s reported %v, want one nil", k, errs)
		}
	}
	if got := testutil.ToFloat64(w.metrics.acked.WithLabelValues("out")); got != 10 {
		t.Errorf("records written = %v, want 10", got)
	}
	if got := testutil.ToFloat64(w.metrics.failures.WithLabelValues("out")); got == 0 {
		t.Error("no write failure counted, though the broker refused writes")
	}
}

// Records still waiting for a retry when the writer closes are reported once, with ErrClosed,
// so the caller knows not to commit past them.
func TestWriterCloseReportsUnacknowledgedRecords(t *testing.T) {
	w, c := startWriter(t, WriterConfig{}, 1, 2)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.UnknownServerError, Count: -1})
	r := newResults()
	publish(w, r, 5)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(w.metrics.failures.WithLabelValues("out")) < 5 {
		if time.Now().After(deadline) {
			t.Fatal("the broker's refusals were not counted as failures within 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Errorf("close: %v", err)
	}
	wait(t, r)
	for k, errs := range r.errs {
		if len(errs) != 1 || !errors.Is(errs[0], ErrClosed) {
			t.Errorf("%s reported %v, want one ErrClosed", k, errs)
		}
	}
	if len(r.errs) != 5 {
		t.Errorf("%d records reported, want 5", len(r.errs))
	}
	// After Close, a publish is refused at once rather than lost.
	r2 := newResults()
	w.Publish(Record{Topic: "out", Value: []byte("late")}, r2.done("late"))
	wait(t, r2)
	if !errors.Is(r2.errs["late"][0], ErrClosed) {
		t.Errorf("publish after close reported %v, want ErrClosed", r2.errs["late"])
	}
}

// startWriter runs a cluster of brokers with topic "out" of the given partitions and a writer
// with cfg (Brokers filled in, fast retries unless set) that the test's cleanup closes.
func startWriter(t testing.TB, cfg WriterConfig, brokers int, partitions int32) (*Writer, *kfake.Cluster) {
	t.Helper()
	c, err := kfake.NewCluster(kfake.NumBrokers(brokers), kfake.SeedTopics(partitions, "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	cfg.Brokers = c.ListenAddrs()
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff, cfg.MaxRetryBackoff = 20*time.Millisecond, 50*time.Millisecond
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	w, err := NewWriter(cfg, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w, c
}

func newResults() *results { return &results{errs: map[string][]error{}} }

// allAcked checks that every record was reported once, with nil.
func allAcked(t *testing.T, r *results, n int) {
	t.Helper()
	if len(r.errs) != n {
		t.Errorf("%d records reported, want %d", len(r.errs), n)
	}
	for k, errs := range r.errs {
		if len(errs) != 1 || errs[0] != nil {
			t.Errorf("%s reported %v, want one nil", k, errs)
		}
	}
}

// hashPartition is where kafka-go's writer put a key: kafka.Hash over partitions 0..n-1.
func hashPartition(key string, partitions int) int {
	ps := make([]int, partitions)
	for i := range ps {
		ps[i] = i
	}
	return (&kafka.Hash{}).Balance(kafka.Message{Key: []byte(key)}, ps...)
}

// One produce request carries the records of every partition its broker leads: 400 records
// published at once to 8 partitions take a handful of requests, not one (or more) per partition.
func TestWriterBatchesAcrossPartitions(t *testing.T) {
	w, c := startWriter(t, WriterConfig{BatchTimeout: 50 * time.Millisecond}, 1, 8)
	produces := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Observe: true, Count: -1})
	r := newResults()
	publish(w, r, 400)
	wait(t, r)
	allAcked(t, r, 400)

	for _, pi := range c.PartitionInfos("out") {
		if pi.HighWatermark == 0 {
			t.Errorf("partition %d got no record; the keys should cover all 8", pi.Partition)
		}
	}
	requests := produces.Hits()
	if requests < 1 || requests > 4 {
		t.Errorf("%d produce requests for 400 records in one burst, want 1 to 4 (one per partition would be at least 8)", requests)
	}
	if got := testutil.ToFloat64(w.metrics.requests); int(got) != requests {
		t.Errorf("produce_requests_total = %v, the broker saw %d", got, requests)
	}
	if got := testutil.ToFloat64(w.metrics.acked.WithLabelValues("out")); got != 400 {
		t.Errorf("records written = %v, want 400", got)
	}
}

// Without a linger (the default) a record goes at once when no request to its broker is in
// flight, and the records published while one is in flight share the next request: against a
// broker that answers each produce 100ms late, 1 + 40 records take 2 requests, and the first
// record is acknowledged within a second (a long linger would hold it; a few ms would not show).
func TestWriterWithoutLingerBatchesWhileInFlight(t *testing.T) {
	w, c := startWriter(t, WriterConfig{}, 1, 8)
	inFlight := make(chan struct{}, 1)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		select {
		case inFlight <- struct{}{}:
		default:
		}
		c.SleepControl(func() { time.Sleep(100 * time.Millisecond) })
		return nil, nil, false
	})
	r := newResults()
	start := time.Now()
	first := make(chan time.Duration, 1)
	r.all.Add(1)
	w.Publish(Record{Topic: "out", Key: []byte("first"), Value: []byte("v")}, func(err error) {
		r.mu.Lock()
		r.errs["first"] = append(r.errs["first"], err)
		r.mu.Unlock()
		first <- time.Since(start)
		r.all.Done()
	})
	<-inFlight // the broker holds the first request for 100ms
	for i := range 40 {
		key := fmt.Sprintf("k%d", i)
		w.Publish(Record{Topic: "out", Key: []byte(key), Value: []byte("v")}, r.done(key))
	}
	wait(t, r)
	allAcked(t, r, 41)
	if got := testutil.ToFloat64(w.metrics.requests); got != 2 {
		t.Errorf("%v produce requests, want 2: the first record alone, then the 40 published while it was in flight", got)
	}
	if d := <-first; d > time.Second {
		t.Errorf("the first record was acknowledged after %v; with no linger it goes at once (the broker takes 100ms)", d)
	}
}

// A batch is sent once it is full, whatever the linger: BatchSize and BatchBytes cut requests,
// and a record larger than BatchBytes still goes, alone.
func TestWriterCutsFullBatches(t *testing.T) {
	value := make([]byte, 400)
	size := recordSize(&Record{Key: []byte("k00"), Value: value})
	for _, tc := range []struct {
		name         string
		cfg          WriterConfig
		records      int
		wantRequests int
	}{
		{"batch size", WriterConfig{BatchSize: 50}, 200, 4},
		{"batch bytes", WriterConfig{BatchBytes: batchOverhead + 2*size}, 20, 10},
		{"record larger than batch bytes", WriterConfig{BatchBytes: 100}, 3, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.cfg.BatchTimeout = time.Hour // only a full batch is sent before Close
			w, _ := startWriter(t, tc.cfg, 1, 8)
			r := newResults()
			for i := range tc.records {
				key := fmt.Sprintf("k%02d", i)
				w.Publish(Record{Topic: "out", Key: []byte(key), Value: value}, r.done(key))
			}
			wait(t, r)
			allAcked(t, r, tc.records)
			if got := testutil.ToFloat64(w.metrics.requests); int(got) != tc.wantRequests {
				t.Errorf("%v produce requests, want %d", got, tc.wantRequests)
			}
		})
	}
}

// Each record lands, once, in the partition kafka.Hash picks for its key (the placement of
// kafka-go's writer), with its value and headers intact.
func TestWriterPlacesRecordsByKeyHash(t *testing.T) {
	const partitions, n = 8, 200
	w, c := startWriter(t, WriterConfig{}, 1, partitions)
	r := newResults()
	for i := range n {
		key := fmt.Sprintf("k%d", i)
		w.Publish(Record{Topic: "out", Key: []byte(key), Value: []byte("v" + strconv.Itoa(i)), Headers: []kafka.Header{
			{Key: "i", Value: []byte(strconv.Itoa(i))},
			{Key: "empty", Value: nil},
		}}, r.done(key))
	}
	wait(t, r)
	allAcked(t, r, n)

	seen := map[string]int{}
	for p := range partitions {
		for _, rec := range readPartition(t, c, "out", p) {
			seen[rec.key]++
			if want := hashPartition(rec.key, partitions); p != want {
				t.Errorf("%s in partition %d, kafka.Hash picks %d", rec.key, p, want)
			}
			i := rec.key[1:]
			if rec.value != "v"+i {
				t.Errorf("%s has value %q, want %q", rec.key, rec.value, "v"+i)
			}
			if len(rec.headers) != 2 || rec.headers[0].Key != "i" || string(rec.headers[0].Value) != i ||
				rec.headers[1].Key != "empty" || len(rec.headers[1].Value) != 0 {
				t.Errorf("%s has headers %v", rec.key, rec.headers)
			}
		}
	}
	if len(seen) != n {
		t.Errorf("%d distinct records in the topic, want %d", len(seen), n)
	}
	for k, count := range seen {
		if count != 1 {
			t.Errorf("%s stored %d times", k, count)
		}
	}
}

// A partition-level error fails only that partition's records: they are retried until acked,
// while the other partitions' records in the same requests are acked at once.
func TestWriterRetriesOnlyTheFailingPartition(t *testing.T) {
	const partitions, n = 8, 80
	w, c := startWriter(t, WriterConfig{}, 1, partitions)
	fault := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Partitions: []int32{0},
		Err: kerr.NotLeaderForPartition, Count: 3})
	onP0 := 0
	for i := range n {
		if hashPartition(fmt.Sprintf("k%d", i), partitions) == 0 {
			onP0++
		}
	}
	if onP0 == 0 || onP0 == n {
		t.Fatalf("%d of %d keys on partition 0; the test needs some on it and some elsewhere", onP0, n)
	}
	r := newResults()
	publish(w, r, n)
	wait(t, r)
	allAcked(t, r, n)
	if got := fault.Hits(); got != 3 {
		t.Errorf("the fault answered %d requests, want 3", got)
	}
	// Every p0 record failed at least once (the first request carried them all) and at most
	// once per faulted request; a failure outside p0 would push the count past 3*onP0.
	failures := int(testutil.ToFloat64(w.metrics.failures.WithLabelValues("out")))
	if failures < onP0 || failures > 3*onP0 {
		t.Errorf("%d failures counted, want between %d and %d: only partition 0's %d records should fail", failures, onP0, 3*onP0, onP0)
	}
}

// With leaders spread over three brokers, each broker gets its own requests; after every
// leader moves, the writer follows the transport's refreshed metadata and keeps writing.
func TestWriterFollowsLeaderMoves(t *testing.T) {
	const partitions, n = 8, 80
	c, err := kfake.NewCluster(kfake.NumBrokers(3), kfake.SeedTopics(partitions, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for p := range int32(partitions) {
		if err := c.MoveTopicPartition("out", p, p%3); err != nil {
			t.Fatal(err)
		}
	}
	perNode := make([]*kfake.FaultHandle, 3)
	for node := range perNode {
		perNode[node] = c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Nodes: []int32{int32(node)}, Observe: true, Count: -1})
	}
	log := logrus.New()
	log.SetOutput(io.Discard)
	// A short TTL so the transport sees the moves in well under a second (default 6s).
	transport := &kafka.Transport{MetadataTTL: 500 * time.Millisecond}
	defer transport.CloseIdleConnections() // the writer closes only a transport it made
	w, err := NewWriter(WriterConfig{
		Brokers:      c.ListenAddrs()[:1], // the others are discovered
		RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond,
		Transport: transport,
	}, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()

	r := newResults()
	publish(w, r, n)
	wait(t, r)
	allAcked(t, r, n)
	for node, h := range perNode {
		if h.Hits() == 0 {
			t.Errorf("broker %d got no produce request, though it leads partitions", node)
		}
	}

	for p := range int32(partitions) {
		if err := c.MoveTopicPartition("out", p, (p+1)%3); err != nil {
			t.Fatal(err)
		}
	}
	r2 := newResults()
	for i := range n {
		key := fmt.Sprintf("after-move-%d", i)
		w.Publish(Record{Topic: "out", Key: []byte(key), Value: []byte("v")}, r2.done(key))
	}
	wait(t, r2)
	allAcked(t, r2, n)
	t.Logf("write failures while the transport caught up with the moves: %v", testutil.ToFloat64(w.metrics.failures.WithLabelValues("out")))

	var stored int64
	for _, pi := range c.PartitionInfos("out") {
		stored += pi.HighWatermark
	}
	if stored < 2*n {
		t.Errorf("%d records stored, want at least %d", stored, 2*n)
	}
}

// Close sends records still lingering and waits for their acknowledgements: they are acked,
// not failed.
func TestWriterCloseFlushesQueuedRecords(t *testing.T) {
	w, _ := startWriter(t, WriterConfig{BatchTimeout: time.Hour}, 1, 8)
	r := newResults()
	publish(w, r, 20)
	time.Sleep(100 * time.Millisecond)
	r.mu.Lock()
	early := len(r.errs)
	r.mu.Unlock()
	if early != 0 {
		t.Fatalf("%d records reported before the linger passed or Close", early)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r.mu.Lock()
	reported := len(r.errs)
	r.mu.Unlock()
	if reported != 20 {
		t.Errorf("%d records reported when Close returned, want 20", reported)
	}
	wait(t, r)
	allAcked(t, r, 20)
	if got := testutil.ToFloat64(w.metrics.requests); got != 1 {
		t.Errorf("%v produce requests, want the one Close sent", got)
	}
}

// At Close each broker gets one attempt: when a request to it fails, the records queued behind
// it get ErrClosed at once instead of a request (and its timeout) each.
func TestWriterCloseGivesUpOnAFailingBroker(t *testing.T) {
	const slow = 400 * time.Millisecond
	w, c := startWriter(t, WriterConfig{BatchSize: 10, BatchTimeout: time.Hour, RetryBackoff: time.Minute}, 1, 8)
	warm := newResults()
	publish(w, warm, 10) // a full batch: sent at once; routes and connection are set up
	wait(t, warm)
	allAcked(t, warm, 10)

	// From now on the broker answers a produce by closing the connection, slowly.
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		c.SleepControl(func() { time.Sleep(slow) })
		return nil, errors.New("down"), true
	})
	r := newResults()
	publish(w, r, 50) // five full batches: one in flight, four queued behind it
	start := time.Now()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if took := time.Since(start); took > 3*slow {
		t.Errorf("Close took %v; one failing request takes %v, five would take %v", took, slow, 5*slow)
	}
	wait(t, r)
	for k, errs := range r.errs {
		if len(errs) != 1 || !errors.Is(errs[0], ErrClosed) {
			t.Errorf("%s reported %v, want one ErrClosed", k, errs)
		}
	}
	if got := testutil.ToFloat64(w.metrics.requests); got != 2 {
		t.Errorf("%v produce requests, want 2: the warm-up and one attempt at Close", got)
	}
}

type storedRecord struct {
	key, value string
	headers    []kafka.Header
}

// readPartition reads a partition from its start to its high watermark.
func readPartition(t *testing.T, c *kfake.Cluster, topic string, partition int) []storedRecord {
	t.Helper()
	cl := &kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...), Transport: &kafka.Transport{}, Timeout: 10 * time.Second}
	var out []storedRecord
	for offset := int64(0); ; {
		res, err := cl.Fetch(context.Background(), &kafka.FetchRequest{Topic: topic, Partition: partition, Offset: offset, MinBytes: 1, MaxBytes: 10 << 20, MaxWait: 100 * time.Millisecond})
		if err == nil {
			err = res.Error
		}
		if err != nil {
			t.Fatalf("fetch %s/%d@%d: %v", topic, partition, offset, err)
		}
		for {
			rec, err := res.Records.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("read %s/%d: %v", topic, partition, err)
			}
			if rec.Offset < offset {
				continue // a batch may start before the offset asked for
			}
			key, _ := protocol.ReadAll(rec.Key)
			value, _ := protocol.ReadAll(rec.Value)
			out = append(out, storedRecord{key: string(key), value: string(value), headers: append([]kafka.Header(nil), rec.Headers...)})
			offset = rec.Offset + 1
		}
		if offset >= res.HighWatermark {
			return out
		}
	}
}

// BenchmarkWriterPublish measures records through Publish to an in-process broker, each
// waited for until acknowledged: a burst, so requests carry full batches.
func BenchmarkWriterPublish(b *testing.B) {
	w, _ := startWriter(b, WriterConfig{}, 1, 8)
	value := make([]byte, 300)
	keys := make([][]byte, 1000)
	for i := range keys {
		keys[i] = []byte(fmt.Sprintf("key-%d", i))
	}
	var acked sync.WaitGroup
	var failed atomicError
	done := func(err error) {
		if err != nil {
			failed.set(err)
		}
		acked.Done()
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		acked.Add(1)
		w.Publish(Record{Topic: "out", Key: keys[i%len(keys)], Value: value}, done)
	}
	acked.Wait()
	b.StopTimer()
	if err := failed.get(); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(float64(b.N)/testutil.ToFloat64(w.metrics.requests), "records/request")
}

type atomicError struct {
	mu  sync.Mutex
	err error
}

func (e *atomicError) set(err error) { e.mu.Lock(); e.err = err; e.mu.Unlock() }
func (e *atomicError) get() error    { e.mu.Lock(); defer e.mu.Unlock(); return e.err }
