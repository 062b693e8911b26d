package wechat

import (
	"bytes"
	"context"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

func metric(t *testing.T, e *env, name string, labels map[string]string) float64 {
	t.Helper()
	mfs, err := e.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			got := map[string]string{}
			for _, lp := range m.GetLabel() {
				got[lp.GetName()] = lp.GetValue()
			}
			for k, v := range labels {
				if got[k] != v {
					continue next
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount())
			}
		}
	}
	return 0
}

func TestSendOK(t *testing.T) {
	e := newEnv(t, nil)
	req := subscribe("weapp")
	r := e.c.Send(context.Background(), req)
	if want := (Result{ErrCode: 0, ErrMsg: "ok", MsgID: 1001, Attempts: 1, Class: ClassOK}); r != want {
		t.Fatalf("Send = %+v, want %+v", r, want)
	}
	if !r.OK() {
		t.Fatal("OK() = false")
	}
	seen := e.f.seen()
	if len(seen) != 1 {
		t.Fatalf("%d sends, want 1", len(seen))
	}
	s := seen[0]
	if s.Method != http.MethodPost || s.ContentType != "application/json" || s.Path != "/cgi-bin/message/subscribe/send" || s.AppID != "wxWEAPP" || !bytes.Equal(s.Body, req.Body) {
		t.Fatalf("WeChat saw %+v", s)
	}
	if got := e.f.stableHits.Load(); got != 1 {
		t.Fatalf("stable_token hits = %d, want 1", got)
	}
	if got := metric(t, e, "wxnotify_token_fetches_total", map[string]string{"account": "weapp", "reason": "initial"}); got != 1 {
		t.Errorf("token_fetches_total{initial} = %v", got)
	}
	if got := metric(t, e, "wxnotify_wechat_responses_total", map[string]string{"api": "subscribeMessage.send", "errcode": "0"}); got != 1 {
		t.Errorf("responses_total{0} = %v", got)
	}
	if got := metric(t, e, "wxnotify_wechat_request_duration_seconds", map[string]string{"api": "subscribeMessage.send"}); got != 1 {
		t.Errorf("request_duration count = %v", got)
	}
	// A second send reuses the cached token.
	if r := e.c.Send(context.Background(), req); !r.OK() || e.f.stableHits.Load() != 1 {
		t.Fatalf("second send %+v, token hits %d", r, e.f.stableHits.Load())
	}
	// Nothing above debug for routine work.
	for _, lvl := range []string{`"level":"info"`, `"level":"warning"`, `"level":"error"`} {
		if n := e.logs.count(lvl); n != 0 {
			t.Errorf("%d %s lines for successful sends:\n%s", n, lvl, e.logs)
		}
	}
}

