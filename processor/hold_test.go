package processor

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// outage is a WeChat in which an API can be down: its sends answer -1 (or what answer says)
// until it is brought back.
type outage struct {
	mu     sync.Mutex
	down   map[string]bool
	answer func(req wechat.Request) (wechat.Result, bool) // optional: a scripted answer
	sent   []wechat.Request                               // delivered, in order
	calls  atomic.Int64
	probes atomic.Int64 // calls with MaxAttempts 1
}

func (o *outage) Send(_ context.Context, req wechat.Request) wechat.Result {
	o.calls.Add(1)
	if req.MaxAttempts == 1 {
		o.probes.Add(1)
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.answer != nil {
		if r, ok := o.answer(req); ok {
			return r
		}
	}
	if o.down[req.API] {
		return wechat.Result{ErrCode: -1, ErrMsg: "system error rid: 1", Attempts: 4, Class: wechat.ClassTransient}
	}
	o.sent = append(o.sent, req)
	return wechat.Result{MsgID: int64(len(o.sent)), Attempts: 1, Class: wechat.ClassOK}
}

func (o *outage) set(api string, down bool) {
	o.mu.Lock()
	o.down[api] = down
	o.mu.Unlock()
}

func (o *outage) delivered(api string) int {
	o.mu.Lock()
	defer o.mu.Unlock()
	n := 0
	for _, r := range o.sent {
		if r.API == api {
			n++
		}
	}
	return n
}

const twoAPIRules = `rules:
  - name: sub
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL
      data:
        thing1: {value: "${event.order.id}"}
EXTRA
  - name: oa
    when: event.type == "order.paid"
    account: mp
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: OA
      data:
        first: {value: "${event.order.id}"}
`

type holdWorld struct {
	*world
	wx  *outage
	log *syncLog
}

type syncLog struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *syncLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newHoldWorld(t *testing.T, extra string, mod func(*Config)) *holdWorld {
	t.Helper()
	set := parseRules(t, strings.Replace(twoAPIRules, "EXTRA\n", extra, 1))
	logs := &syncLog{}
	log := logrus.New()
	log.SetOutput(logs)
	log.SetFormatter(&logrus.JSONFormatter{})
	wx := &outage{down: map[string]bool{}}
	w := newWorldOver(t, set, time.Date(2026, 11, 22, 4, 0, 0, 0, time.UTC), wx, log, mod)
	w.p.holds.firstProbe, w.p.holds.maxProbe, w.p.holds.sweepEvery = 5*time.Millisecond, 20*time.Millisecond, 5*time.Millisecond
	gctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	w.pt.gctx = gctx
	t.Cleanup(func() { w.p.holds.close(); w.p.sched.close(); w.p.sched.wait() })
	return &holdWorld{world: w, wx: wx, log: logs}
}

// feed sends n order.paid events for n users.
func (w *holdWorld) feed(prefix string, n int) {
	for i := 0; i < n; i++ {
		w.event(fmt.Sprintf("%s%d", prefix, i), fmt.Sprintf("u%d", i), time.Time{})
	}
}

func (w *holdWorld) outcomesByStatus() map[string]int {
	got := map[string]int{}
	for _, o := range w.outcomes(0) {
		got[o.API+" "+o.Status]++
	}
	return got
}

// While one API answers -1, its notifications are held, not failed; the other API keeps
// delivering; nothing is committed past a held event; when the API answers again (found by a
// single-attempt probe), every held notification is sent and the commit point catches up.
func TestHoldThroughAnOutageAndResume(t *testing.T) {
	w := newHoldWorld(t, "", nil)
	w.wx.set("subscribeMessage.send", true)
	w.feed("a", 50)
	waitFor(t, "every template.send delivered during the outage", func() bool { return w.outcomesByStatus()["template.send sent"] == 50 })
	waitFor(t, "every subscribe notification parked", func() bool { return testutil.ToFloat64(w.p.metrics.notificationsHeld) == 50 })
	if got := w.outcomesByStatus(); got["subscribeMessage.send failed"] != 0 || got["template.send sent"] != 50 {
		t.Fatalf("outcomes during the outage: %v", got)
	}
	if got := testutil.ToFloat64(w.p.metrics.wechatHeld.WithLabelValues("weapp", "subscribeMessage.send")); got != 1 {
		t.Fatalf("wxnotify_wechat_held = %v, want 1", got)
	}
	if cp := w.pt.tracker.commitPoint(); cp != 0 {
		t.Fatalf("commit point %d during the outage, want 0", cp)
	}
	if held := w.p.Held(); len(held) != 1 || held[0].API != "subscribeMessage.send" || held[0].Parked == 0 || !strings.Contains(held[0].LastError, "system error") {
		t.Fatalf("Held() = %+v", held)
	}
	// Parked events moved to the held budget: the in-flight budget is free for other work.
	if n := len(w.p.budget); n != 0 {
		t.Fatalf("%d in-flight slots taken by held events, want 0", n)
	}
	calls := w.wx.calls.Load()
	time.Sleep(50 * time.Millisecond) // several probe periods
	if extra := w.wx.calls.Load() - calls; extra > 10 {
		t.Fatalf("%d calls in 50ms while held: only probes should go out", extra)
	}

	w.wx.set("subscribeMessage.send", false)
	waitFor(t, "the held notifications sent after recovery", func() bool { return w.wx.delivered("subscribeMessage.send") == 50 })
	waitFor(t, "every event finished", func() bool { return w.pt.tracker.commitPoint() == 50 })
	if got := w.outcomesByStatus(); got["subscribeMessage.send sent"] != 50 || got["subscribeMessage.send failed"] != 0 {
		t.Fatalf("outcomes after recovery: %v", got)
	}
	if got := testutil.ToFloat64(w.p.metrics.wechatHeld.WithLabelValues("weapp", "subscribeMessage.send")); got != 0 {
		t.Fatalf("wxnotify_wechat_held = %v after recovery, want 0", got)
	}
	if w.wx.probes.Load() == 0 {
		t.Fatal("no probe was sent")
	}
	logs := w.log.String()
	if strings.Count(logs, "holding its notifications") != 1 || strings.Count(logs, "resuming its held notifications") != 1 {
		t.Fatalf("want one log line per change of state:\n%s", logs)
	}
	if len(w.p.budget) != 0 || len(w.p.heldBudget) != 0 {
		t.Fatalf("budgets not returned: in flight %d, held %d", len(w.p.budget), len(w.p.heldBudget))
	}
}

// A held notification whose rule's expire_after passes ends expired; one held longer than
// MaxHold ends failed, saying why.
func TestHeldNotificationsExpireAndTimeOut(t *testing.T) {
	w := newHoldWorld(t, "    expire_after: 1h\n", func(c *Config) { c.MaxHold = 2 * time.Hour })
	w.wx.set("subscribeMessage.send", true)
	w.wx.set("template.send", true)
	w.event("old", "u1", w.clock.Now())
	waitFor(t, "both parked", func() bool { return testutil.ToFloat64(w.p.metrics.notificationsHeld) == 2 })
	if held := w.p.Held(); len(held) != 2 || held[0].Account != "mp" || held[1].Account != "weapp" {
		t.Fatalf("Held() = %+v, want mp/template.send then weapp/subscribeMessage.send", held)
	}
	w.clock.Add(61 * time.Minute)
	o := w.last(1)
	if o.Rule != "sub" || o.Status != StatusExpired || !strings.HasPrefix(o.ErrMsg, "expired: event is 1h1m old, expire_after 1h (held while weapp/subscribeMessage.send was unavailable: system error rid: 1)") {
		t.Fatalf("outcome %+v", o)
	}
	w.clock.Add(2 * time.Hour)
	o = w.last(2)
	if o.Rule != "oa" || o.Status != StatusFailed || !strings.HasPrefix(o.ErrMsg, "held for 3h1m while mp/template.send kept failing (wechat.max_hold 2h); last error: system error rid: 1") {
		t.Fatalf("outcome %+v", o)
	}
	waitFor(t, "the event finished", func() bool { return w.pt.tracker.commitPoint() == 1 })
}

// An ambiguous timeout (the request may have reached WeChat, no idempotency key) is not
// retried by holding: it fails as before.
func TestAmbiguousTimeoutIsNotHeld(t *testing.T) {
	w := newHoldWorld(t, "", nil)
	w.wx.answer = func(req wechat.Request) (wechat.Result, bool) {
		if req.API != "subscribeMessage.send" {
			return wechat.Result{}, false
		}
		return wechat.Result{ErrCode: -2, ErrMsg: "timeout; the message may have been sent", Attempts: 1, Class: wechat.ClassTransient, Ambiguous: true}, true
	}
	w.feed("t", 1)
	w.outcomes(2)
	if got := w.outcomesByStatus(); got["subscribeMessage.send failed"] != 1 || got["template.send sent"] != 1 {
		t.Fatalf("outcomes %v, want the ambiguous send failed", got)
	}
	if calls := w.wx.calls.Load(); calls != 2 {
		t.Fatalf("%d calls, want 2: an ambiguous timeout is not probed again", calls)
	}
	if held := w.p.Held(); len(held) != 0 {
		t.Fatalf("held after an ambiguous timeout: %+v", held)
	}
}

// A revoked partition's held notifications are abandoned at once: its event stays uncommitted
// (the next owner redoes it) and the drain does not wait for the outage.
func TestRevokedHeldNotificationsAreAbandoned(t *testing.T) {
	w := newHoldWorld(t, "", nil)
	w.wx.set("subscribeMessage.send", true)
	gctx, revoke := context.WithCancel(context.Background())
	w.pt.gctx = gctx
	w.feed("r", 3)
	waitFor(t, "parked", func() bool { return testutil.ToFloat64(w.p.metrics.notificationsHeld) == 3 })
	drained := w.pt.tracker.drained()
	revoke()
	w.p.holds.abandonRevoked()
	select {
	case <-drained:
	case <-time.After(5 * time.Second):
		t.Fatal("the partition did not drain after its held notifications were abandoned")
	}
	if cp := w.pt.tracker.commitPoint(); cp != 0 {
		t.Fatalf("commit point %d, want 0: abandoned events are redone", cp)
	}
	for _, o := range w.outcomes(0) {
		if o.API == "subscribeMessage.send" {
			t.Fatalf("outcome for an abandoned notification: %+v", o)
		}
	}
	if len(w.p.budget)+len(w.p.heldBudget) != 0 {
		t.Fatal("abandoned events kept their budget")
	}
}

// With on_daily_quota: delay, a notification refused by the daily quota waits in the delay
// topic until 00:00 Beijing time; without it (the default) it fails; and when expire_after ends
// before the reset it expires now.
func TestDailyQuota(t *testing.T) {
	quota := func(req wechat.Request) (wechat.Result, bool) {
		if req.API != "subscribeMessage.send" {
			return wechat.Result{}, false
		}
		return wechat.Result{ErrCode: 45009, ErrMsg: "reach max api daily quota limit rid: 9", Class: wechat.ClassQuota}, true
	}
	for _, tc := range []struct {
		name, extra string
		delayed     int
		status      string
		errmsg      string
	}{
		{"fail by default", "", 0, StatusFailed, "reach max api daily quota limit rid: 9"},
		{"delay", "    on_daily_quota: delay\n", 1, "", ""},
		{"expire first", "    on_daily_quota: delay\n    expire_after: 2h\n", 0, StatusExpired,
			"expired: the daily quota is exhausted until 2026-11-23T00:00:00+08:00 and expire_after 2h ends first"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newHoldWorld(t, tc.extra, nil)
			w.wx.answer = quota
			w.event("q", "u1", w.clock.Now()) // 12:00 in Beijing
			waitFor(t, "the event finished", func() bool { return w.pt.tracker.commitPoint() == 1 })
			delayed := w.pub.records("delayed")
			if len(delayed) != tc.delayed {
				t.Fatalf("%d delayed records, want %d", len(delayed), tc.delayed)
			}
			if tc.delayed == 1 {
				dr, err := decodeDelayed(&kafkaio.Message{Value: delayed[0].Value, Headers: delayed[0].Headers})
				if err != nil || !dr.NotBefore.Equal(time.Date(2026, 11, 22, 16, 0, 0, 0, time.UTC)) || !strings.HasPrefix(dr.Reason, "daily quota exhausted") {
					t.Fatalf("delayed record %+v, %v", dr, err)
				}
			}
			for _, o := range w.outcomes(1) {
				if o.API != "subscribeMessage.send" {
					continue
				}
				if tc.status == "" || o.Status != tc.status || !strings.HasPrefix(o.ErrMsg, tc.errmsg) {
					t.Fatalf("outcome %+v", o)
				}
			}
		})
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
