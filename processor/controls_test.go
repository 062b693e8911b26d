package processor

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// The controls are tested through Processor.handle with hand-written fakes for the three
// interfaces the processor consumes: no broker, no HTTP.

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}
func (c *fakeClock) Add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

// fakeSender answers every send with ok unless fail says otherwise (then 43101, final); gate, when set, holds each
// call until a value is received.
type fakeSender struct {
	mu   sync.Mutex
	reqs []wechat.Request
	fail func(wechat.Request) bool
	gate chan struct{}
}

func (s *fakeSender) Send(_ context.Context, req wechat.Request) wechat.Result {
	if s.gate != nil {
		<-s.gate
	}
	s.mu.Lock()
	s.reqs = append(s.reqs, req)
	fail := s.fail != nil && s.fail(req)
	s.mu.Unlock()
	if fail {
		// A final failure: a transient one would be held (hold.go), not failed.
		return wechat.Result{ErrCode: 43101, ErrMsg: "user refuse to accept the msg", Attempts: 1, Class: wechat.ClassPermanent}
	}
	return wechat.Result{MsgID: 1, Attempts: 1, Class: wechat.ClassOK}
}

func (s *fakeSender) sent() []wechat.Request {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]wechat.Request(nil), s.reqs...)
}

// fakePublisher acknowledges every record at once.
type fakePublisher struct {
	mu   sync.Mutex
	recs []kafkaio.Record
}

func (p *fakePublisher) Publish(rec kafkaio.Record, done func(error)) {
	p.mu.Lock()
	p.recs = append(p.recs, rec)
	p.mu.Unlock()
	done(nil)
}

func (p *fakePublisher) records(topic string) []kafkaio.Record {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []kafkaio.Record
	for _, r := range p.recs {
		if r.Topic == topic {
			out = append(out, r)
		}
	}
	return out
}

type staticRules struct{ set *rules.Set }

func (s staticRules) Current() *rules.Set { return s.set }

type world struct {
	t      *testing.T
	p      *Processor
	send   *fakeSender // nil when the world sends through another Sender
	pub    *fakePublisher
	reg    *prometheus.Registry
	clock  *fakeClock
	pt     *partition
	offset int64
}

// newWorld builds a processor over one rule file. The rule template is filled with ruleExtra,
// the rule's control options.
func newWorld(t *testing.T, ruleExtra string, mod func(*Config)) *world {
	t.Helper()
	set := parseRules(t, `rules:
  - name: r
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL
      data:
        thing1: {value: "${event.order.id}"}
`+ruleExtra)
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	send := &fakeSender{}
	w := newWorldOver(t, set, time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC), send, log, mod) // 20:00 in Shanghai
	w.send = send
	return w
}

// newWorldOver builds a processor over set that sends through sender, logs to log and registers
// its metrics on w.reg, with a fake clock starting at start, and one partition of the events
// topic.
func newWorldOver(t *testing.T, set *rules.Set, start time.Time, sender Sender, log logrus.FieldLogger, mod func(*Config)) *world {
	t.Helper()
	clock := &fakeClock{t: start}
	cfg := Config{GroupID: "g", Topics: []string{"events"}, OutcomesTopic: "out",
		DeadLetterTopic: "dlq", DelayTopic: "delayed", Now: clock.Now}
	if mod != nil {
		mod(&cfg)
	}
	w := &world{t: t, pub: &fakePublisher{}, reg: prometheus.NewRegistry(), clock: clock}
	var err error
	w.p, err = New(cfg, staticRules{set}, sender, w.pub, nil, w.reg, log)
	if err != nil {
		t.Fatal(err)
	}
	w.p.sendCtx = context.Background()
	w.pt = &partition{topic: "events", id: 0, tracker: newTracker(0), kp: kafkaio.NewPartition("events", 0, 0), gctx: context.Background()}
	return w
}

// event feeds one order.paid event as the fetch loop would.
func (w *world) event(id, openid string, occurredAt time.Time) {
	w.t.Helper()
	body := fmt.Sprintf(`{"event_id":%q,"type":"order.paid","user":{"openid":%q},"order":{"id":"o-%s"}`, id, openid, id)
	if !occurredAt.IsZero() {
		body += fmt.Sprintf(`,"occurred_at":%q`, occurredAt.Format(time.RFC3339Nano))
	}
	body += "}"
	w.p.budget <- struct{}{}
	w.p.handle(w.pt, &kafkaio.Message{Offset: w.offset, Key: []byte(openid), Value: []byte(body), Time: w.clock.Now()})
	w.offset++
}