func TestSendClasses(t *testing.T) {
	const base = DefaultBaseDelay
	tests := []struct {
		name       string
		req        Request
		answers    []int // errcodes, or HTTP statuses 100..599
		class      Class
		errcode    int
		attempts   int
		sleeps     []time.Duration
		tokenHits  int32
		errmsgHas  string
		maxRetries int
	}{
		{name: "busy then ok", req: subscribe("weapp"), answers: []int{-1}, class: ClassOK, attempts: 2, sleeps: []time.Duration{base - 1}, tokenHits: 1},
		{name: "busy until max attempts", req: subscribe("weapp"), answers: []int{-1, -1, -1, -1}, class: ClassTransient, errcode: -1, attempts: 4,
			sleeps: []time.Duration{base - 1, 2*base - 1, 4*base - 1}, tokenHits: 1, errmsgHas: "rid: 65f0-1a2b"},
		{name: "43108 concurrent same user", req: subscribe("weapp"), answers: []int{43108}, class: ClassOK, attempts: 2, sleeps: []time.Duration{base - 1}, tokenHits: 1},
		{name: "http 502 then ok", req: subscribe("weapp"), answers: []int{502}, class: ClassOK, attempts: 2, sleeps: []time.Duration{base - 1}, tokenHits: 1},
		{name: "http 503 until max", req: subscribe("weapp"), answers: []int{503, 503, 503, 503}, class: ClassTransient, errcode: ErrNoAnswer, attempts: 4,
			sleeps: []time.Duration{base - 1, 2*base - 1, 4*base - 1}, tokenHits: 1, errmsgHas: "http status 503"},
		{name: "permanent no consent", req: subscribe("weapp"), answers: []int{43101}, class: ClassPermanent, errcode: 43101, attempts: 1, tokenHits: 1, errmsgHas: "rid: 65f0-1a2b"},
		{name: "permanent content", req: subscribe("weapp"), answers: []int{47003}, class: ClassPermanent, errcode: 47003, attempts: 1, tokenHits: 1},
		{name: "unknown errcode is permanent", req: subscribe("weapp"), answers: []int{61234}, class: ClassPermanent, errcode: 61234, attempts: 1, tokenHits: 1},
		{name: "config invalid template", req: subscribe("weapp"), answers: []int{40037}, class: ClassConfig, errcode: 40037, attempts: 1, tokenHits: 1},
		{name: "config retired api", req: subscribe("weapp"), answers: []int{45103}, class: ClassConfig, errcode: 45103, attempts: 1, tokenHits: 1},
		{name: "daily quota", req: subscribe("weapp"), answers: []int{45009}, class: ClassQuota, errcode: 45009, attempts: 1, tokenHits: 1},
		{name: "minute quota waits for next minute", req: subscribe("weapp"), answers: []int{45011}, class: ClassOK, attempts: 2, sleeps: []time.Duration{30 * time.Second}, tokenHits: 1},
		{name: "token error refetch and retry once", req: subscribe("weapp"), answers: []int{42001}, class: ClassOK, attempts: 2, tokenHits: 2},
		{name: "second token error fails", req: templateSend("oa"), answers: []int{40001, 40014}, class: ClassToken, errcode: 40014, attempts: 2, tokenHits: 2,
			errmsgHas: "rejected again after refetching"},
		{name: "token retry is not a max-attempts retry", req: subscribe("weapp"), answers: []int{40001, -1}, class: ClassTransient, errcode: -1, attempts: 2,
			sleeps: nil, tokenHits: 2, maxRetries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				if tt.maxRetries != 0 {
					c.Retry.MaxAttempts = tt.maxRetries
				}
			})
			e.f.answers(tt.answers...)
			r := e.c.Send(context.Background(), tt.req)
			if r.Class != tt.class || r.ErrCode != tt.errcode || r.Attempts != tt.attempts {
				t.Fatalf("Send = %+v, want class %s errcode %d attempts %d", r, tt.class, tt.errcode, tt.attempts)
			}
			if got := e.clock.Sleeps(); len(got) != len(tt.sleeps) || (len(got) > 0 && !equalDurations(got, tt.sleeps)) {
				t.Errorf("sleeps = %v, want %v", got, tt.sleeps)
			}
			if got := e.f.tokenHits(); got != tt.tokenHits {
				t.Errorf("token fetches = %d, want %d", got, tt.tokenHits)
			}
			if !strings.Contains(r.ErrMsg, tt.errmsgHas) {
				t.Errorf("ErrMsg %q does not contain %q", r.ErrMsg, tt.errmsgHas)
			}
			if got := int(e.f.sendHits.Load()); got != tt.attempts {
				t.Errorf("WeChat saw %d sends, Result says %d attempts", got, tt.attempts)
			}
		})
	}
}

func equalDurations(a, b []time.Duration) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestBackoffFullJitter(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Retry = RetryPolicy{MaxAttempts: 4, BaseDelay: 100 * time.Millisecond, MaxDelay: 250 * time.Millisecond}
	})
	e.c.jitter = rand.Int64N
	e.f.setScript(func(int, sendSeen) (int, string) { return errAnswer(-1) })
	const sends = 50
	for range sends {
		if r := e.c.Send(context.Background(), subscribe("weapp")); r.Class != ClassTransient || r.Attempts != 4 {
			t.Fatalf("Send = %+v", r)
		}
	}
	sleeps := e.clock.Sleeps()
	if len(sleeps) != 3*sends {
		t.Fatalf("%d sleeps, want %d", len(sleeps), 3*sends)
	}
	caps := []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 250 * time.Millisecond}
	distinct := map[time.Duration]bool{}
	for i, d := range sleeps {
		if d < 0 || d >= caps[i%3] {
			t.Errorf("sleep %d = %s, want in [0, %s)", i, d, caps[i%3])
		}
		distinct[d] = true
	}
	if len(distinct) < sends {
		t.Errorf("only %d distinct backoffs in %d: not jittered", len(distinct), len(sleeps))
	}
	if got := metric(t, e, "wxnotify_wechat_retries_total", map[string]string{"api": "subscribeMessage.send", "class": "transient"}); got != 3*sends {
		t.Errorf("retries_total = %v, want %d", got, 3*sends)
	}
}

func TestRetryDeadline(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retry.Deadline = 250 * time.Millisecond })
	e.f.setScript(func(int, sendSeen) (int, string) { return errAnswer(-1) })
	r := e.c.Send(context.Background(), subscribe("weapp"))
	// 100ms wait fits, the next 200ms wait would end at 300ms > 250ms.
	if r.Class != ClassTransient || r.Attempts != 2 || !strings.Contains(r.ErrMsg, "deadline") {
		t.Fatalf("Send = %+v", r)
	}
}

func TestContextCancelled(t *testing.T) {
	e := newEnv(t, nil)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	r := e.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassTransient || r.ErrCode != ErrNoAnswer || r.Attempts != 0 || e.f.sendHits.Load() != 0 {
		t.Fatalf("Send = %+v", r)
	}
}

func TestUnknownAccountOrAPI(t *testing.T) {
	e := newEnv(t, nil)
	for _, req := range []Request{{Account: "nope", API: "template.send"}, {Account: "weapp", API: "nope.send"}} {
		r := e.c.Send(context.Background(), req)
		if r.Class != ClassConfig || r.ErrCode != ErrNoAnswer || r.Attempts != 0 || !strings.Contains(r.ErrMsg, `"nope`) {
			t.Errorf("Send(%s/%s) = %+v", req.Account, req.API, r)
		}
	}
}

