package kafkaio

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
)

// The package's tests run against kfake, the in-process Kafka broker of franz-go, and check what
// they write or read with kgo, franz-go's client: a second, independent implementation of the
// protocol.

// startCluster starts a broker (one, unless opts say otherwise) that is closed when the test ends.
func startCluster(t *testing.T, opts ...kfake.Opt) *kfake.Cluster {
	t.Helper()
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(500 * time.Millisecond)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

// newClient returns a Client of the cluster (brokers: all of the cluster's unless given) for
// topics, and the hook that records its log.
func newClient(t *testing.T, c *kfake.Cluster, topics []string, brokers ...string) (*Client, *logtest.Hook) {
	t.Helper()
	if len(brokers) == 0 {
		brokers = c.ListenAddrs()
	}
	return newClientWith(t, Config{Brokers: brokers, Topics: topics})
}

// newClientWith is newClient with a Config of the caller's.
func newClientWith(t *testing.T, cfg Config) (*Client, *logtest.Hook) {
	t.Helper()
	log := logrus.New()
	log.SetOutput(io.Discard)
	log.SetLevel(logrus.DebugLevel)
	hook := logtest.NewLocal(log)
	cl, err := New(cfg, nil, log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl, hook
}

// logged reports whether the hook recorded an entry at level whose message contains msg.
func logged(hook *logtest.Hook, level logrus.Level, msg string) *logrus.Entry {
	for _, e := range hook.AllEntries() {
		if e.Level == level && strings.Contains(e.Message, msg) {
			return e
		}
	}
	return nil
}

// waitFor polls cond until it holds, or fails the test after timeout.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// newKgo returns a kgo client of the cluster, closed when the test ends. Records go to the
// partition they name.
func newKgo(t *testing.T, c *kfake.Cluster, opts ...kgo.Opt) *kgo.Client {
	t.Helper()
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(c.ListenAddrs()...), kgo.RecordPartitioner(kgo.ManualPartitioner())}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cl.Close)
	return cl
}

// produce writes values to topic/partition with kgo, each in a request of its own.
func produce(t *testing.T, cl *kgo.Client, topic string, partition int32, values ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, v := range values {
		if err := cl.ProduceSync(ctx, &kgo.Record{Topic: topic, Partition: partition, Value: []byte(v)}).FirstErr(); err != nil {
			t.Fatalf("produce to %s/%d: %v", topic, partition, err)
		}
	}
}

// readLog reads topic's partitions with kgo from their start to their end, and returns their
// records by partition in offset order.
func readLog(t *testing.T, c *kfake.Cluster, topic string, partitions int) map[int32][]*kgo.Record {
	t.Helper()
	ends := endOffsets(t, c, topic, partitions)
	offsets := map[int32]kgo.Offset{}
	left := 0
	for p := range int32(partitions) {
		offsets[p] = kgo.NewOffset().AtStart()
		left += int(ends[p])
	}
	cl := newKgo(t, c, kgo.ConsumePartitions(map[string]map[int32]kgo.Offset{topic: offsets}))
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := map[int32][]*kgo.Record{}
	for left > 0 && ctx.Err() == nil {
		cl.PollFetches(ctx).EachRecord(func(r *kgo.Record) {
			out[r.Partition] = append(out[r.Partition], r)
			left--
		})
	}
	if left > 0 {
		t.Fatalf("reading %s: %d records short of its end offsets %v", topic, left, ends)
	}
	return out
}

// endOffsets returns the end offset of each of topic's partitions.
func endOffsets(t *testing.T, c *kfake.Cluster, topic string, partitions int) map[int32]int64 {
	t.Helper()
	kc := &kafka.Client{Addr: kafka.TCP(c.ListenAddrs()...), Transport: &kafka.Transport{}}
	defer kc.Transport.(*kafka.Transport).CloseIdleConnections()
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for p := range partitions {
		req.Topics[topic] = append(req.Topics[topic], kafka.LastOffsetOf(p))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := kc.ListOffsets(ctx, req)
	if err != nil {
		t.Fatalf("list offsets of %s: %v", topic, err)
	}
	ends := map[int32]int64{}
	for _, p := range res.Topics[topic] {
		if p.Error != nil {
			t.Fatalf("list offsets of %s/%d: %v", topic, p.Partition, p.Error)
		}
		ends[int32(p.Partition)] = p.LastOffset
	}
	return ends
}

// collector is a Receiver that takes every record at once and keeps them by partition.
type collector struct {
	mu     sync.Mutex
	got    map[int][]Message // by partition, Skip records included
	budget chan struct{}
}

func newCollector() *collector {
	return &collector{got: map[int][]Message{}, budget: make(chan struct{}, 1<<16)}
}

func (c *collector) Admit(ctx context.Context) bool {
	select {
	case c.budget <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (c *collector) Return() { <-c.budget }

func (c *collector) Receive(p *Partition, m *Message) {
	if !m.Skip {
		<-c.budget // finished at once
	}
	c.mu.Lock()
	c.got[p.ID] = append(c.got[p.ID], *m)
	c.mu.Unlock()
}

// values returns the values of partition p's records that are events (not Skip), in the order
// received.
func (c *collector) values(p int) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var vs []string
	for _, m := range c.got[p] {
		if !m.Skip {
			vs = append(vs, string(m.Value))
		}
	}
	return vs
}

// messages returns a copy of partition p's records, Skip records included.
func (c *collector) messages(p int) []Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.got[p])
}

// fetch runs Fetch of parts into a new collector until the test ends.
func fetch(t *testing.T, cl *Client, parts []*Partition, o FetchOptions) *collector {
	t.Helper()
	col := newCollector()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		cl.Fetch(ctx, parts, col, o)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			t.Error("Fetch did not return within 20s of its context's end")
		}
	})
	return col
}

// seq returns n values prefix-0 ... prefix-(n-1).
func seq(prefix string, n int) []string {
	vs := make([]string, n)
	for i := range vs {
		vs[i] = fmt.Sprintf("%s-%d", prefix, i)
	}
	return vs
}
