package app

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// clockFrom returns a clock that reads base until started, then runs from base in real time.
func clockFrom(base time.Time) (now func() time.Time, start func()) {
	var at atomic.Pointer[time.Time]
	now = func() time.Time {
		if s := at.Load(); s != nil {
			return base.Add(time.Since(*s))
		}
		return base
	}
	start = func() { t := time.Now(); at.Store(&t) }
	return now, start
}

const controlRules = `rules:
  - name: paid
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL_PAID
      data:
        thing1: {value: "${event.order.id}"}
    expire_after: 24h
    dedupe: {key: "order-${event.order.id}", window: 1h}
  - name: paid-preview
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    dry_run: true
    message:
      touser: ${event.user.openid}
      template_id: TPL_PREVIEW
      data:
        thing1: {value: "${event.order.id}"}
`

// expire_after, dedupe across partitions and dry_run through Run: one outcome per
// notification, with the reason, and only the one real send reaches WeChat.
func TestControlsThroughRun(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.rulesDir(controlRules)
	now, _ := clockFrom(time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)) // events occurred at 10:00Z
	h.startWith(Options{Now: now})

	old := event("e-3", "order.paid", "u3")
	old.Value = []byte(strings.Replace(string(old.Value), "2026-11-22T10:00:00Z", "2026-11-20T09:00:00Z", 1))
	h.produce("events",
		event("e-1", "order.paid", "u1"),
		event("e-1", "order.paid", "u2"), // the same order again, under another key (another partition)
		old,
	)
	outs := h.outcomes(6, 20*time.Second)
	got := map[string][]processor.Outcome{}
	for _, o := range outs {
		got[o.Rule+"/"+o.Status] = append(got[o.Rule+"/"+o.Status], o)
	}
	if n := len(got["paid/sent"]); n != 1 {
		t.Errorf("paid sent %d times, want 1", n)
	}
	if s := got["paid/skipped"]; len(s) != 1 || s[0].EventID != "e-1" || !strings.HasPrefix(s[0].ErrMsg, `dedupe: repeat of key "order-91" within 1h (sent `) {
		t.Errorf("paid skipped: %+v", s)
	}
	if e := got["paid/expired"]; len(e) != 1 || e[0].EventID != "e-3" || e[0].ErrMsg != "expired: event is 2d3h old, expire_after 24h" {
		t.Errorf("paid expired: %+v", e)
	}
	dry := got["paid-preview/dry_run"]
	if len(dry) != 3 {
		t.Errorf("paid-preview dry_run %d times, want 3", len(dry))
	}
	for _, o := range dry {
		if !strings.Contains(string(o.Body), `"template_id":"TPL_PREVIEW"`) || o.MsgID != 0 {
			t.Errorf("dry_run outcome without the body it would have sent: %+v", o)
		}
	}
	if d := h.sim.Deliveries(); len(d) != 1 {
		t.Errorf("simulator delivered %d messages, want 1", len(d))
	}
	waitFor(t, 10*time.Second, "offsets committed past all three events", func() bool { return sum(h.committed()) == 3 })
}

// quiet_hours with action delay through Run and the real delay topic: the source event is
// committed at once, the notification is held on the delay topic until the window ends, then
// sent with the source event's identity, and the delay topic's offset is committed too.
func TestQuietHoursDelayThroughRun(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.rulesDir(reloadRule("night") +
		`    quiet_hours: {start: "22:00", end: "08:00", zone: Asia/Shanghai, action: delay}` + "\n")
	// 07:59:58.5 in Shanghai when the event is produced: held about 1.5s.
	now, startClock := clockFrom(time.Date(2026, 11, 22, 23, 59, 58, 500e6, time.UTC))
	h.startWith(Options{Now: now})
	startClock()
	h.produce("events", event("e-1", "order.paid", "u1"))

	waitFor(t, 10*time.Second, "the source event to be committed", func() bool { return sum(h.committed()) == 1 })
	if len(h.sim.Deliveries()) != 0 {
		t.Fatal("sent during quiet hours")
	}
	delayed := h.readTopic("wxnotify.delayed", 1, 10*time.Second)
	if len(delayed) != 1 {
		t.Fatalf("%d records on the delay topic, want 1", len(delayed))
	}

	o := h.outcomes(1, 20*time.Second)[0]
	if o.Status != processor.StatusSent || o.EventID != "e-1" || o.Rule != "paid" || o.Source.Topic != "events" ||
		o.DelayedUntil != "2026-11-23T00:00:00.000Z" || o.MsgID == 0 {
		t.Fatalf("delayed outcome %+v", o)
	}
	if at, _ := time.Parse(time.RFC3339, o.ProcessedAt); at.Before(time.Date(2026, 11, 23, 0, 0, 0, 0, time.UTC)) {
		t.Fatalf("processed at %s, before the end of quiet hours", o.ProcessedAt)
	}
	if d := h.sim.Deliveries(); len(d) != 1 {
		t.Fatalf("%d deliveries, want 1", len(d))
	}
	waitFor(t, 10*time.Second, "the delay topic's offset to be committed", func() bool {
		c := &kafka.Client{Addr: kafka.TCP(h.broker), Transport: &kafka.Transport{}}
		resp, err := c.OffsetFetch(context.Background(), &kafka.OffsetFetchRequest{GroupID: h.cfg.Kafka.GroupID,
			Topics: map[string][]int{"wxnotify.delayed": {0, 1}}})
		if err != nil {
			return false
		}
		var n int64
		for _, p := range resp.Topics["wxnotify.delayed"] {
			n += max(p.CommittedOffset, 0)
		}
		return n == 1
	})
}