// TestTokenStorm: 200 sends holding a token WeChat no longer accepts make exactly one fetch.
func TestTokenStorm(t *testing.T) {
	e := newEnv(t, nil)
	if r := e.c.Send(context.Background(), subscribe("weapp")); !r.OK() {
		t.Fatalf("prime: %+v", r)
	}
	e.f.revokeAll()
	var wg sync.WaitGroup
	start := make(chan struct{})
	results := make([]Result, 200)
	for i := range results {
		wg.Go(func() {
			<-start
			results[i] = e.c.Send(context.Background(), subscribe("weapp"))
		})
	}
	close(start)
	wg.Wait()
	rejected := 0
	for _, r := range results {
		if !r.OK() {
			t.Fatalf("Send = %+v", r)
		}
		if r.Attempts == 2 {
			rejected++
		}
	}
	if got := e.f.stableHits.Load(); got != 2 {
		t.Fatalf("stable_token fetches = %d, want 2 (initial + one refetch)", got)
	}
	if got := metric(t, e, "wxnotify_token_fetches_total", map[string]string{"account": "weapp", "reason": "invalidated"}); got != 1 {
		t.Errorf("token_fetches_total{invalidated} = %v, want 1", got)
	}
	if rejected == 0 {
		t.Errorf("no send met the revoked token: the storm did not happen")
	}
	t.Logf("%d of 200 sends met the revoked token", rejected)
}

// TestCompareAndInvalidate: a late rejection of an old token must not drop its successor.
func TestCompareAndInvalidate(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	a := e.c.accounts["weapp"]
	t1, err := e.c.token(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	a.invalidate(t1) // first 40001 with t1
	t2, err := e.c.token(ctx, a)
	if err != nil || t2 == t1 || t2.value == t1.value {
		t.Fatalf("refetch: %v, same token %v", err, t2 == t1)
	}
	a.invalidate(t1) // a late 40001 with t1, after t2 is cached
	if got := a.tok.Load(); got != t2 {
		t.Fatal("late invalidation of the old token dropped the new one")
	}
	if r := e.c.Send(ctx, subscribe("weapp")); !r.OK() {
		t.Fatalf("Send = %+v", r)
	}
	if got := e.f.stableHits.Load(); got != 2 {
		t.Fatalf("stable_token fetches = %d, want 2", got)
	}
}

func TestTokenExpiry(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.c.Send(ctx, subscribe("weapp"))
	e.clock.Advance(6900*time.Second - time.Millisecond) // 7200 - 5 min margin
	e.c.Send(ctx, subscribe("weapp"))
	if got := e.f.stableHits.Load(); got != 1 {
		t.Fatalf("fetches before TTL = %d, want 1", got)
	}
	e.clock.Advance(time.Millisecond)
	e.f.expiresIn.Store(300) // near rotation: TTL clamps to 1 s
	e.c.Send(ctx, subscribe("weapp"))
	if got := e.f.stableHits.Load(); got != 2 {
		t.Fatalf("fetches after TTL = %d, want 2", got)
	}
	e.clock.Advance(time.Second)
	e.c.Send(ctx, subscribe("weapp"))
	if got := e.f.stableHits.Load(); got != 3 {
		t.Fatalf("fetches after 1 s clamp = %d, want 3", got)
	}
	if got := metric(t, e, "wxnotify_token_fetches_total", map[string]string{"account": "weapp", "reason": "expired"}); got != 2 {
		t.Errorf("token_fetches_total{expired} = %v, want 2", got)
	}
}

func TestTokenEndpointConfigFault(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.Accounts["weapp"] = Account{AppID: "wxWEAPP", Secret: "SECRET-wrong-0000"}
	})
	ctx := context.Background()
	r := e.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassConfig || r.ErrCode != 40125 || r.Attempts != 0 ||
		!strings.Contains(r.ErrMsg, "account weapp") || !strings.Contains(r.ErrMsg, "wrong app secret") {
		t.Fatalf("Send = %+v", r)
	}
	// The token breaker keeps further sends off the token endpoint.
	r = e.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassConfig || r.ErrCode != 40125 || !strings.Contains(r.ErrMsg, "token breaker open") || e.f.stableHits.Load() != 1 {
		t.Fatalf("second Send = %+v, token hits %d", r, e.f.stableHits.Load())
	}
	err := e.c.CheckTokens(ctx, nil)
	if err == nil || !strings.Contains(err.Error(), "access token for account weapp: errcode 40125") || strings.Contains(err.Error(), "account oa") {
		t.Fatalf("CheckTokens = %v", err)
	}
	if e.c.Ready() {
		t.Error("Ready with a failing account")
	}
	if got := metric(t, e, "wxnotify_breaker_open", map[string]string{"account": "weapp"}); got != 1 {
		t.Errorf("breaker_open = %v", got)
	}
	if got := metric(t, e, "wxnotify_token_fetch_errors_total", map[string]string{"account": "weapp"}); got != 1 {
		t.Errorf("token_fetch_errors_total = %v", got)
	}
	if n := e.logs.count(`"level":"error"`, "access token refused", `"account":"weapp"`, `"errcode":40125`); n != 1 {
		t.Errorf("%d error lines for the token fault, want 1:\n%s", n, e.logs)
	}
	if n := e.logs.count(`"level":"error"`); n != 1 {
		t.Errorf("%d error lines, want only the token fault's:\n%s", n, e.logs)
	}
	if strings.Contains(e.logs.String(), "SECRET-wrong-0000") || strings.Contains(r.ErrMsg+err.Error(), "SECRET-wrong-0000") {
		t.Error("secret leaked")
	}
}

