package kafkaio

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// startWriter returns a writer of cl, closed when the test ends.
func startWriter(t *testing.T, cl *Client, cfg WriterConfig) *Writer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := cl.NewWriter(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close(5 * time.Second) })
	return w
}

// results collects what the writer reports for each published record, by an id of the test's.
type results struct {
	mu   sync.Mutex
	errs map[string]error
	n    atomic.Int64
	wg   sync.WaitGroup
}

func newResults() *results { return &results{errs: map[string]error{}} }

func (r *results) publish(w *Writer, id string, rec Record) {
	r.wg.Add(1)
	w.Publish(rec, func(err error) {
		r.mu.Lock()
		r.errs[id] = err
		r.mu.Unlock()
		r.n.Add(1)
		r.wg.Done() // a second report of one record panics here
	})
}

// reported returns how many records were reported.
func (r *results) reported() int { return int(r.n.Load()) }

func (r *results) err(id string) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.errs[id]
}

// wait waits until every record published was reported.
func (r *results) wait(t *testing.T, timeout time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		r.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(timeout):
		t.Fatalf("%d records reported within %s; some never were", r.reported(), timeout)
	}
}

// wantAllOK fails the test for every record not reported acknowledged.
func (r *results) wantAllOK(t *testing.T) {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	bad := 0
	for id, err := range r.errs {
		if err != nil {
			if bad++; bad <= 5 {
				t.Errorf("record %s: %v", id, err)
			}
		}
	}
	if bad > 5 {
		t.Errorf("... and %d more records not acknowledged", bad-5)
	}
}

// queued returns how many records the writer holds.
func (w *Writer) queued() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, q := range w.queues {
		n += len(q.recs)
	}
	return n
}

// keysCovering returns n keys that kafka.Hash, the writer's default balancer, spreads over all
// partitions of a topic with the given count.
func keysCovering(t *testing.T, partitions, n int) []string {
	t.Helper()
	ids := make([]int, partitions)
	for i := range ids {
		ids[i] = i
	}
	seen := map[int]bool{}
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("key-%02d", i)
		seen[(&kafka.Hash{}).Balance(kafka.Message{Key: []byte(keys[i])}, ids...)] = true
	}
	if len(seen) != partitions {
		t.Fatalf("the test's %d keys cover %d of %d partitions", n, len(seen), partitions)
	}
	return keys
}

// checkKeyOrder checks that the log holds each key's records exactly as want lists them, in
// that order, and nothing else.
func checkKeyOrder(t *testing.T, log map[int32][]*kgo.Record, want map[string][]string) {
	t.Helper()
	got := map[string][]string{}
	for _, recs := range log {
		for _, r := range recs {
			got[string(r.Key)] = append(got[string(r.Key)], string(r.Value))
		}
	}
	for k, vs := range want {
		if fmt.Sprint(got[k]) != fmt.Sprint(vs) {
			t.Errorf("key %s: the log holds\n%v\nwant, in publish order and once each,\n%v", k, got[k], vs)
		}
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("the log holds records of key %q, which was never published", k)
		}
	}
}

// producesTo reports whether req is a produce request to topic's partition.
func producesTo(req kmsg.Request, topic string, partition int32) bool {
	pr, ok := req.(*kmsg.ProduceRequest)
	if !ok {
		return false
	}
	for _, rt := range pr.Topics {
		for _, rp := range rt.Partitions {
			if rt.Topic == topic && rp.Partition == partition {
				return true
			}
		}
	}
	return false
}

// holdFirstProduce holds the next produce request at the broker until release is called (or the
// test ends). inFlight is closed once the request reached the broker: records published then
// queue behind it and go together in the next request.
func holdFirstProduce(t *testing.T, c *kfake.Cluster) (inFlight <-chan struct{}, release func()) {
	in, rel := make(chan struct{}), make(chan struct{})
	var once sync.Once
	release = func() { once.Do(func() { close(rel) }) }
	t.Cleanup(release)
	c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.DropControl()
		close(in)
		c.SleepControl(func() { <-rel })
		return nil, nil, false
	})
	return in, release
}