// outcomes waits until n outcomes were published and returns them in publication order.
func (w *world) outcomes(n int) []Outcome {
	w.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs := w.pub.records("out")
		if len(recs) >= n {
			out := make([]Outcome, len(recs))
			for i, r := range recs {
				if err := json.Unmarshal(r.Value, &out[i]); err != nil {
					w.t.Fatal(err)
				}
			}
			return out
		}
		if time.Now().After(deadline) {
			w.t.Fatalf("%d outcomes after 5s, want %d", len(recs), n)
		}
		time.Sleep(time.Millisecond)
	}
}

// last waits for the n-th outcome and returns it.
func (w *world) last(n int) Outcome {
	w.t.Helper()
	return w.outcomes(n)[n-1]
}

func wantOutcome(t *testing.T, o Outcome, status, errmsg string) {
	t.Helper()
	if o.Status != status || o.ErrMsg != errmsg {
		t.Fatalf("outcome %s: status %q errmsg %q, want %q %q", o.EventID, o.Status, o.ErrMsg, status, errmsg)
	}
}

func TestDryRunOutcomeCarriesTheBody(t *testing.T) {
	for _, tc := range []struct {
		name   string
		extra  string
		global bool
	}{
		{"rule dry_run", "    dry_run: true\n", false},
		{"global dry_run", "", true},
		{"dry_run with dedupe", "    dry_run: true\n    dedupe: {key: \"${event.order.id}\", window: 1h}\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.extra, func(c *Config) { c.DryRun = tc.global })
			w.event("e1", "u1", time.Time{})
			o := w.last(1)
			wantOutcome(t, o, StatusDryRun, "")
			want := `{"touser":"u1","template_id":"TPL","data":{"thing1":{"value":"o-e1"}}}`
			if string(o.Body) != want {
				t.Fatalf("body = %s, want %s", o.Body, want)
			}
			if n := len(w.send.sent()); n != 0 {
				t.Fatalf("%d sends in dry run", n)
			}
			if cp := w.pt.tracker.commitPoint(); cp != 1 {
				t.Fatalf("commit point %d, want 1", cp)
			}
		})
	}
}

func TestExpireAfter(t *testing.T) {
	w := newWorld(t, "    expire_after: 24h\n", nil)
	now := w.clock.Now()
	w.event("old", "u1", now.Add(-(51*time.Hour + 10*time.Minute)))
	wantOutcome(t, w.last(1), StatusExpired, "expired: event is 2d3h old, expire_after 24h")
	w.event("fresh", "u1", now.Add(-23*time.Hour))
	wantOutcome(t, w.last(2), StatusSent, "")

	// No occurred_at: the Kafka timestamp counts.
	w.p.budget <- struct{}{}
	w.p.handle(w.pt, &kafkaio.Message{Offset: w.offset, Value: []byte(`{"event_id":"nots","type":"order.paid","user":{"openid":"u2"},"order":{"id":"x"}}`),
		Time: now.Add(-25 * time.Hour)})
	wantOutcome(t, w.last(3), StatusExpired, "expired: event is 1d1h old, expire_after 24h")
	if n := len(w.send.sent()); n != 1 {
		t.Fatalf("%d sends, want 1", n)
	}
}

func TestDedupe(t *testing.T) {
	w := newWorld(t, "    dedupe: {key: \"${event.order.id}\", window: 10m}\n", nil)
	w.event("a", "u1", time.Time{})
	wantOutcome(t, w.last(1), StatusSent, "")

	w.clock.Add(3 * time.Minute)
	w.event("a", "u1", time.Time{}) // the same business event again (e.g. a producer retry)
	wantOutcome(t, w.last(2), StatusSkipped, `dedupe: repeat of key "o-a" within 10m (sent 3m ago)`)

	w.event("b", "u1", time.Time{}) // another key
	wantOutcome(t, w.last(3), StatusSent, "")

	w.clock.Add(7 * time.Minute) // the window is over
	w.event("a", "u1", time.Time{})
	wantOutcome(t, w.last(4), StatusSent, "")

	// A failed send does not record the key: the business event can be retried.
	w.send.fail = func(r wechat.Request) bool { return strings.Contains(string(r.Body), "o-c") }
	w.event("c", "u1", time.Time{})
	wantOutcome(t, w.last(5), StatusFailed, "user refuse to accept the msg")
	w.send.mu.Lock()
	w.send.fail = nil
	w.send.mu.Unlock()
	w.event("c", "u1", time.Time{})
	wantOutcome(t, w.last(6), StatusSent, "")
	if n := len(w.send.sent()); n != 5 {
		t.Fatalf("%d sends, want 5", n)
	}
}