func TestTokenEndpointFaultRecovers(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.f.tokenErr.Store(40164)
	if r := e.c.Send(ctx, subscribe("weapp")); r.Class != ClassConfig || r.ErrCode != 40164 || !strings.Contains(r.ErrMsg, "whitelist") {
		t.Fatalf("Send = %+v", r)
	}
	e.f.tokenErr.Store(0)
	e.clock.Advance(DefaultBreakerCooldown)
	if r := e.c.Send(ctx, subscribe("weapp")); !r.OK() {
		t.Fatalf("after cooldown: %+v", r)
	}
	if got := metric(t, e, "wxnotify_breaker_open", map[string]string{"account": "weapp"}); got != 0 {
		t.Errorf("breaker_open = %v", got)
	}
	// -1 from the token endpoint is transient: retried with backoff, no breaker.
	e2 := newEnv(t, nil)
	e2.f.tokenErr.Store(-1)
	r := e2.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassTransient || r.ErrCode != -1 || r.Attempts != 0 || e2.f.stableHits.Load() != 4 || len(e2.clock.Sleeps()) != 3 {
		t.Fatalf("Send = %+v, token hits %d, sleeps %v", r, e2.f.stableHits.Load(), e2.clock.Sleeps())
	}
}

func TestTokenSources(t *testing.T) {
	for _, tt := range []struct {
		source                 string
		stable, classic, url   int32
		wantToken, readyBefore bool
	}{
		{source: SourceStable, stable: 1, wantToken: true},
		{source: SourceClassic, classic: 1, wantToken: true},
		{source: SourceURL, url: 1, wantToken: true},
		{source: SourceNone, readyBefore: true},
	} {
		t.Run(tt.source, func(t *testing.T) {
			e := newEnv(t, func(c *Config) {
				a := Account{AppID: "wxOA", Secret: secretOA, TokenSource: tt.source}
				switch tt.source {
				case SourceURL:
					a = Account{TokenSource: SourceURL, TokenURL: c.BaseURL + "/token-service?appid=wxOA"}
				case SourceNone:
					a = Account{TokenSource: SourceNone}
				}
				c.Accounts = map[string]Account{"a": a}
			})
			if e.c.Ready() != tt.readyBefore {
				t.Fatalf("Ready before any fetch = %v", e.c.Ready())
			}
			if tt.source == SourceNone {
				e.f.setScript(func(_ int, s sendSeen) (int, string) { return 0, "" })
			}
			r := e.c.Send(context.Background(), templateSend("a"))
			if !r.OK() || r.Attempts != 1 {
				t.Fatalf("Send = %+v", r)
			}
			if e.f.stableHits.Load() != tt.stable || e.f.classicHits.Load() != tt.classic || e.f.urlHits.Load() != tt.url {
				t.Fatalf("hits stable %d classic %d url %d", e.f.stableHits.Load(), e.f.classicHits.Load(), e.f.urlHits.Load())
			}
			s := e.f.seen()[0]
			if s.HasToken != tt.wantToken || (tt.wantToken && s.AppID != "wxOA") {
				t.Fatalf("send carried access_token=%v (%q)", s.HasToken, s.AppID)
			}
			if !e.c.Ready() {
				t.Fatal("not Ready after a send")
			}
		})
	}
}