// A request that fails is retried whole, before anything published after it, so whatever fails
// where (retriable errors on two partitions, requests dropped unanswered on a third), each key's
// records reach the log in publish order, each once, and every record is acknowledged.
func TestWriterKeepsKeyOrderAcrossPartialFailures(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(4, "out"))
	cl, _ := newClient(t, c, []string{"out"})
	keys := keysCovering(t, 4, 16)
	faults := c.Fault(
		kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Partitions: []int32{0}, Err: kerr.NotLeaderForPartition, Count: 5},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Partitions: []int32{2}, Err: kerr.NotEnoughReplicas, Count: 5},
	)
	var toP1, dropped atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		if producesTo(req, "out", 1) && toP1.Add(1)%2 == 0 && dropped.Load() < 3 {
			dropped.Add(1)
			c.KeepControl()
			return nil, errors.New("the test drops the connection"), true
		}
		return nil, nil, false
	})
	// Small batches: many requests per partition, so failures land between others.
	w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, BatchSize: 10, RetryBackoff: 5 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond})
	res := newResults()
	want := map[string][]string{}
	for i := range 40 {
		for _, k := range keys {
			v := fmt.Sprintf("%s-%03d", k, i)
			want[k] = append(want[k], v)
			res.publish(w, v, Record{Topic: "out", Key: []byte(k), Value: []byte(v)})
		}
	}
	res.wait(t, 30*time.Second)
	res.wantAllOK(t)
	if faults.Hits() != 10 || dropped.Load() != 3 {
		t.Errorf("%d requests refused and %d dropped, want 10 and 3: the test did not fail what it meant to", faults.Hits(), dropped.Load())
	}
	checkKeyOrder(t, readLog(t, c, "out", 4), want)
}

// Partition leaders move between three brokers while records are being written: requests to the
// old leader are refused (NOT_LEADER) until the metadata shows the new one, and each key's
// records still reach the log in publish order, each once.
func TestWriterKeepsKeyOrderAcrossLeaderMoves(t *testing.T) {
	c := startCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(4, "out"))
	cl, _ := newClient(t, c, []string{"out"})
	keys := keysCovering(t, 4, 16)
	w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, BatchSize: 20, RetryBackoff: 10 * time.Millisecond, MaxRetryBackoff: 200 * time.Millisecond})
	res := newResults()
	want := map[string][]string{}
	for round := range 8 {
		for i := range 5 {
			for _, k := range keys {
				v := fmt.Sprintf("%s-%d-%d", k, round, i)
				want[k] = append(want[k], v)
				res.publish(w, v, Record{Topic: "out", Key: []byte(k), Value: []byte(v)})
			}
		}
		// The records just published are queued or in flight to the leaders that move now.
		if round%2 == 0 {
			c.ShufflePartitionLeaders()
			continue
		}
		for p := range int32(4) {
			if err := c.MoveTopicPartition("out", p, (c.LeaderFor("out", p)+1)%3); err != nil {
				t.Fatal(err)
			}
		}
	}
	res.wait(t, 60*time.Second)
	res.wantAllOK(t)
	checkKeyOrder(t, readLog(t, c, "out", 4), want)
}