// A repeat arriving while the first send is in flight waits for its outcome (the dedupe key is a
// lane), on another partition and for another recipient too: skipped if the first was sent,
// sent if it failed.
func TestDedupeRepeatWhileFirstInFlight(t *testing.T) {
	for _, firstFails := range []bool{false, true} {
		t.Run(fmt.Sprintf("first fails %v", firstFails), func(t *testing.T) {
			w := newWorld(t, "    dedupe: {key: \"${event.order.id}\", window: 10m}\n", nil)
			w.send.gate = make(chan struct{})
			calls := 0
			w.send.fail = func(wechat.Request) bool { calls++; return firstFails && calls == 1 }
			w.event("a", "u1", time.Time{})
			other := &partition{topic: "events", id: 1, tracker: newTracker(0), kp: kafkaio.NewPartition("events", 1, 0), gctx: context.Background()}
			w.p.budget <- struct{}{}
			w.p.handle(other, &kafkaio.Message{Offset: 0, Key: []byte("u2"), Time: w.clock.Now(),
				Value: []byte(`{"event_id":"a2","type":"order.paid","user":{"openid":"u2"},"order":{"id":"o-a"}}`)})
			w.send.gate <- struct{}{} // the first call
			if firstFails {
				w.send.gate <- struct{}{} // the repeat is sent
			}
			got := map[string]string{}
			for _, o := range w.outcomes(2) {
				got[o.EventID] = o.Status
			}
			want := map[string]string{"a": StatusSent, "a2": StatusSkipped}
			if firstFails {
				want = map[string]string{"a": StatusFailed, "a2": StatusSent}
			}
			if got["a"] != want["a"] || got["a2"] != want["a2"] {
				t.Fatalf("statuses %v, want %v", got, want)
			}
		})
	}
}

func TestThrottle(t *testing.T) {
	w := newWorld(t, "    throttle: {max: 2, per: 1h}\n", nil)
	// Sends read the clock when they run: wait for each before moving the clock.
	w.event("1", "u1", time.Time{})
	w.outcomes(1)
	w.clock.Add(10 * time.Minute)
	w.event("2", "u1", time.Time{})
	w.event("3", "u2", time.Time{}) // another recipient has its own quota
	w.outcomes(3)
	w.clock.Add(10 * time.Minute)
	w.event("4", "u1", time.Time{})
	outs := w.outcomes(4)
	for i, want := range []string{StatusSent, StatusSent, StatusSent, StatusSkipped} {
		if outs[i].Status != want {
			t.Fatalf("outcome %d (%s): %s %q, want %s", i, outs[i].EventID, outs[i].Status, outs[i].ErrMsg, want)
		}
	}
	wantOutcome(t, outs[3], StatusSkipped, `throttle: 2 per 1h reached for key "u1" (next slot in 40m)`)

	// Sliding window: 1h after the first send one slot is free again, not two.
	w.clock.Add(40 * time.Minute)
	w.event("5", "u1", time.Time{})
	w.event("6", "u1", time.Time{})
	// Outcomes are written after a task leaves its lanes, so 5's and 6's may be in either order.
	byID := outcomesByEvent(w.outcomes(6))
	if byID["5"].Status != StatusSent || byID["6"].Status != StatusSkipped {
		t.Fatalf("after 1h: %s, %s; want sent, skipped", byID["5"].Status, byID["6"].Status)
	}

	// A failed send gives its slot back.
	w.clock.Add(2 * time.Hour)
	w.send.mu.Lock()
	w.send.fail = func(wechat.Request) bool { return true }
	w.send.mu.Unlock()
	w.event("7", "u1", time.Time{})
	w.event("8", "u1", time.Time{})
	w.outcomes(8)
	w.send.mu.Lock()
	w.send.fail = nil
	w.send.mu.Unlock()
	w.event("9", "u1", time.Time{})
	w.event("10", "u1", time.Time{})
	outs = w.outcomes(10)
	if outs[8].Status != StatusSent || outs[9].Status != StatusSent {
		t.Fatalf("after failures: %s %q, %s %q; want two sends", outs[8].Status, outs[8].ErrMsg, outs[9].Status, outs[9].ErrMsg)
	}
}