func TestCheckTokens(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	if e.c.Ready() {
		t.Fatal("Ready before any token")
	}
	if err := e.c.CheckTokens(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if !e.c.Ready() || e.f.stableHits.Load() != 1 || e.f.classicHits.Load() != 1 {
		t.Fatalf("Ready %v, hits %d/%d", e.c.Ready(), e.f.stableHits.Load(), e.f.classicHits.Load())
	}
	if err := e.c.CheckTokens(ctx, []string{"nope"}); err == nil || !strings.Contains(err.Error(), "account nope: unknown account") {
		t.Fatalf("CheckTokens(nope) = %v", err)
	}
}

func TestDailyQuota(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	e.f.answers(45009)
	if r := e.c.Send(ctx, subscribe("weapp")); r.Class != ClassQuota || r.ErrCode != 45009 || r.Attempts != 1 {
		t.Fatalf("tripping Send = %+v", r)
	}
	for range 3 {
		r := e.c.Send(ctx, subscribe("weapp"))
		if r.Class != ClassQuota || r.ErrCode != 45009 || r.Attempts != 0 || !strings.Contains(r.ErrMsg, "2025-03-11T00:00:00+08:00") {
			t.Fatalf("stopped Send = %+v", r)
		}
	}
	if got := e.f.sendHits.Load(); got != 1 {
		t.Fatalf("WeChat saw %d sends while stopped, want 1", got)
	}
	// Other accounts and other APIs of the same account keep going.
	if r := e.c.Send(ctx, templateSend("oa")); !r.OK() {
		t.Fatalf("other account: %+v", r)
	}
	if r := e.c.Send(ctx, templateSend("weapp")); !r.OK() {
		t.Fatalf("other API: %+v", r)
	}
	labels := map[string]string{"account": "weapp", "api": "subscribeMessage.send", "kind": "daily"}
	if got := metric(t, e, "wxnotify_quota_paused", labels); got != 1 {
		t.Errorf("quota_paused = %v", got)
	}
	if got := metric(t, e, "wxnotify_quota_trips_total", labels); got != 1 {
		t.Errorf("quota_trips_total = %v", got)
	}
	if n := e.logs.count(`"level":"error"`, "daily quota exhausted", `"api":"subscribeMessage.send"`); n != 1 {
		t.Errorf("%d error lines for the daily stop, want 1", n)
	}
	e.clock.Set(time.Date(2025, 3, 10, 23, 59, 59, 0, wxapi.Beijing))
	if r := e.c.Send(ctx, subscribe("weapp")); r.Attempts != 0 || r.Class != ClassQuota {
		t.Fatalf("23:59:59 Send = %+v", r)
	}
	e.clock.Set(time.Date(2025, 3, 10, 16, 0, 0, 0, time.UTC)) // 00:00 Beijing
	if r := e.c.Send(ctx, subscribe("weapp")); !r.OK() || r.Attempts != 1 {
		t.Fatalf("next Beijing day Send = %+v", r)
	}
	if got := metric(t, e, "wxnotify_quota_paused", labels); got != 0 {
		t.Errorf("quota_paused after reset = %v", got)
	}
}

func TestMinuteQuota(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retry.MaxAttempts = 1 })
	ctx := context.Background()
	e.f.answers(45011)
	if r := e.c.Send(ctx, subscribe("weapp")); r.Class != ClassQuota || r.ErrCode != 45011 || r.Attempts != 1 {
		t.Fatalf("tripping Send = %+v", r)
	}
	if got := metric(t, e, "wxnotify_quota_paused", map[string]string{"account": "weapp", "api": "subscribeMessage.send", "kind": "minute"}); got != 1 {
		t.Errorf("quota_paused{minute} = %v", got)
	}
	// Other (account, API) pairs do not wait.
	if r := e.c.Send(ctx, templateSend("weapp")); !r.OK() {
		t.Fatal(r)
	}
	if r := e.c.Send(ctx, subscribe("oa")); !r.OK() {
		t.Fatal(r)
	}
	if s := e.clock.Sleeps(); len(s) != 0 {
		t.Fatalf("unrelated sends waited %v", s)
	}
	// The paused pair waits for 10:01:00, then sends.
	if r := e.c.Send(ctx, subscribe("weapp")); !r.OK() || r.Attempts != 1 {
		t.Fatalf("paused Send = %+v", r)
	}
	if s := e.clock.Sleeps(); !equalDurations(s, []time.Duration{30 * time.Second}) {
		t.Fatalf("paused send waited %v, want [30s]", s)
	}
}

func TestMinuteQuotaWaitIsCtxAware(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	e := newEnv(t, func(c *Config) {
		c.Sleep = func(ctx context.Context, d time.Duration) error { cancel(); return ctx.Err() }
	})
	e.f.answers(45011)
	r := e.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassQuota || r.ErrCode != 45011 || r.Attempts != 1 || !strings.Contains(r.ErrMsg, "context canceled") {
		t.Fatalf("Send = %+v", r)
	}
	if got := e.f.sendHits.Load(); got != 1 {
		t.Fatalf("WeChat saw %d sends", got)
	}
}

func TestMinuteQuotaPastDeadline(t *testing.T) {
	e := newEnv(t, nil) // Deadline 30s
	e.clock.Set(time.Date(2025, 3, 10, 10, 0, 5, 0, wxapi.Beijing))
	e.f.answers(45011)
	r := e.c.Send(context.Background(), subscribe("weapp"))
	if r.Class != ClassQuota || r.ErrCode != 45011 || r.Attempts != 1 || !strings.Contains(r.ErrMsg, "after the retry deadline") {
		t.Fatalf("Send = %+v", r)
	}
	if s := e.clock.Sleeps(); len(s) != 0 {
		t.Fatalf("waited %v for a pause past the deadline", s)
	}
}