// The broker refuses a batch as too large (the topic's max.message.bytes): the writer splits it
// until the refused record is alone; that record, a dead-letter copy (Truncatable), is cut to fit
// and written with header wxnotify.truncated giving its original value size. Every record is
// written once, in publish order.
func TestWriterSplitsARefusedBatchAndCutsATruncatableRecord(t *testing.T) {
	c := startCluster(t)
	if err := c.CreateTopic("dlq", 1, map[string]string{"max.message.bytes": "4096"}); err != nil {
		t.Fatal(err)
	}
	cl, hook := newClient(t, c, []string{"dlq"})
	w := startWriter(t, cl, WriterConfig{Topics: []string{"dlq"}})
	inFlight, release := holdFirstProduce(t, c)
	res := newResults()
	res.publish(w, "first", Record{Topic: "dlq", Value: []byte("first")})
	<-inFlight
	big := strings.Repeat("B", 10000)
	reason := kafka.Header{Key: "wxnotify.reason", Value: []byte("undecodable")}
	want := []string{"first"}
	for i := range 12 { // 12 records of 400 bytes: more than 4096 together
		if i == 6 {
			res.publish(w, "big", Record{Topic: "dlq", Key: []byte("k"), Value: []byte(big), Headers: []kafka.Header{reason}, Truncatable: true})
			want = append(want, "big")
		}
		v := fmt.Sprintf("%02d-%s", i, strings.Repeat("x", 400))
		res.publish(w, v, Record{Topic: "dlq", Key: []byte("k"), Value: []byte(v)})
		want = append(want, v)
	}
	release()
	res.wait(t, 20*time.Second)
	res.wantAllOK(t)

	log := readLog(t, c, "dlq", 1)[0]
	if len(log) != len(want) {
		t.Fatalf("the log holds %d records, want %d", len(log), len(want))
	}
	for i, r := range log {
		if want[i] != "big" {
			if string(r.Value) != want[i] {
				t.Errorf("record %d = %.10q..., want %.10q...", i, r.Value, want[i])
			}
			continue
		}
		hdr := map[string]string{}
		for _, h := range r.Headers {
			hdr[h.Key] = string(h.Value)
		}
		if hdr[HeaderTruncated] != "10000" || hdr["wxnotify.reason"] != "undecodable" || string(r.Key) != "k" {
			t.Errorf("the cut record has key %q and headers %v, want its key, its own headers and %s: 10000", r.Key, hdr, HeaderTruncated)
		}
		if len(r.Value) == 0 || len(r.Value) >= 4096 || !strings.HasPrefix(big, string(r.Value)) {
			t.Errorf("the cut record's value has %d bytes, want a prefix of the original that fits in 4096", len(r.Value))
		}
	}
	if n := testutil.ToFloat64(cl.metrics.failures.WithLabelValues("dlq")); n < 2 {
		t.Errorf("%v refused requests, want at least 2 (the whole batch, the big record alone): the batch was never refused", n)
	}
	if logged(hook, logrus.WarnLevel, "writing it cut to fit") == nil {
		t.Error("no warning that a record was cut to fit")
	}
}

// A record the broker refuses as too large that may not be cut gets a *PermanentError, and the
// records queued behind it on its partition get one too (Behind), since writing them would pass
// it. Those before it are written; the partition takes records published afterwards.
func TestWriterRefusedRecordFailsWithTheRecordsBehindIt(t *testing.T) {
	c := startCluster(t)
	if err := c.CreateTopic("out", 1, map[string]string{"max.message.bytes": "4096"}); err != nil {
		t.Fatal(err)
	}
	cl, hook := newClient(t, c, []string{"out"})
	w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}})
	inFlight, release := holdFirstProduce(t, c)
	res := newResults()
	rec := func(v string) Record { return Record{Topic: "out", Key: []byte("k"), Value: []byte(v)} }
	res.publish(w, "first", rec("first"))
	<-inFlight
	for _, id := range []string{"a", "b", "big", "c", "d"} {
		v := id + strings.Repeat("x", 400)
		if id == "big" {
			v = strings.Repeat("B", 10000)
		}
		res.publish(w, id, rec(v))
	}
	release()
	res.wait(t, 20*time.Second)
	for id, want := range map[string]string{"first": "ok", "a": "ok", "b": "ok", "big": "refused", "c": "behind", "d": "behind"} {
		err := res.err(id)
		var perr *PermanentError
		switch {
		case want == "ok" && err != nil:
			t.Errorf("%s: %v, want it written", id, err)
		case want == "ok":
		case !errors.As(err, &perr) || !errors.Is(err, kafka.MessageSizeTooLarge) || perr.Topic != "out" || perr.Partition != 0:
			t.Errorf("%s: %v, want a *PermanentError of out/0 for MESSAGE_TOO_LARGE", id, err)
		case perr.Behind != (want == "behind"):
			t.Errorf("%s: Behind = %v, want %v (%v)", id, perr.Behind, want == "behind", err)
		}
	}
	res.publish(w, "after", rec("after"))
	res.wait(t, 10*time.Second)
	if err := res.err("after"); err != nil {
		t.Errorf("a record published after the refusal: %v, want it written", err)
	}
	var got []string
	for _, r := range readLog(t, c, "out", 1)[0] {
		got = append(got, string(r.Value[:min(len(r.Value), 5)]))
	}
	if fmt.Sprint(got) != "[first axxxx bxxxx after]" {
		t.Errorf("the log holds %v, want [first axxxx bxxxx after]", got)
	}
	if logged(hook, logrus.ErrorLevel, "kafka write refused; not retrying") == nil {
		t.Error("no error logged for the refused record")
	}
}

