package wechatsim_test

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func mustSetFault(t *testing.T, s *wechatsim.Server, f wechatsim.Fault) {
	t.Helper()
	if err := s.SetFault(f); err != nil {
		t.Fatal(err)
	}
}

func TestFaultErrcodeByCountAndScope(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultErrcode, ErrCode: -1, Count: 2, API: "subscribeMessage.send"})
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultErrcode, ErrCode: 43101, OpenIDs: []string{userB}})

	userBBody := strings.Replace(subscribeBody, userA, userB, 1)
	want := []struct {
		path, body string
		code       int
	}{
		{oaPath, oaTemplateBody, 0}, // other API: out of scope
		{subPath, subscribeBody, -1},
		{subPath, subscribeBody, -1},
		{subPath, subscribeBody, 0}, // count used up
		{subPath, userBBody, 43101},
		{oaPath, strings.Replace(oaTemplateBody, userA, userB, 1), 43101},
	}
	for i, w := range want {
		got := send(t, s, w.path, tok, w.body)
		if got.ErrCode != w.code || (w.code != 0 && !strings.Contains(got.ErrMsg, " rid: ")) {
			t.Fatalf("call %d: %s, want %d", i, got.raw, w.code)
		}
	}
	if n := len(s.Deliveries()); n != 2 {
		t.Fatalf("%d deliveries, want 2", n)
	}
	rs := s.Requests()
	if rs[1].ErrCode != -1 || rs[1].Fault != wechatsim.FaultErrcode {
		t.Fatalf("faulted request recorded as %+v", rs[1])
	}
	if fs := s.Faults(); len(fs) != 1 || fs[0].ErrCode != 43101 {
		t.Fatalf("live faults %+v, want only the openid one", fs)
	}
	s.ClearFaults()
	if got := send(t, s, subPath, tok, userBBody); got.ErrCode != 0 {
		t.Fatalf("after ClearFaults: %s", got.raw)
	}
}

func TestFaultRate(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultErrcode, ErrCode: 45011, Rate: 0.5, ErrMsg: "api minute-quota reach limit"})
	hits := 0
	const n = 200
	for range n {
		switch got := send(t, s, oaPath, tok, strings.Replace(oaTemplateBody, `,"client_msg_id":"evt-1"`, "", 1)); got.ErrCode {
		case 45011:
			hits++
		case 0:
		default:
			t.Fatalf("unexpected %s", got.raw)
		}
	}
	if hits < n/4 || hits > 3*n/4 {
		t.Fatalf("%d of %d calls hit at rate 0.5", hits, n)
	}
	st := s.Stats().Calls["template.send"]
	if st["45011"] != int64(hits) || st["0"] != int64(n-hits) {
		t.Fatalf("stats %v, hits %d", st, hits)
	}
}

func TestFaultSchedule(t *testing.T) {
	t0 := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	clk := &fakeClock{now: t0}
	s := start(t, wechatsim.Config{Now: clk.Now})
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultErrcode, ErrCode: -1, From: t0.Add(time.Minute), Until: t0.Add(2 * time.Minute)})
	for _, step := range []struct {
		at   time.Duration
		want int
	}{{0, 0}, {time.Minute, -1}, {90 * time.Second, -1}, {2 * time.Minute, 0}} {
		clk.Set(t0.Add(step.at))
		if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != step.want {
			t.Fatalf("at +%s: %s, want %d", step.at, got.raw, step.want)
		}
	}
}

func TestFaultHTTPStatusAndTokenEndpoint(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultHTTPStatus, Status: 503, Count: 1})
	if got := send(t, s, subPath, tok, subscribeBody); got.Status != 503 || got.ErrCode != 0 {
		t.Fatalf("http fault: %d %q", got.Status, got.raw)
	}
	if rs := s.Requests(); rs[0].HTTPStatus != 503 || rs[0].Fault != wechatsim.FaultHTTPStatus {
		t.Fatalf("request %+v", rs[0])
	}
	if st := s.Stats().Calls["subscribeMessage.send"]; st["http_503"] != 1 {
		t.Fatalf("stats %v", st)
	}

	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultErrcode, ErrCode: -1, Count: 1, API: wechatsim.APIStableToken})
	body := `{"grant_type":"client_credential","appid":"` + appID + `","secret":"` + secret + `"}`
	if got := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body); got.ErrCode != -1 || got.AccessToken != "" {
		t.Fatalf("token fault: %s", got.raw)
	}
	if got := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body); got.AccessToken != tok {
		t.Fatalf("after token fault: %s", got.raw)
	}
}