func TestBreaker(t *testing.T) {
	e := newEnv(t, nil)
	ctx := context.Background()
	tplA, tplB := subscribe("weapp"), subscribe("weapp")
	tplB.TemplateID = "TPL-B"
	e.f.setScript(func(n int, _ sendSeen) (int, string) {
		if n == 1 || n == 3 {
			return errAnswer(40037)
		}
		return 0, ""
	})
	if r := e.c.Send(ctx, tplA); r.Class != ClassConfig || r.ErrCode != 40037 || r.Attempts != 1 {
		t.Fatalf("tripping Send = %+v", r)
	}
	r := e.c.Send(ctx, tplA)
	if r.Class != ClassConfig || r.ErrCode != 40037 || r.Attempts != 0 || !strings.Contains(r.ErrMsg, "circuit breaker open") || e.f.sendHits.Load() != 1 {
		t.Fatalf("Send while open = %+v (WeChat saw %d)", r, e.f.sendHits.Load())
	}
	if r := e.c.Send(ctx, tplB); !r.OK() { // send 2: other template unaffected
		t.Fatalf("other template: %+v", r)
	}
	if got := metric(t, e, "wxnotify_breaker_open", map[string]string{"account": "weapp"}); got != 1 {
		t.Errorf("breaker_open = %v", got)
	}
	if n := e.logs.count(`"level":"error"`, "circuit breaker opened", `"template_id":"TPL-A"`, `"errcode":40037`); n != 1 {
		t.Errorf("%d breaker error lines, want 1", n)
	}
	// Half-open trial fails (send 3): re-opens.
	e.clock.Advance(DefaultBreakerCooldown)
	if r := e.c.Send(ctx, tplA); r.Attempts != 1 || r.ErrCode != 40037 {
		t.Fatalf("failing trial = %+v", r)
	}
	if r := e.c.Send(ctx, tplA); r.Attempts != 0 || !strings.Contains(r.ErrMsg, "circuit breaker open") {
		t.Fatalf("after failed trial = %+v", r)
	}
	// Half-open trial succeeds (send 4): closes.
	e.clock.Advance(DefaultBreakerCooldown)
	if r := e.c.Send(ctx, tplA); !r.OK() || r.Attempts != 1 {
		t.Fatalf("good trial = %+v", r)
	}
	if r := e.c.Send(ctx, tplA); !r.OK() {
		t.Fatalf("after close = %+v", r)
	}
	if got := metric(t, e, "wxnotify_breaker_trips_total", map[string]string{"account": "weapp"}); got != 2 {
		t.Errorf("breaker_trips_total = %v, want 2", got)
	}
	if got := metric(t, e, "wxnotify_breaker_open", map[string]string{"account": "weapp"}); got != 0 {
		t.Errorf("breaker_open = %v, want 0", got)
	}
	if got := e.f.sendHits.Load(); got != 5 {
		t.Errorf("WeChat saw %d sends, want 5", got)
	}
}

func TestBreakerHalfOpenAdmitsOneTrial(t *testing.T) {
	var s breakerSet
	s.m = map[string]*breaker{"T": {until: t0, code: 40037, msg: "x"}}
	s.n.Store(1)
	if _, refused := s.admit(t0.Add(-time.Second), "T"); refused == nil {
		t.Fatal("open breaker admitted a send")
	}
	if trial, refused := s.admit(t0, "T"); !trial || refused != nil {
		t.Fatalf("first send after cooldown: trial %v refused %v", trial, refused)
	}
	if _, refused := s.admit(t0, "T"); refused == nil || !strings.Contains(refused.ErrMsg, "trial send in flight") {
		t.Fatalf("second send during trial: %+v", refused)
	}
	if trial, refused := s.admit(t0, "other"); trial || refused != nil {
		t.Fatal("other template affected")
	}
}

func TestTimeoutWithoutIdempotencyKey(t *testing.T) {
	for _, tt := range []struct {
		name     string
		req      Request
		retry    bool
		attempts int
	}{
		{"subscribe not retried", subscribe("weapp"), false, 1},
		{"subscribe retried when allowed", subscribe("weapp"), true, 2},
		{"template.send has client_msg_id: retried", templateSend("oa"), false, 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, func(c *Config) { c.Timeout = 100 * time.Millisecond; c.Retry.MaxAttempts = 2 })
			if err := e.c.CheckTokens(context.Background(), nil); err != nil {
				t.Fatal(err)
			}
			e.f.hold.Store(true)
			tt.req.RetryOnTimeout = tt.retry
			r := e.c.Send(context.Background(), tt.req)
			if r.Class != ClassTransient || r.ErrCode != ErrNoAnswer || r.Attempts != tt.attempts || !strings.Contains(r.ErrMsg, "timeout") {
				t.Fatalf("Send = %+v", r)
			}
			if may := strings.Contains(r.ErrMsg, "may have been sent"); may != (tt.attempts == 1) || r.Ambiguous != may {
				t.Errorf("ErrMsg %q: 'may have been sent' = %v, Ambiguous %v", r.ErrMsg, may, r.Ambiguous)
			}
			if got := int(e.f.sendHits.Load()); got != tt.attempts {
				t.Errorf("WeChat saw %d sends", got)
			}
		})
	}
}

