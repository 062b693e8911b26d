package app

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl"
	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/wxnotify/wxnotify/configs"
	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// harness is one in-process world: a kfake broker, the WeChat simulator and a config pointing
// the processor at both. Tests start the processor through Run, as `wxnotify run` does.
type harness struct {
	t       *testing.T
	cluster *kfake.Cluster
	kopts   []kfake.Opt // the cluster's options, to restart it (restartBroker)
	broker  string
	sim     *wechatsim.Server
	cfg     *Config
	set     *rules.Set
	log     *logrus.Logger
	logBuf  *syncBuffer
	// tls and sasl, when set, are what the test's own clients connect with (the broker requires
	// them).
	tls  *tls.Config
	sasl sasl.Mechanism
}

// transport returns a fresh kafka-go transport for the test's own requests.
func (h *harness) transport() *kafka.Transport {
	return &kafka.Transport{TLS: h.tls, SASL: h.sasl}
}

// dialer returns a kafka-go dialer for the test's own readers.
func (h *harness) dialer() *kafka.Dialer {
	return &kafka.Dialer{Timeout: 10 * time.Second, DualStack: true, TLS: h.tls, SASLMechanism: h.sasl}
}

// partitions returns the partition ids of topic (none: the topic does not exist). It never
// creates a topic.
func (h *harness) partitions(ctx context.Context, topic string) []int {
	h.t.Helper()
	meta, err := (&kafka.Client{Addr: kafka.TCP(h.broker), Transport: h.transport()}).Metadata(ctx, &kafka.MetadataRequest{Topics: []string{topic}})
	if err != nil {
		h.t.Fatalf("metadata: %v", err)
	}
	var ids []int
	for _, t := range meta.Topics {
		if t.Name == topic && t.Error == nil {
			for _, p := range t.Partitions {
				ids = append(ids, p.ID)
			}
		}
	}
	return ids
}

const (
	testWeappAppID = "wxtestweapp000001"
	testMPAppID    = "wxtestmp000000001"
	testPartitions = 4
)

func newHarness(t *testing.T, simCfg wechatsim.Config, kopts ...kfake.Opt) *harness {
	t.Helper()
	kopts = append([]kfake.Opt{
		kfake.NumBrokers(1),
		kfake.SeedTopics(testPartitions, "events", "wxnotify.outcomes"),
		kfake.SeedTopics(1, "wxnotify.dlq"),
		kfake.SeedTopics(2, "wxnotify.delayed"),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond),
	}, kopts...)
	cluster, err := kfake.NewCluster(kopts...)
	if err != nil {
		t.Fatal(err)
	}
	if simCfg.Accounts == nil {
		simCfg.Accounts = map[string]string{testWeappAppID: "weapp-secret-xyz", testMPAppID: "mp-secret-xyz"}
	}
	sim, err := wechatsim.Start(simCfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })

	cfg := &Config{}
	cfg.Kafka = KafkaConfig{Brokers: cluster.ListenAddrs(), GroupID: "wxnotify-test", EventsTopic: StringList{"events"},
		SessionTimeout: time.Second, HeartbeatInterval: 250 * time.Millisecond, RebalanceTimeout: 10 * time.Second}
	cfg.WeChat = WeChatConfig{BaseURL: sim.URL(), Accounts: map[string]AccountConfig{
		"weapp": {AppID: testWeappAppID, Secret: "weapp-secret-xyz"},
		"mp":    {AppID: testMPAppID, Secret: "mp-secret-xyz"},
	}, Retry: RetryConfig{BaseDelay: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond}}
	cfg.HTTP.Addr = "127.0.0.1:0"
	cfg.Processor.CommitInterval = 50 * time.Millisecond
	cfg.Processor.DrainTimeout = 5 * time.Second
	cfg.Processor.Procs = ProcsAll // processors run side by side in this test binary
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	files, err := configs.Rules()
	if err != nil {
		t.Fatal(err)
	}
	set, err := rules.Parse(files, rules.Options{Accounts: []string{"mp", "weapp"}})
	if err != nil {
		t.Fatal(err)
	}
	buf := &syncBuffer{}
	log := logrus.New()
	log.SetOutput(buf)
	log.SetFormatter(&logrus.JSONFormatter{})
	log.SetLevel(logrus.DebugLevel)
	h := &harness{t: t, cluster: cluster, kopts: kopts, broker: cluster.ListenAddrs()[0], sim: sim, cfg: cfg, set: set, log: log, logBuf: buf}
	t.Cleanup(func() { h.cluster.Close() })
	t.Cleanup(func() {
		if t.Failed() && os.Getenv("WXNOTIFY_TEST_LOG") != "" {
			t.Logf("processor log:\n%s", buf.String())
		}
	})
	return h
}

// running is a started processor.
type running struct {
	cancel context.CancelFunc
	done   chan error
	reg    *prometheus.Registry
	ops    string
}

// start runs the processor in the background; stop it with stop (graceful, like SIGTERM).
func (h *harness) start() *running {
	h.t.Helper()
	return h.startWith(Options{Rules: h.set})
}

