package wechat_test

import (
	"context"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechat"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// The client against the simulator: a connection reset after the request went out (the
// simulator delivered it first) is an ambiguous outcome, not a failure to retry, so the user
// does not get the message twice.
func TestResetAfterDeliveryIsNotRetried(t *testing.T) {
	sim, err := wechatsim.Start(wechatsim.Config{Accounts: map[string]string{"wxsimapp00000001": "sim-secret"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sim.Close() })
	c, err := wechat.New(wechat.Config{BaseURL: sim.URL(), Accounts: map[string]wechat.Account{
		"weapp": {AppID: "wxsimapp00000001", Secret: "sim-secret"},
	}, Retry: wechat.RetryPolicy{BaseDelay: time.Millisecond, MaxDelay: time.Millisecond}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := sim.SetFault(wechatsim.Fault{Kind: wechatsim.FaultReset, Deliver: true, API: "subscribeMessage.send", Count: 1}); err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"touser":"o1","template_id":"T1","data":{"thing1":{"value":"hi"}}}`)
	res := c.Send(context.Background(), wechat.Request{Account: "weapp", API: "subscribeMessage.send", Body: body, ToUser: "o1", TemplateID: "T1"})
	if res.Attempts != 1 || res.OK() {
		t.Errorf("result %+v: want one attempt and no success claimed", res)
	}
	if d := len(sim.Deliveries()); d != 1 {
		t.Errorf("simulator delivered %d messages, want 1", d)
	}
}
