package app

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// Through the whole pipeline: while WeChat answers HTTP 503 to subscribeMessage.send, its
// notifications are held, not failed: /readyz and wxnotify_wechat_held say so, the other APIs
// keep delivering, and no offset is committed past a held event. When WeChat recovers, every
// held notification is delivered and the commits catch up; no outcome says failed.
func TestWeChatOutageIsHeldNotFailed(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.cfg.WeChat.Retry.MaxAttempts = 2
	if err := h.sim.SetFault(wechatsim.Fault{ID: "outage", Kind: wechatsim.FaultHTTPStatus, Status: http.StatusServiceUnavailable, API: "subscribeMessage.send"}); err != nil {
		t.Fatal(err)
	}
	r := h.start()
	const n = 40
	h.produce("events", orderEvents("h-", n)...) // order.paid: one templateMessage.send and one subscribeMessage.send each
	waitFor(t, 20*time.Second, "the other API's notifications delivered during the outage", func() bool {
		return deliveredBy(h.sim, "templateMessage.send") == n
	})
	// Held: parked, or waiting in their key's lane behind a parked one (29 users for 40 events).
	waitFor(t, 20*time.Second, "the subscribe notifications held", func() bool {
		held, _ := series(t, r.reg, "wxnotify_notifications_held")
		return held >= 29
	})
	var ready readiness
	getJSON(t, "http://"+r.ops+"/readyz", &ready)
	if len(ready.WeChatHeld) != 1 || ready.WeChatHeld[0].API != "subscribeMessage.send" || ready.WeChatHeld[0].Account != "weapp" ||
		!strings.Contains(ready.WeChatHeld[0].LastError, "503") || !ready.Ready {
		t.Fatalf("readyz = %+v", ready)
	}
	if got := sum(h.committed()); got != 0 {
		t.Fatalf("committed %d events with held notifications", got)
	}

	h.sim.RemoveFault("outage")
	outs := h.outcomeCounts(2*n, 30*time.Second)
	wantOneOutcomeEach(t, outs, orderEvents("h-", n))
	for _, o := range h.outcomes(2*n, time.Second) {
		if o.Status != "sent" {
			t.Fatalf("outcome %+v, want every notification sent", o)
		}
	}
	if got := deliveredBy(h.sim, "subscribeMessage.send"); got != n {
		t.Fatalf("%d subscribe deliveries, want %d", got, n)
	}
	var after readiness
	getJSON(t, "http://"+r.ops+"/readyz", &after)
	if len(after.WeChatHeld) != 0 {
		t.Fatalf("still held after recovery: %+v", after.WeChatHeld)
	}
}

func deliveredBy(sim *wechatsim.Server, api string) int {
	n := 0
	for _, d := range sim.Deliveries() {
		if d.API == api {
			n++
		}
	}
	return n
}

func getJSON(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		t.Fatal(fmt.Errorf("%s: %w", url, err))
	}
}