// startWith is start with the caller's Options (Rules nil: read h.cfg.Rules.Path and watch it);
// the harness sets the log, registry and ops listener.
func (h *harness) startWith(opts Options) *running {
	h.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan error, 1), reg: prometheus.NewRegistry()}
	ln := newLocalListener(h.t)
	r.ops = ln.Addr().String()
	opts.Log, opts.Registry, opts.Listener = h.log, r.reg, ln
	started := make(chan struct{})
	opts.Started = func(string) { close(started) }
	go func() { r.done <- Run(ctx, h.cfg, opts) }()
	select {
	case <-started:
	case err := <-r.done:
		h.t.Fatalf("Run returned before starting: %v", err)
	case <-time.After(20 * time.Second):
		h.t.Fatal("Run did not start within 20s")
	}
	h.t.Cleanup(func() { h.stop(r) })
	return r
}

func (h *harness) stop(r *running) {
	h.t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	select {
	case err := <-r.done:
		if err != nil {
			h.t.Errorf("Run returned %v", err)
		}
	case <-time.After(20 * time.Second):
		h.t.Fatal("Run did not return within 20s of cancellation")
	}
}

// sampleEvents returns the shipped samples, keyed by user openid.
func (h *harness) sampleEvents() []kafka.Message {
	h.t.Helper()
	msgs, _, err := demoSamples(h.set)
	if err != nil {
		h.t.Fatal(err)
	}
	return msgs
}

func (h *harness) produce(topic string, msgs ...kafka.Message) {
	h.t.Helper()
	w := &kafka.Writer{Addr: kafka.TCP(h.broker), Topic: topic, Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, BatchSize: 1000, Transport: h.transport()}
	defer w.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		h.t.Fatalf("produce: %v", err)
	}
}

// readTopic reads every record of topic from the beginning until it has n of them or the
// timeout passes.
func (h *harness) readTopic(topic string, n int, timeout time.Duration) []kafka.Message {
	h.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	parts := h.partitions(ctx, topic)
	var (
		mu  sync.Mutex
		out []kafka.Message
		wg  sync.WaitGroup
	)
	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{h.broker}, Dialer: h.dialer(), Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(rctx)
				if err != nil {
					return
				}
				mu.Lock()
				out = append(out, m)
				if len(out) >= n {
					rcancel()
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return out
}

func (h *harness) outcomes(n int, timeout time.Duration) []processor.Outcome {
	h.t.Helper()
	msgs := h.readTopic(h.cfg.Kafka.OutcomesTopic, n, timeout)
	out := make([]processor.Outcome, 0, len(msgs))
	for _, m := range msgs {
		var o processor.Outcome
		if err := json.Unmarshal(m.Value, &o); err != nil {
			h.t.Fatalf("outcome is not JSON: %v: %s", err, m.Value)
		}
		out = append(out, o)
	}
	if len(out) < n {
		h.t.Fatalf("got %d outcomes within %s, want %d", len(out), timeout, n)
	}
	return out
}

// orderEvents builds n order.paid events; each matches the two order-paid rules.
func orderEvents(prefix string, n int) []kafka.Message {
	msgs := make([]kafka.Message, n)
	for i := range msgs {
		msgs[i] = event(fmt.Sprintf("%s%04d", prefix, i), "order.paid", fmt.Sprintf("user%d", i%29))
	}
	return msgs
}

// notifications returns the notifications of msgs, order.paid events, as event id/rule: one per
// order-paid rule.
func notifications(t *testing.T, msgs []kafka.Message) []string {
	t.Helper()
	var keys []string
	for _, m := range msgs {
		var e struct {
			ID string `json:"event_id"`
		}
		if err := json.Unmarshal(m.Value, &e); err != nil {
			t.Fatal(err)
		}
		keys = append(keys, e.ID+"/order-paid", e.ID+"/order-paid-subscribe")
	}
	return keys
}

// wantOneOutcomeEach checks that each of msgs has exactly one outcome per order-paid rule,
// among outs, and that nothing else has any.
func wantOneOutcomeEach(t *testing.T, outs map[string]int, msgs []kafka.Message) {
	t.Helper()
	want := map[string]bool{}
	for _, k := range notifications(t, msgs) {
		want[k] = true
		if n := outs[k]; n != 1 {
			t.Errorf("%s has %d outcomes, want 1", k, n)
		}
	}
	for k, n := range outs {
		if !want[k] {
			t.Errorf("unexpected outcome(s) for %s: %d", k, n)
		}
	}
}

// outcomeCounts waits for at least n outcomes and then until every events record is committed
// (so every outcome written for them is acknowledged), and counts all outcome records, late
// duplicates included, by event id and rule.
func (h *harness) outcomeCounts(n int, timeout time.Duration) map[string]int {
	h.t.Helper()
	h.outcomes(n, timeout)
	waitFor(h.t, timeout, "commits at the end of the events topic", func() bool {
		committed := h.committed()
		for p, end := range h.endOffsets("events") {
			if max(committed[p], 0) != end {
				return false
			}
		}
		return true
	})
	seen := map[string]int{}
	for _, m := range h.readUpTo(h.cfg.Kafka.OutcomesTopic, h.endOffsets(h.cfg.Kafka.OutcomesTopic)) {
		var o processor.Outcome
		if err := json.Unmarshal(m.Value, &o); err != nil {
			h.t.Fatalf("outcome is not JSON: %v: %s", err, m.Value)
		}
		seen[o.EventID+"/"+o.Rule]++
	}
	return seen
}

// restartBroker closes the broker, waits out the outage and starts it again on the same port
// with the same data directory, as a broker restart does.
func (h *harness) restartBroker(outage time.Duration) {
	h.t.Helper()
	h.cluster.Close()
	time.Sleep(outage)
	c, err := kfake.NewCluster(h.kopts...)
	if err != nil {
		h.t.Fatal(err)
	}
	h.cluster = c
}

// committed returns the group's committed offset per partition of the events topic (-1: none).
func (h *harness) committed() map[int]int64 {
	h.t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(h.broker), Transport: h.transport()}
	parts := make([]int, testPartitions)
	for i := range parts {
		parts[i] = i
	}
	resp, err := c.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: h.cfg.Kafka.GroupID, Topics: map[string][]int{"events": parts}})
	if err != nil {
		h.t.Fatalf("offset fetch: %v", err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics["events"] {
		out[p.Partition] = p.CommittedOffset
	}
	return out
}

// endOffsets returns the high watermark per partition of topic.
func (h *harness) endOffsets(topic string) map[int]int64 {
	h.t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(h.broker), Transport: h.transport()}
	req := &kafka.ListOffsetsRequest{Topics: map[string][]kafka.OffsetRequest{}}
	for i := 0; i < testPartitions; i++ {
		req.Topics[topic] = append(req.Topics[topic], kafka.LastOffsetOf(i))
	}
	resp, err := c.ListOffsets(context.Background(), req)
	if err != nil {
		h.t.Fatal(err)
	}
	out := map[int]int64{}
	for _, p := range resp.Topics[topic] {
		out[p.Partition] = p.LastOffset
	}
	return out
}