// outcomesByEvent indexes outcomes by event id, for checks on notifications whose outcomes may
// be written in either order.
func outcomesByEvent(outs []Outcome) map[string]Outcome {
	m := make(map[string]Outcome, len(outs))
	for _, o := range outs {
		m[o.EventID] = o
	}
	return m
}

func TestThrottleCustomKey(t *testing.T) {
	w := newWorld(t, "    throttle: {max: 1, per: 1m, key: '\"shop-1\"'}\n", nil)
	w.event("1", "u1", time.Time{})
	w.event("2", "u2", time.Time{})
	// The two recipients' sends run concurrently: either may take the one slot.
	outs := w.outcomes(2)
	if got := []string{outs[0].Status, outs[1].Status}; !slices.Contains(got, StatusSent) || !slices.Contains(got, StatusSkipped) {
		t.Fatalf("%s, %s; want one sent, one skipped: the key is shared by every recipient", outs[0].Status, outs[1].Status)
	}
}

func TestQuietHoursSkip(t *testing.T) {
	w := newWorld(t, "    quiet_hours: {start: \"22:00\", end: \"08:00\", zone: Asia/Shanghai, action: skip}\n", nil)
	w.event("day", "u1", time.Time{}) // 20:00 in Shanghai
	wantOutcome(t, w.last(1), StatusSent, "")
	w.clock.Add(3 * time.Hour) // 23:00
	w.event("night", "u1", time.Time{})
	wantOutcome(t, w.last(2), StatusSkipped, "quiet_hours: 22:00-08:00 Asia/Shanghai")
}

// In quiet hours with action delay, the notification goes to the delay topic and the source
// event finishes; the delayed record is sent at the window's end with the original event's
// identity, and its outcome is the real send's.
func TestQuietHoursDelay(t *testing.T) {
	w := newWorld(t, "    quiet_hours: {start: \"22:00\", end: \"08:00\", zone: Asia/Shanghai, action: delay}\n", nil)
	w.clock.Set(time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC)) // 23:00 in Shanghai
	w.event("night", "u1", time.Time{})
	if cp := w.pt.tracker.commitPoint(); cp != 1 {
		t.Fatalf("source commit point %d, want 1: the event finishes once its delayed record is acknowledged", cp)
	}
	delayed := w.pub.records("delayed")
	if len(delayed) != 1 || len(w.pub.records("out")) != 0 || len(w.send.sent()) != 0 {
		t.Fatalf("delayed %d, outcomes %d, sends %d; want 1, 0, 0", len(delayed), len(w.pub.records("out")), len(w.send.sent()))
	}
	rec := delayed[0]
	notBefore := time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC) // 08:00 in Shanghai
	if string(rec.Key) != "u1" || len(rec.Headers) == 0 || rec.Headers[0].Key != headerNotBefore ||
		string(rec.Headers[0].Value) != notBefore.Format(time.RFC3339Nano) {
		t.Fatalf("delayed record key %q headers %v", rec.Key, rec.Headers)
	}

	// The delay partition: held until 08:00, then sent.
	dpt := &partition{topic: "delayed", id: 0, tracker: newTracker(0), kp: kafkaio.NewPartition("delayed", 0, 0), gctx: context.Background()}
	msg := &kafkaio.Message{Offset: 0, Key: rec.Key, Value: rec.Value, Headers: rec.Headers}
	var holds sync.WaitGroup
	w.clock.Set(notBefore.Add(-80 * time.Millisecond))
	w.p.delayBudget <- struct{}{}
	w.p.holdDelayed(context.Background(), dpt, msg, &holds)
	time.Sleep(20 * time.Millisecond)
	if n := len(w.send.sent()); n != 0 {
		t.Fatal("sent before the end of quiet hours")
	}
	w.clock.Set(notBefore)
	o := w.last(1)
	holds.Wait()
	wantOutcome(t, o, StatusSent, "")
	if o.EventID != "night" || o.Rule != "r" || o.Source.Topic != "events" || o.Source.Offset != 0 ||
		o.DelayedUntil != "2026-11-23T00:00:00.000Z" || o.ToUser != "u1" || o.RuleVersion != w.p.rules.Current().Version {
		t.Fatalf("delayed outcome %+v", o)
	}
	if got := string(w.send.sent()[0].Body); got != `{"touser":"u1","template_id":"TPL","data":{"thing1":{"value":"o-night"}}}` {
		t.Fatalf("body %s", got)
	}
	if cp := dpt.tracker.commitPoint(); cp != 1 {
		t.Fatalf("delay partition commit point %d, want 1", cp)
	}

	// Revoked while holding: handed back uncommitted at once.
	ctx, cancel := context.WithCancel(context.Background())
	w.clock.Set(notBefore.Add(-time.Hour))
	msg.Offset = 1
	w.p.delayBudget <- struct{}{}
	w.p.holdDelayed(ctx, dpt, msg, &holds)
	drained := dpt.tracker.drained()
	cancel()
	holds.Wait()
	<-drained
	if cp := dpt.tracker.commitPoint(); cp != 1 {
		t.Fatalf("commit point after hand-back %d, want 1", cp)
	}
	if len(w.p.delayBudget) != 0 {
		t.Fatalf("delay budget holds %d after hand-back", len(w.p.delayBudget))
	}
}

