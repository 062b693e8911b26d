package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// fakeWX is a small scriptable WeChat: the three token sources and the send APIs of the wxapi
// catalog. Tokens stay valid until revoked (like stable tokens in normal mode).
type fakeWX struct {
	t   *testing.T
	srv *httptest.Server

	secrets   map[string]string // appid -> secret
	expiresIn atomic.Int64
	tokenErr  atomic.Int64 // errcode the token endpoints answer instead of a token

	mu    sync.Mutex
	seq   int
	valid map[string]string // token -> appid
	sends []sendSeen

	stableHits, classicHits, urlHits, sendHits atomic.Int32

	// script answers the n-th send (1-based); nil or status 0 means {"errcode":0,"msgid":n}.
	script atomic.Pointer[func(n int, s sendSeen) (status int, body string)]
	// hold, when set, makes sends block until the client gives up.
	hold atomic.Bool
}

type sendSeen struct {
	Method, Path, Token, ContentType string
	HasToken                         bool
	AppID                            string // owner of the token
	Body                             []byte
}

const (
	secretWeapp = "SECRET-weapp-5f3a9c"
	secretOA    = "SECRET-oa-77b2e1"
)

func newFakeWX(t *testing.T) *fakeWX {
	f := &fakeWX{t: t, secrets: map[string]string{"wxWEAPP": secretWeapp, "wxOA": secretOA}, valid: map[string]string{}}
	f.expiresIn.Store(7200)
	mux := http.NewServeMux()
	mux.HandleFunc("/cgi-bin/stable_token", f.stableToken)
	mux.HandleFunc("/cgi-bin/token", f.classicToken)
	mux.HandleFunc("/token-service", f.urlToken)
	for _, name := range wxapi.Names() {
		api, _ := wxapi.Lookup(name)
		mux.HandleFunc(api.Path, f.send)
	}
	f.srv = httptest.NewServer(mux)
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeWX) setScript(fn func(n int, s sendSeen) (int, string)) { f.script.Store(&fn) }

// answers scripts the sends in order with errcodes; sends past the list succeed.
func (f *fakeWX) answers(codes ...int) {
	f.setScript(func(n int, _ sendSeen) (int, string) {
		if n <= len(codes) {
			return errAnswer(codes[n-1])
		}
		return 0, ""
	})
}

func errAnswer(code int) (int, string) {
	if code >= 100 && code < 600 { // an HTTP status
		return code, "upstream trouble"
	}
	return 200, fmt.Sprintf(`{"errcode":%d,"errmsg":"scripted error %d rid: 65f0-1a2b"}`, code, code)
}

func (f *fakeWX) issue(appid string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.seq++
	tok := fmt.Sprintf("ACCESSTOKEN-%s-%03d-zQ9", appid, f.seq)
	f.valid[tok] = appid
	return tok
}

// revokeAll invalidates every token issued so far (as a force_refresh elsewhere would).
func (f *fakeWX) revokeAll() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.valid = map[string]string{}
}

func (f *fakeWX) tokenAnswer(w http.ResponseWriter, appid, secret string) {
	if code := f.tokenErr.Load(); code != 0 {
		fmt.Fprintf(w, `{"errcode":%d,"errmsg":"scripted token error rid: 1234"}`, code)
		return
	}
	if want, ok := f.secrets[appid]; !ok || want != secret {
		fmt.Fprint(w, `{"errcode":40125,"errmsg":"invalid appsecret rid: 99aa"}`)
		return
	}
	fmt.Fprintf(w, `{"access_token":%q,"expires_in":%d}`, f.issue(appid), f.expiresIn.Load())
}

func (f *fakeWX) stableToken(w http.ResponseWriter, r *http.Request) {
	f.stableHits.Add(1)
	if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		fmt.Fprint(w, `{"errcode":43002,"errmsg":"require POST method"}`)
		return
	}
	var body map[string]any
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		fmt.Fprint(w, `{"errcode":47001,"errmsg":"data format error"}`)
		return
	}
	if _, ok := body["force_refresh"]; ok {
		f.t.Errorf("stable_token called with force_refresh: %v", body)
	}
	if body["grant_type"] != "client_credential" {
		fmt.Fprint(w, `{"errcode":40002,"errmsg":"invalid grant_type"}`)
		return
	}
	appid, _ := body["appid"].(string)
	secret, _ := body["secret"].(string)
	f.tokenAnswer(w, appid, secret)
}

func (f *fakeWX) classicToken(w http.ResponseWriter, r *http.Request) {
	f.classicHits.Add(1)
	q := r.URL.Query()
	if r.Method != http.MethodGet || q.Get("grant_type") != "client_credential" {
		fmt.Fprint(w, `{"errcode":40002,"errmsg":"invalid grant_type"}`)
		return
	}
	f.tokenAnswer(w, q.Get("appid"), q.Get("secret"))
}