// A produce the broker refuses for lack of authorization is permanent: the record is reported at
// once with a *PermanentError naming the topic and the cause, after one attempt, while a topic
// the user may write still takes records.
func TestWriterAuthorizationFailureIsPermanent(t *testing.T) {
	all := func(typ kmsg.ACLResourceType, name string) kfake.ACL {
		return kfake.ACL{Resource: typ, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationAll, Allow: true}
	}
	c := startCluster(t, kfake.SeedTopics(1, "allowed", "denied"), kfake.EnableSASL(), kfake.EnableACLs(),
		kfake.Superuser("PLAIN", "admin", "admin-secret"),
		kfake.User("PLAIN", "app", "app-secret", all(kmsg.ACLResourceTypeTopic, "*"), all(kmsg.ACLResourceTypeCluster, "kafka-cluster"),
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "denied", Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationWrite}))
	cl, hook := newClientWith(t, Config{Brokers: c.ListenAddrs(), Topics: []string{"allowed", "denied"},
		SASL: plain.Mechanism{Username: "app", Password: "app-secret"}, SASLUser: "app"})
	w := startWriter(t, cl, WriterConfig{Topics: []string{"allowed", "denied"}, RetryBackoff: time.Second})
	res := newResults()
	res.publish(w, "denied", Record{Topic: "denied", Value: []byte("v")})
	res.publish(w, "allowed", Record{Topic: "allowed", Value: []byte("v")})
	res.wait(t, 20*time.Second)
	var perr *PermanentError
	if err := res.err("denied"); !errors.As(err, &perr) || !errors.Is(err, kafka.TopicAuthorizationFailed) || perr.Behind ||
		!strings.Contains(err.Error(), `topic "denied"`) || !strings.Contains(err.Error(), "Topic Authorization Failed") {
		t.Errorf("denied: %v, want a *PermanentError naming the topic and TOPIC_AUTHORIZATION_FAILED", err)
	}
	if err := res.err("allowed"); err != nil {
		t.Errorf("allowed: %v", err)
	}
	if n := testutil.ToFloat64(cl.metrics.failures.WithLabelValues("denied")); n != 1 {
		t.Errorf("%v failed attempts to write the denied topic, want 1 (no retry)", n)
	}
	if logged(hook, logrus.ErrorLevel, "kafka write refused; not retrying") == nil {
		t.Error("no error logged for the refusal")
	}
}

// A topic deleted under the writer is unknown to the broker, and then to the client's metadata:
// its records are retried for UnknownTopicGrace (a topic just created is unknown for a while
// too), then fail with a *PermanentError naming the topic and UNKNOWN_TOPIC_OR_PARTITION instead
// of being retried forever.
func TestWriterMissingTopicBecomesPermanent(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(1, "out"))
	cl, _ := newClient(t, c, []string{"out"})
	w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 100 * time.Millisecond,
		UnknownTopicGrace: time.Second})
	if err := c.DeleteTopic("out"); err != nil {
		t.Fatal(err)
	}
	res := newResults()
	start := time.Now()
	res.publish(w, "r", Record{Topic: "out", Value: []byte("r")})
	res.wait(t, 20*time.Second)
	var perr *PermanentError
	if err := res.err("r"); !errors.As(err, &perr) || !errors.Is(err, kafka.UnknownTopicOrPartition) || perr.Topic != "out" {
		t.Errorf("the record: %v, want a *PermanentError of topic out for UNKNOWN_TOPIC_OR_PARTITION", err)
	}
	if took := time.Since(start); took < time.Second {
		t.Errorf("failed after %s, before the 1s grace", took)
	}
}