func TestFaultConnectionReset(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultReset, Count: 1})
	resp, err := http.Post(s.URL()+subPath+"?access_token="+tok, "application/json", strings.NewReader(subscribeBody))
	if err == nil {
		resp.Body.Close()
		t.Fatalf("reset fault answered HTTP %d", resp.StatusCode)
	}
	if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("after reset: %s", got.raw)
	}
	if rs := s.Requests(); len(rs) != 2 || rs[0].Fault != wechatsim.FaultReset || len(s.Deliveries()) != 1 {
		t.Fatalf("requests %+v", rs)
	}
}

func TestFaultTimeout(t *testing.T) {
	s := start(t, wechatsim.Config{MaxHold: 5 * time.Second})
	tok := stableToken(t, s)
	client := &http.Client{Timeout: 100 * time.Millisecond}

	// Deliver: WeChat delivered, the sender never heard back.
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultTimeout, Count: 1, Deliver: true})
	start := time.Now()
	_, err := client.Post(s.URL()+subPath+"?access_token="+tok, "application/json", strings.NewReader(subscribeBody))
	var ne interface{ Timeout() bool }
	if err == nil || !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a client timeout, got %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Fatalf("took %s", el)
	}
	if ds := s.Deliveries(); len(ds) != 1 {
		t.Fatalf("deliver+timeout: %d deliveries, want 1", len(ds))
	}

	// MaxHold: the server gives up first and answers 504, without delivering.
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultTimeout, Count: 1, MaxHold: 50 * time.Millisecond})
	if got := send(t, s, subPath, tok, subscribeBody); got.Status != http.StatusGatewayTimeout {
		t.Fatalf("max hold: %d %s", got.Status, got.raw)
	}
	if n := len(s.Deliveries()); n != 1 {
		t.Fatalf("%d deliveries after a plain timeout, want still 1", n)
	}
}

func TestFaultLatencyFixedAndTail(t *testing.T) {
	s := start(t, wechatsim.Config{Latency: 20 * time.Millisecond})
	tok := stableToken(t, s)
	timed := func() time.Duration {
		t0 := time.Now()
		if got := send(t, s, oaPath, tok, oaTemplateBody); got.ErrCode != 0 {
			t.Fatalf("latency call: %s", got.raw)
		}
		return time.Since(t0)
	}
	if d := timed(); d < 20*time.Millisecond {
		t.Fatalf("config latency: call took %s", d)
	}
	mustSetFault(t, s, wechatsim.Fault{ID: "fixed", Kind: wechatsim.FaultLatency, Latency: 60 * time.Millisecond})
	if d := timed(); d < 80*time.Millisecond {
		t.Fatalf("fixed latency fault: call took %s", d)
	}
	s.RemoveFault("fixed")
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultLatency, Latency: 150 * time.Millisecond, Rate: 0.5})
	slow := 0
	for range 20 {
		if timed() >= 170*time.Millisecond {
			slow++
		}
	}
	if slow == 0 || slow == 20 {
		t.Fatalf("tail latency at rate 0.5: %d of 20 slow", slow)
	}
}

func TestCloseReleasesHeldRequests(t *testing.T) {
	s, err := wechatsim.Start(wechatsim.Config{Accounts: map[string]string{appID: secret}, MaxHold: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	tok := stableToken(t, s)
	mustSetFault(t, s, wechatsim.Fault{Kind: wechatsim.FaultTimeout})
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(context.Background(), "POST", s.URL()+subPath+"?access_token="+tok, strings.NewReader(subscribeBody))
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	time.Sleep(100 * time.Millisecond)
	t0 := time.Now()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(t0); el > 3*time.Second {
		t.Fatalf("Close took %s", el)
	}
	<-done
}

func TestFaultValidate(t *testing.T) {
	bad := []wechatsim.Fault{
		{Kind: "explode"},
		{Kind: wechatsim.FaultErrcode},
		{Kind: wechatsim.FaultLatency},
		{Kind: wechatsim.FaultHTTPStatus, Status: 200},
		{Kind: wechatsim.FaultReset, Rate: 1.5},
		{Kind: wechatsim.FaultReset, API: "nope.send"},
	}
	for _, f := range bad {
		if err := f.Validate(); err == nil {
			t.Errorf("%+v validated", f)
		}
	}
}