// A timeout before the request went out (here: no free connection to WeChat within the timeout)
// cannot have delivered anything, so even subscribeMessage.send, which has no idempotency key,
// is retried and, still failing, ends as a plain transient failure that the processor holds
// rather than as "may have been sent".
func TestTimeoutBeforeTheRequestWentOutIsRetried(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Timeout = 100 * time.Millisecond; c.MaxConns = 1; c.Retry.MaxAttempts = 3 })
	if err := e.c.CheckTokens(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if e.c.fast == nil {
		t.Fatal("no poster: the test needs the client's own connection pool")
	}
	e.c.fast.slots <- struct{}{} // the only connection is busy for the whole send
	r := e.c.Send(context.Background(), subscribe("weapp"))
	if r.Class != ClassTransient || r.Ambiguous || r.Attempts != 3 || strings.Contains(r.ErrMsg, "may have been sent") ||
		!strings.Contains(r.ErrMsg, "before the request went out") {
		t.Fatalf("Send = %+v; want 3 attempts ending transient, not ambiguous", r)
	}
	if got := e.f.sendHits.Load(); got != 0 {
		t.Fatalf("WeChat saw %d sends, want 0", got)
	}
	<-e.c.fast.slots
	if r := e.c.Send(context.Background(), subscribe("weapp")); !r.OK() || r.Attempts != 1 {
		t.Fatalf("Send after the connection was free = %+v", r)
	}
}

// A send cancelled while it waits for a free connection was not sent: it says so, not "may have
// been sent".
func TestCancelBeforeTheRequestWentOut(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Timeout = 5 * time.Second; c.MaxConns = 1 })
	if err := e.c.CheckTokens(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if e.c.fast == nil {
		t.Fatal("no poster: the test needs the client's own connection pool")
	}
	e.c.fast.slots <- struct{}{} // the only connection is busy for the whole send
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(50*time.Millisecond, cancel)
	r := e.c.Send(ctx, subscribe("weapp"))
	if r.Class != ClassTransient || r.Ambiguous || r.Attempts != 1 || r.ErrMsg != "not sent: context canceled" {
		t.Fatalf("Send = %+v; want one attempt, not sent", r)
	}
	if got := e.f.sendHits.Load(); got != 0 {
		t.Fatalf("WeChat saw %d sends, want 0", got)
	}
}

// A probe's MaxAttempts bounds the attempts below the policy's: one call, then the transient
// answer, without the backoff.
func TestRequestMaxAttempts(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Retry.MaxAttempts = 4 })
	if err := e.c.CheckTokens(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	e.f.answers(-1, -1, -1, -1)
	req := subscribe("weapp")
	req.MaxAttempts = 1
	if r := e.c.Send(context.Background(), req); r.Class != ClassTransient || r.Attempts != 1 || r.Ambiguous {
		t.Fatalf("Send = %+v, want one transient attempt", r)
	}
	if got := e.f.sendHits.Load(); got != 1 {
		t.Fatalf("WeChat saw %d sends, want 1", got)
	}
}

// TestSecretsNeverLeak drives every path that renders an error or a log line and greps for the
// tokens the fake issued and the secrets.
func TestSecretsNeverLeak(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.Timeout = 100 * time.Millisecond })
	ctx := context.Background()
	var msgs []string
	send := func(req Request) Result {
		r := e.c.Send(ctx, req)
		msgs = append(msgs, r.ErrMsg)
		return r
	}
	send(subscribe("weapp"))
	send(templateSend("oa"))
	e.f.revokeAll()
	send(subscribe("weapp"))
	e.f.answers(40001, 40001, 43101, 40037, -1)
	for range 4 {
		send(templateSend("oa"))
	}
	// WeChat echoing the token in an errmsg.
	e.f.setScript(func(_ int, s sendSeen) (int, string) {
		return 200, `{"errcode":47001,"errmsg":"bad request access_token=` + s.Token + ` token ` + s.Token + `"}`
	})
	if r := send(subscribe("weapp")); r.ErrCode != 47001 || !strings.Contains(r.ErrMsg, "REDACTED") {
		t.Fatalf("echo: %+v", r)
	}
	// The connection dies mid-answer: *url.Error carries the URL with ?access_token=.
	e.f.setScript(func(int, sendSeen) (int, string) { return 0, "" })
	drop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, err := w.(http.Hijacker).Hijack()
		if err == nil {
			conn.Close()
		}
	}))
	defer drop.Close()
	d := newEnv(t, func(c *Config) {
		c.Accounts = map[string]Account{"a": {TokenSource: SourceURL, TokenURL: c.BaseURL + "/token-service?appid=wxWEAPP"}}
		c.Retry.MaxAttempts = 1
	})
	d.c.cfg.BaseURL = drop.URL
	d.c.accounts["a"].tok.Store(nil)
	r := d.c.Send(ctx, templateSend("a"))
	if r.Class != ClassTransient || r.Attempts != 1 || !strings.Contains(r.ErrMsg, "REDACTED") {
		t.Fatalf("dropped connection: %+v", r)
	}
	msgs = append(msgs, r.ErrMsg)
	// Classic token fetch to a dead host: the URL carries &secret=.
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	k := newEnv(t, func(c *Config) { c.BaseURL = dead.URL; c.Retry.MaxAttempts = 1 })
	r = k.c.Send(ctx, templateSend("oa"))
	if r.Class != ClassTransient || !strings.Contains(r.ErrMsg, "account oa") {
		t.Fatalf("dead token host: %+v", r)
	}
	msgs = append(msgs, r.ErrMsg)
	// Timeouts.
	e.f.hold.Store(true)
	send(subscribe("weapp"))
	send(templateSend("oa"))

	all := strings.Join(msgs, "\n") + e.logs.String() + d.logs.String() + k.logs.String()
	for _, secret := range []string{"ACCESSTOKEN-", secretWeapp, secretOA} {
		if strings.Contains(all, secret) {
			t.Errorf("%q leaked:\n%s", secret, all)
		}
	}
	if e.f.tokenHits() < 2 || !strings.Contains(all, "timeout") {
		t.Fatalf("the test did not exercise tokens and timeouts:\n%s", all)
	}
}