// waitFor polls cond until it holds or the timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// family returns the series of the metric name in reg; the test fails if it has none.
func family(t *testing.T, reg *prometheus.Registry, name string) []*dto.Metric {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()
		}
	}
	t.Fatalf("no metric %s", name)
	return nil
}

// sampleValue is the value of a counter's or a gauge's series.
func sampleValue(m *dto.Metric) float64 {
	if c := m.GetCounter(); c != nil {
		return c.GetValue()
	}
	return m.GetGauge().GetValue()
}

// series returns the value of a gauge or counter with no labels, or of the single series of a
// labelled one; label returns that series' label value.
func series(t *testing.T, reg *prometheus.Registry, name string) (value float64, label string) {
	t.Helper()
	ms := family(t, reg, name)
	if len(ms) != 1 {
		t.Fatalf("%s has %d series, want 1", name, len(ms))
	}
	if l := ms[0].GetLabel(); len(l) > 0 {
		label = l[0].GetValue()
	}
	return sampleValue(ms[0]), label
}

// metric returns the value of the counter or gauge name whose labels include labels.
func metric(t *testing.T, reg *prometheus.Registry, name string, labels map[string]string) float64 {
	t.Helper()
next:
	for _, m := range family(t, reg, name) {
		for _, lp := range m.GetLabel() {
			if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
				continue next
			}
		}
		return sampleValue(m)
	}
	t.Fatalf("no metric %s%v", name, labels)
	return 0
}

// event builds a sample-shaped event.
func event(id, typ, openid string) kafka.Message {
	body := fmt.Sprintf(`{"event_id":%q,"type":%q,"occurred_at":"2026-11-22T10:00:00Z",`+
		`"order":{"id":"9%s","amount_fen":3980},"user":{"openid":%q,"oa_openid":"oa-%s"},`+
		`"shop":{"name":"TIT创意园店","address":"广州市海珠区新港中路397号"},"shipment":{"carrier":"顺丰速运","tracking_no":"SF1"}}`,
		id, typ, strings.TrimPrefix(id, "e-"), openid, openid)
	return kafka.Message{Key: []byte(openid), Value: []byte(body)}
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

var update = os.Getenv("UPDATE_GOLDEN") != ""

func newLocalListener(t *testing.T) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return ln
}

// readUpTo reads every partition of topic from the start up to (not including) ends[partition].
func (h *harness) readUpTo(topic string, ends map[int]int64) []kafka.Message {
	h.t.Helper()
	var (
		mu  sync.Mutex
		out []kafka.Message
		wg  sync.WaitGroup
	)
	for p, end := range ends {
		if end <= 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{h.broker}, Dialer: h.dialer(), Topic: topic, Partition: p, MaxWait: 50 * time.Millisecond})
			defer r.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					h.t.Errorf("reading %s/%d: %v", topic, p, err)
					return
				}
				mu.Lock()
				out = append(out, m)
				mu.Unlock()
				if m.Offset >= end-1 {
					return
				}
			}
		}()
	}
	wg.Wait()
	return out
}
