package sink

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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

func newWriter(t *testing.T, opts ...kfake.Opt) (*Writer, *kfake.Cluster) {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(2, "out")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	log := logrus.New()
	log.SetOutput(io.Discard)
	w, err := NewWriter(WriterConfig{Brokers: c.ListenAddrs(), RetryBackoff: 20 * time.Millisecond, MaxRetryBackoff: 50 * time.Millisecond}, prometheus.NewRegistry(), log)
	if err != nil {
		t.Fatal(err)
	}
	return w, c
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
	w, c := newWriter(t)
	defer w.Close()
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.UnknownServerError, Count: 3})
	r := &results{errs: map[string][]error{}}
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
	w, c := newWriter(t)
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "out", Err: kerr.UnknownServerError, Count: -1})
	r := &results{errs: map[string][]error{}}
	publish(w, r, 5)
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(w.metrics.failures.WithLabelValues("out")) < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if err := w.Close(); err != nil {
		t.Logf("close: %v", err)
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
	r2 := &results{errs: map[string][]error{}}
	w.Publish(Record{Topic: "out", Value: []byte("late")}, r2.done("late"))
	wait(t, r2)
	if !errors.Is(r2.errs["late"][0], ErrClosed) {
		t.Errorf("publish after close reported %v, want ErrClosed", r2.errs["late"])
	}
}