// urlToken is a central token service: no credentials needed.
func (f *fakeWX) urlToken(w http.ResponseWriter, r *http.Request) {
	f.urlHits.Add(1)
	appid := r.URL.Query().Get("appid")
	f.tokenAnswer(w, appid, f.secrets[appid])
}

func (f *fakeWX) send(w http.ResponseWriter, r *http.Request) {
	n := int(f.sendHits.Add(1))
	body, _ := io.ReadAll(r.Body)
	q := r.URL.Query()
	s := sendSeen{Method: r.Method, Path: r.URL.Path, Token: q.Get("access_token"), ContentType: r.Header.Get("Content-Type"), Body: body}
	s.HasToken = q.Has("access_token")
	f.mu.Lock()
	s.AppID = f.valid[s.Token]
	f.sends = append(f.sends, s)
	f.mu.Unlock()
	if f.hold.Load() {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
		return
	}
	if s.HasToken && s.AppID == "" {
		fmt.Fprint(w, `{"errcode":40001,"errmsg":"invalid credential, access_token is invalid or not latest rid: 77ee"}`)
		return
	}
	if fn := f.script.Load(); fn != nil {
		if status, ans := (*fn)(n, s); status != 0 {
			w.WriteHeader(status)
			fmt.Fprint(w, ans)
			return
		}
	}
	fmt.Fprintf(w, `{"errcode":0,"errmsg":"ok","msgid":%d}`, 1000+n)
}

func (f *fakeWX) seen() []sendSeen {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sendSeen(nil), f.sends...)
}

func (f *fakeWX) tokenHits() int32 {
	return f.stableHits.Load() + f.classicHits.Load() + f.urlHits.Load()
}

// fakeClock is the injected Now/Sleep: Sleep records the wait and advances the clock at once.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(ctx context.Context, d time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = t
}

func (c *fakeClock) Sleeps() []time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]time.Duration(nil), c.sleeps...)
}

// syncBuffer collects log output from concurrent goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
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

// count returns how many log lines contain every one of subs.
func (s *syncBuffer) count(subs ...string) int {
	n := 0
	for _, line := range strings.Split(s.String(), "\n") {
		ok := line != ""
		for _, sub := range subs {
			ok = ok && strings.Contains(line, sub)
		}
		if ok {
			n++
		}
	}
	return n
}

type env struct {
	f     *fakeWX
	c     *Client
	clock *fakeClock
	reg   *prometheus.Registry
	logs  *syncBuffer
}

// t0 is 2025-03-10 10:00:30 Beijing time.
var t0 = time.Date(2025, 3, 10, 10, 0, 30, 0, wxapi.Beijing)

// newEnv builds a client against a fresh fakeWX with two accounts: weapp (stable) and oa
// (classic), a fake clock, a fresh registry, debug logs captured, and deterministic jitter
// (the full ceiling minus 1ns) unless a test replaces it.
func newEnv(t *testing.T, mod func(*Config)) *env {
	t.Helper()
	f := newFakeWX(t)
	e := &env{f: f, clock: &fakeClock{now: t0}, reg: prometheus.NewRegistry(), logs: &syncBuffer{}}
	cfg := Config{
		BaseURL: f.srv.URL,
		Accounts: map[string]Account{
			"weapp": {AppID: "wxWEAPP", Secret: secretWeapp},
			"oa":    {AppID: "wxOA", Secret: secretOA, TokenSource: SourceClassic},
		},
		Timeout:  2 * time.Second,
		MaxConns: 64,
		Now:      e.clock.Now,
		Sleep:    e.clock.Sleep,
	}
	if mod != nil {
		mod(&cfg)
	}
	log := logrus.New()
	log.Out = e.logs
	log.Level = logrus.DebugLevel
	log.Formatter = &logrus.JSONFormatter{}
	c, err := New(cfg, e.reg, log)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	c.jitter = func(n int64) int64 { return n - 1 }
	t.Cleanup(c.Close)
	e.c = c
	return e
}

func subscribe(account string) Request {
	return Request{Account: account, API: "subscribeMessage.send", ToUser: "oOPENID-subscriber-1", TemplateID: "TPL-A",
		Body: []byte(`{"touser":"oOPENID-subscriber-1","template_id":"TPL-A","data":{"thing1":{"value":"hi"}}}`)}
}

func templateSend(account string) Request {
	return Request{Account: account, API: "template.send", ToUser: "oOPENID-follower-1", TemplateID: "TPL-OA",
		Body: []byte(`{"touser":"oOPENID-follower-1","template_id":"TPL-OA","data":{"k":{"value":"v"}},"client_msg_id":"evt-1"}`)}
}
