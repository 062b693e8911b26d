package wechatsim_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

const (
	appID   = "wx1234567890abcdef"
	secret  = "s3cret-fixture"
	userA   = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o"
	userB   = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6p"
	subPath = "/cgi-bin/message/subscribe/send"
	oaPath  = "/cgi-bin/message/template/send"
	mpPath  = "/cgi-bin/message/wxopen/template/send"
	uniPath = "/cgi-bin/message/wxopen/template/uniform_send"
)

// Bodies shaped like the examples in /work/shared/seeds and docs/wechat-api.md.
const (
	mpTemplateBody = `{"touser":"` + userA + `","template_id":"TEMPLATE_ID","page":"index","form_id":"FORMID",` +
		`"data":{"keyword1":{"value":"339208499"},"keyword2":{"value":"2015年01月05日 12:30"},` +
		`"keyword3":{"value":"腾讯微信总部"},"keyword4":{"value":"广州市海珠区新港中路397号"}},"emphasis_keyword":"keyword1.DATA"}`
	uniformBody = `{"touser":"` + userA + `","weapp_template_msg":{"template_id":"TEMPLATE_ID","page":"page/page/index",` +
		`"form_id":"FORMID","data":{"keyword1":{"value":"339208499"}},"emphasis_keyword":"keyword1.DATA"},` +
		`"mp_template_msg":{"appid":"APPID ","template_id":"MP_TEMPLATE_ID","url":"http://weixin.qq.com/download",` +
		`"miniprogram":{"appid":"xiaochengxuappid12345","pagepath":"index?foo=bar"},` +
		`"data":{"first":{"value":"Purchase succeeded!","color":"#173177"},"keyword1":{"value":"Chocolates","color":"#173177"}}}}`
	subscribeBody = `{"touser":"` + userA + `","template_id":"TPL_SHIPPED","page":"pages/order/detail?id=1",` +
		`"data":{"thing1":{"value":"您的订单已发货"},"character_string2":{"value":"SO20240101-001"},"time3":{"value":"2024-01-01 12:30"}},` +
		`"miniprogram_state":"formal","lang":"zh_CN"}`
	oaTemplateBody = `{"touser":"` + userA + `","template_id":"TPL_OA","url":"https://example.com/o/1",` +
		`"miniprogram":{"appid":"wxmp123","pagepath":"index?foo=bar"},` +
		`"data":{"keyword1":{"value":"巧克力"},"keyword2":{"value":"39.8元"}},"client_msg_id":"evt-1"}`
)

func start(t *testing.T, cfg wechatsim.Config) *wechatsim.Server {
	t.Helper()
	if cfg.Accounts == nil {
		cfg.Accounts = map[string]string{appID: secret}
	}
	s, err := wechatsim.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return s
}

// answer is a decoded WeChat response.
type answer struct {
	Status      int
	ErrCode     int    `json:"errcode"`
	ErrMsg      string `json:"errmsg"`
	MsgID       int64  `json:"msgid"`
	AccessToken string `json:"access_token"`
	ExpiresIn   int    `json:"expires_in"`
	raw         string
}

func do(t *testing.T, method, url, body string) answer {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	a := answer{Status: resp.StatusCode, raw: string(b)}
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") {
		if err := json.Unmarshal(b, &a); err != nil {
			t.Fatalf("decode %q: %v", b, err)
		}
	}
	return a
}

func stableToken(t *testing.T, s *wechatsim.Server) string {
	t.Helper()
	a := do(t, "POST", s.URL()+"/cgi-bin/stable_token",
		`{"grant_type":"client_credential","appid":"`+appID+`","secret":"`+secret+`"}`)
	if a.AccessToken == "" {
		t.Fatalf("no token: %s", a.raw)
	}
	return a.AccessToken
}

func send(t *testing.T, s *wechatsim.Server, path, token, body string) answer {
	t.Helper()
	return do(t, "POST", s.URL()+path+"?access_token="+token, body)
}

// fakeClock is an injectable clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

func compact(t *testing.T, s string) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, []byte(s)); err != nil {
		t.Fatal(err)
	}
	return b.String()
}