// Retriable failures (a leader moving, replicas missing, a topic whose metadata is still
// spreading, a connection dropped unanswered) are retried with exponential backoff until the
// record is acknowledged, and it is written once.
func TestWriterRetriesRetriableErrorsWithBackoff(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  *kerr.Error // nil: the connection is dropped
	}{
		{"not leader", kerr.NotLeaderForPartition},
		{"not enough replicas", kerr.NotEnoughReplicas},
		{"unknown topic or partition", kerr.UnknownTopicOrPartition},
		{"connection dropped", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := startCluster(t, kfake.SeedTopics(1, "out"))
			cl, hook := newClient(t, c, []string{"out"})
			w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, RetryBackoff: 40 * time.Millisecond, MaxRetryBackoff: time.Second})
			var dropped atomic.Int32
			attempts := func() int { return int(dropped.Load()) }
			if tc.err != nil {
				f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: tc.err, Count: 3})
				attempts = f.Hits
			} else {
				c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
					c.KeepControl() // sticky: DropControl ends it
					if dropped.Add(1) == 3 {
						c.DropControl()
					}
					return nil, errors.New("the test drops the connection"), true
				})
			}
			res := newResults()
			start := time.Now()
			res.publish(w, "r", Record{Topic: "out", Value: []byte("r")})
			res.wait(t, 20*time.Second)
			took := time.Since(start)
			if err := res.err("r"); err != nil {
				t.Fatalf("the record: %v, want it written after the failures", err)
			}
			// Three failures wait at least half of 40, 80 and 160 ms (the backoff's jitter).
			if took < 140*time.Millisecond {
				t.Errorf("written %s after three failures: the retries did not back off", took)
			}
			if n, m := attempts(), testutil.ToFloat64(cl.metrics.failures.WithLabelValues("out")); n != 3 || m != 3 {
				t.Errorf("%d attempts failed at the broker and %v were counted, want 3", n, m)
			}
			if logged(hook, logrus.WarnLevel, "kafka write failed; retrying") == nil {
				t.Error("no warning about the retried write")
			}
			if n := len(readLog(t, c, "out", 1)[0]); n != 1 {
				t.Errorf("the log holds %d records, want 1", n)
			}
		})
	}
}

// Close waits for the records queued to be acknowledged, within its timeout; records still
// unacknowledged then, or failing once Close began, are reported ErrClosed and not retried;
// records published after Close are reported ErrClosed at once.
func TestWriterClose(t *testing.T) {
	t.Run("waits for queued records", func(t *testing.T) {
		c := startCluster(t, kfake.SeedTopics(4, "out"))
		cl, _ := newClient(t, c, []string{"out"})
		w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}})
		res := newResults()
		for _, v := range seq("v", 200) {
			res.publish(w, v, Record{Topic: "out", Key: []byte(v), Value: []byte(v)})
		}
		if err := w.Close(10 * time.Second); err != nil {
			t.Fatalf("Close: %v", err)
		}
		if n := res.reported(); n != 200 {
			t.Fatalf("%d of 200 records reported when Close returned", n)
		}
		res.wantAllOK(t)
	})
	t.Run("a request unanswered by the deadline", func(t *testing.T) {
		c := startCluster(t, kfake.SeedTopics(1, "out"))
		cl, _ := newClient(t, c, []string{"out"})
		w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}})
		inFlight, _ := holdFirstProduce(t, c) // held until the test ends
		res := newResults()
		res.publish(w, "held", Record{Topic: "out", Value: []byte("held")})
		<-inFlight
		res.publish(w, "queued", Record{Topic: "out", Value: []byte("queued")})
		start := time.Now()
		err := w.Close(300 * time.Millisecond)
		if err == nil || !strings.Contains(err.Error(), "still unacknowledged") {
			t.Errorf("Close = %v, want an error saying records were unacknowledged", err)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("Close took %s with a 300ms timeout", took)
		}
		if n := res.reported(); n != 2 {
			t.Fatalf("%d of 2 records reported when Close returned", n)
		}
		for _, id := range []string{"held", "queued"} {
			if err := res.err(id); !errors.Is(err, ErrClosed) {
				t.Errorf("%s: %v, want ErrClosed", id, err)
			}
		}
		var after error
		w.Publish(Record{Topic: "out", Value: []byte("late")}, func(err error) { after = err })
		if !errors.Is(after, ErrClosed) {
			t.Errorf("a record published after Close: %v, want ErrClosed before Publish returns", after)
		}
	})
	t.Run("a failure once Close began is not retried", func(t *testing.T) {
		c := startCluster(t, kfake.SeedTopics(1, "out"))
		cl, _ := newClient(t, c, []string{"out"})
		f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.NotLeaderForPartition, Count: -1})
		w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, RetryBackoff: 50 * time.Millisecond})
		res := newResults()
		res.publish(w, "r", Record{Topic: "out", Value: []byte("r")})
		waitFor(t, 10*time.Second, "a first refusal", func() bool { return f.Hits() >= 1 })
		before := f.Hits()
		if err := w.Close(20 * time.Second); err != nil {
			t.Errorf("Close = %v", err)
		}
		if err := res.err("r"); !errors.Is(err, ErrClosed) {
			t.Errorf("the record: %v, want ErrClosed", err)
		}
		// The attempt under way when Close began may still fail; nothing is tried after it (Close
		// joined the writer's goroutines).
		if n := f.Hits(); n > before+1 {
			t.Errorf("%d attempts when Close began, %d when it returned: a request was retried after a failure once Close began", before, n)
		}
	})
}