func TestRateLimit(t *testing.T) {
	e := newEnv(t, func(c *Config) {
		c.RateLimits = map[string]float64{"weapp/subscribeMessage.send": 10, "oa/*": 20}
	})
	ctx := context.Background()
	for range 5 {
		if r := e.c.Send(ctx, subscribe("weapp")); !r.OK() {
			t.Fatal(r)
		}
	}
	if s := e.clock.Sleeps(); !equalDurations(s, []time.Duration{100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond, 100 * time.Millisecond}) {
		t.Fatalf("10/s, burst 1: waits %v", s)
	}
	e.c.Send(ctx, templateSend("weapp")) // not limited
	if n := len(e.clock.Sleeps()); n != 4 {
		t.Fatalf("unlimited API waited")
	}
	// oa/* = 20/s, burst 2, shared by every API of oa.
	e.c.Send(ctx, templateSend("oa"))
	e.c.Send(ctx, subscribe("oa"))
	e.c.Send(ctx, templateSend("oa"))
	if s := e.clock.Sleeps()[4:]; !equalDurations(s, []time.Duration{50 * time.Millisecond}) {
		t.Fatalf("20/s account-wide: waits %v", s)
	}
}

func TestRateLimitPastDeadline(t *testing.T) {
	e := newEnv(t, func(c *Config) { c.RateLimits = map[string]float64{"weapp/*": 0.01} })
	ctx := context.Background()
	e.c.Send(ctx, subscribe("weapp"))
	r := e.c.Send(ctx, subscribe("weapp")) // next slot in 100 s > 30 s deadline
	if r.Class != ClassTransient || r.Attempts != 0 || !strings.Contains(r.ErrMsg, "rate limit") {
		t.Fatalf("Send = %+v", r)
	}
}

func TestMetricsRegistration(t *testing.T) {
	e := newEnv(t, nil)
	e.f.answers(-1)
	e.c.Send(context.Background(), subscribe("weapp"))
	for name, want := range map[string]int{
		"wxnotify_wechat_request_duration_seconds": 4,  // one per API, pre-created
		"wxnotify_wechat_responses_total":          5,  // errcode 0 per API, pre-created, + {-1}
		"wxnotify_token_fetches_total":             6,  // 2 accounts x 3 reasons, pre-created
		"wxnotify_wechat_retries_total":            12, // 4 APIs x 3 retried classes, pre-created
		"wxnotify_quota_trips_total":               16, // 2 accounts x 4 APIs x 2 kinds, pre-created
		"wxnotify_quota_paused":                    16, // 2 accounts x 4 APIs x 2 kinds
		"wxnotify_breaker_open":                    2,
	} {
		if got, err := testutil.GatherAndCount(e.reg, name); err != nil || got != want {
			t.Errorf("%s: %d series (err %v), want %d", name, got, err, want)
		}
	}
	if got := testutil.ToFloat64(e.c.m.responses.WithLabelValues("subscribeMessage.send", "-1")); got != 1 {
		t.Errorf("responses_total{-1} = %v", got)
	}
	if problems, err := testutil.GatherAndLint(e.reg); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
	// A second client on the same registry is a registration error, not a panic.
	if _, err := New(e.c.cfg, e.reg, nil); err == nil {
		t.Error("duplicate registration accepted")
	}
}

// A 200 answer whose body is JSON null is not a success: decoded into a struct it looked like an
// absent errcode (found by FuzzSendAnswer, seed "json-null").
func TestNullAnswerIsUnreadable(t *testing.T) {
	e := newEnv(t, nil)
	e.f.setScript(func(int, sendSeen) (int, string) { return http.StatusOK, " null" })
	r := e.c.Send(context.Background(), subscribe("weapp"))
	if r.OK() || r.ErrCode != ErrNoAnswer || r.Class != ClassTransient || !strings.Contains(r.ErrMsg, "unreadable answer: null is not a WeChat answer") {
		t.Fatalf("Send = %+v, want an unreadable answer", r)
	}
}