// Topic checks have no side effects: a missing outcome or delay topic is a startup error naming
// the key and how to create it, and the check does not create it even on a broker that
// auto-creates topics on metadata requests. With kafka.create_topics the missing ones are
// created, with the events topic's partition count. A missing events topic is always an error
// (kafka-go's group would get no partitions at all and look idle).
func TestTopicChecksNeverCreateAndCreateTopicsOptIn(t *testing.T) {
	h := newHarness(t, wechatsim.Config{}, kfake.AllowAutoTopicCreation())
	h.cfg.Kafka.DelayTopic = "wxnotify.delayed.new"
	h.cfg.Kafka.OutcomesTopic = "wxnotify.outcomes.new"
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, h.cfg, Options{Log: h.log, Rules: h.set, Listener: newLocalListener(t)})
	for _, want := range []string{
		`kafka.outcomes_topic: topic "wxnotify.outcomes.new" does not exist; create it (kafka-topics.sh --bootstrap-server ` + h.broker + ` --create --topic wxnotify.outcomes.new --partitions 4) or, for local and test setups, set kafka.create_topics: true`,
		`kafka.delay_topic: topic "wxnotify.delayed.new" does not exist`,
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Run = %v\nwant it to contain %s", err, want)
		}
	}
	// h.partitions asks without auto-creation (metadata v4+ through kafka-go's Transport),
	// unlike kafka-go's Conn.ReadPartitions, which would create the topic on this broker.
	for _, topic := range []string{"wxnotify.outcomes.new", "wxnotify.delayed.new"} {
		if parts := h.partitions(ctx, topic); len(parts) > 0 {
			t.Fatalf("the topic check created %s", topic)
		}
	}

	h.cfg.Kafka.CreateTopics = true
	h.start()
	h.produce("events", event("e-1", "order.paid", "u1"))
	if got := h.readTopic("wxnotify.outcomes.new", 2, 20*time.Second); len(got) != 2 {
		t.Fatalf("%d outcomes on the created topic, want 2", len(got))
	}
	for _, topic := range []string{"wxnotify.outcomes.new", "wxnotify.delayed.new"} {
		if parts := h.partitions(ctx, topic); len(parts) != testPartitions {
			t.Fatalf("%s: %d partitions, want %d", topic, len(parts), testPartitions)
		}
	}

	h2 := newHarness(t, wechatsim.Config{})
	h2.cfg.Kafka.EventsTopic = StringList{"no.such.topic"}
	h2.cfg.Kafka.CreateTopics = true
	err = Run(ctx, h2.cfg, Options{Log: h2.log, Rules: h2.set, Listener: newLocalListener(t)})
	if err == nil || !strings.Contains(err.Error(), `kafka.events_topic: topic "no.such.topic" does not exist (wxnotify never creates the events topics)`) {
		t.Fatalf("Run = %v", err)
	}
}

// A missing topic that kafka.create_topics cannot create is a startup error naming the key.
func TestCreateTopicsRefused(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.cfg.Kafka.DelayTopic = "wxnotify.delayed.denied"
	h.cfg.Kafka.CreateTopics = true
	h.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.CreateTopics}, Err: kerr.TopicAuthorizationFailed, Count: -1})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err := Run(ctx, h.cfg, Options{Log: h.log, Rules: h.set, Listener: newLocalListener(t)})
	if err == nil || !strings.Contains(err.Error(), `kafka.create_topics: create topic "wxnotify.delayed.denied": [29] Topic Authorization Failed`) {
		t.Fatalf("Run = %v", err)
	}
}