// Whatever the broker does, the writer holds the records published and not yet reported, and
// nothing more: a long spell of refusals on every partition does not grow its queues, its
// goroutines or what it sends again, and once the broker takes writes each record is written
// once.
func TestWriterHoldsOnlyWhatWasPublished(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(4, "out"))
	cl, _ := newClient(t, c, []string{"out"})
	f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.NotEnoughReplicas, Count: -1})
	w := startWriter(t, cl, WriterConfig{Topics: []string{"out"}, RetryBackoff: time.Millisecond, MaxRetryBackoff: 5 * time.Millisecond})
	base := runtime.NumGoroutine()
	res := newResults()
	keys := keysCovering(t, 4, 16)
	want := map[string][]string{}
	for i := range 2000 {
		k := keys[i%len(keys)]
		v := k + "-" + strconv.Itoa(i)
		want[k] = append(want[k], v)
		res.publish(w, v, Record{Topic: "out", Key: []byte(k), Value: []byte(v)})
	}
	waitFor(t, 20*time.Second, "every partition refused many times", func() bool { return f.Hits() >= 200 })
	if n := w.queued(); n != 2000 {
		t.Errorf("the writer holds %d records, want the 2000 published", n)
	}
	// One sender a partition, and the transport's connections: nothing per record or attempt.
	if n := runtime.NumGoroutine() - base; n > 50 {
		t.Errorf("%d goroutines more than before publishing 2000 records", n)
	}
	if n := res.reported(); n != 0 {
		t.Errorf("%d records reported while every write was refused", n)
	}
	f.Remove()
	res.wait(t, 30*time.Second)
	res.wantAllOK(t)
	if n := w.queued(); n != 0 {
		t.Errorf("the writer still holds %d records after they were acknowledged", n)
	}
	checkKeyOrder(t, readLog(t, c, "out", 4), want)
}

// Produce errors are classified in one place: refusals that stay (authorization, an invalid
// topic or record, a protocol mismatch) are permanent, wrapped or not; a missing topic becomes
// permanent only after the grace; everything else, including errors that are not Kafka's, is
// retried.
func TestProduceErrorClassification(t *testing.T) {
	const grace = time.Minute
	now, past := time.Now(), time.Now().Add(-2*grace)
	for _, tc := range []struct {
		err       error
		since     time.Time
		permanent bool
		refused   bool // the broker refused the records themselves
	}{
		{kafka.TopicAuthorizationFailed, now, true, false},
		{kafka.ClusterAuthorizationFailed, now, true, false},
		{fmt.Errorf("produce: %w", kafka.InvalidTopic), now, true, false},
		{kafka.PolicyViolation, now, true, false},
		{kafka.UnsupportedVersion, now, true, false},
		{kafka.MessageSizeTooLarge, now, true, true},
		{kafka.RecordListTooLarge, now, true, true},
		{fmt.Errorf("produce: %w", kafka.InvalidRecord), now, true, true},
		{kafka.UnknownTopicOrPartition, now, false, false},
		{kafka.UnknownTopicOrPartition, past, true, false},
		{kafka.NotLeaderForPartition, past, false, false},
		{kafka.NotEnoughReplicas, past, false, false},
		{kafka.RequestTimedOut, past, false, false},
		{kafka.Unknown, past, false, false},
		{io.ErrUnexpectedEOF, past, false, false},
		{context.DeadlineExceeded, past, false, false},
	} {
		age := "new"
		if tc.since.Equal(past) {
			age = "past the grace"
		}
		if got := permanent(tc.err, tc.since, grace); got != tc.permanent {
			t.Errorf("permanent(%v, %s) = %v, want %v", tc.err, age, got, tc.permanent)
		}
		if got := refusedRecord(tc.err); got != tc.refused {
			t.Errorf("refusedRecord(%v) = %v, want %v", tc.err, got, tc.refused)
		}
	}
}