// With no delay topic, action delay degrades to skip and says so.
func TestQuietHoursDelayWithoutDelayTopic(t *testing.T) {
	w := newWorld(t, "    quiet_hours: {start: \"22:00\", end: \"08:00\", zone: Asia/Shanghai, action: delay}\n", func(c *Config) { c.DelayTopic = "" })
	w.clock.Set(time.Date(2026, 11, 22, 15, 0, 0, 0, time.UTC))
	w.event("night", "u1", time.Time{})
	wantOutcome(t, w.last(1), StatusSkipped, "quiet_hours: 22:00-08:00 Asia/Shanghai (action delay, but the processor has no delay topic)")
}

func TestDedupeStoreIsBounded(t *testing.T) {
	s := &dedupeStore{at: map[string]int64{}}
	now := time.Unix(1000, 0)
	evicted := 0
	for i := 0; i < 100; i++ {
		evicted += s.record(fmt.Sprint(i), now.Add(time.Duration(i)*time.Millisecond), time.Hour, 10)
	}
	if len(s.at) != 10 || evicted != 90 {
		t.Fatalf("%d keys, %d evicted; want 10, 90", len(s.at), evicted)
	}
	if _, ok := s.seen("99", now, time.Hour); !ok {
		t.Fatal("newest key forgotten")
	}
	if _, ok := s.seen("0", now, time.Hour); ok {
		t.Fatal("oldest key kept past the bound")
	}
	// Expiry empties the store as it is used.
	s.seen("x", now.Add(2*time.Hour), time.Hour)
	if len(s.at) != 0 || !s.order.empty() {
		t.Fatalf("%d keys and %d queued after the window", len(s.at), len(s.order.q)-s.order.head)
	}
}

func TestThrottleStoreForgetsIdleKeys(t *testing.T) {
	s := &throttleStore{logs: map[string][]int64{}}
	now := time.Unix(1000, 0)
	for i := 0; i < 50; i++ {
		if _, _, _, ok := s.reserve(fmt.Sprint(i%5), now, 100, time.Minute, 1000); !ok {
			t.Fatal("refused under max")
		}
	}
	if len(s.logs) != 5 {
		t.Fatalf("%d keys, want 5", len(s.logs))
	}
	s.reserve("new", now.Add(2*time.Minute), 1, time.Minute, 1000)
	if len(s.logs) != 1 {
		t.Fatalf("%d keys after the window, want 1", len(s.logs))
	}
	_, _, evicted, _ := s.reserve("newer", now.Add(2*time.Minute), 1, time.Minute, 1)
	if evicted != 1 || len(s.logs) != 1 {
		t.Fatalf("evicted %d, keys %d; want 1, 1", evicted, len(s.logs))
	}
}

func TestFormatAge(t *testing.T) {
	for d, want := range map[time.Duration]string{
		51*time.Hour + 10*time.Minute:  "2d3h",
		48 * time.Hour:                 "2d",
		3*time.Hour + 4*time.Minute:    "3h4m",
		12*time.Minute + 5*time.Second: "12m5s",
		10 * time.Minute:               "10m",
		3200 * time.Millisecond:        "3.2s",
	} {
		if got := formatAge(d); got != want {
			t.Errorf("formatAge(%s) = %q, want %q", d, got, want)
		}
	}
	if got := formatDuration(24 * time.Hour); got != "24h" {
		t.Errorf("formatDuration(24h) = %q", got)
	}
}

// Rules without controls take the plain path; the gate is never reached.
func TestNoControlsNoGate(t *testing.T) {
	w := newWorld(t, "", nil)
	if hasControls(w.p.rules.Current().Rules[0]) {
		t.Fatal("a rule without options has controls")
	}
	w.event("1", "u1", time.Time{})
	wantOutcome(t, w.last(1), StatusSent, "")
}
