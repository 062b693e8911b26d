package wechatsim_test

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func TestSendAPIsAcceptValidBodies(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	tests := []struct {
		api, path, body, template string
	}{
		{"templateMessage.send", mpPath, mpTemplateBody, "TEMPLATE_ID"},
		{"uniformMessage.send", uniPath, uniformBody, "TEMPLATE_ID"}, // the weapp half wins
		{"subscribeMessage.send", subPath, subscribeBody, "TPL_SHIPPED"},
		{"template.send", oaPath, oaTemplateBody, "TPL_OA"},
	}
	for _, tt := range tests {
		t.Run(tt.api, func(t *testing.T) {
			s.Reset()
			got := send(t, s, tt.path, tok, tt.body)
			if got.Status != 200 || got.ErrCode != 0 || got.ErrMsg != "ok" || got.MsgID <= 1<<53 {
				t.Fatalf("answer %s", got.raw)
			}
			ds := s.Deliveries()
			if len(ds) != 1 {
				t.Fatalf("%d deliveries, want 1", len(ds))
			}
			d := ds[0]
			if d.API != tt.api || d.AppID != appID || d.ToUser != userA || d.TemplateID != tt.template ||
				d.MsgID != got.MsgID || string(d.Body) != tt.body {
				t.Fatalf("delivery %+v", d)
			}
			rs := s.Requests()
			if len(rs) != 1 || string(rs[0].Body) != tt.body || rs[0].ErrCode != 0 || rs[0].AppID != appID {
				t.Fatalf("requests %+v", rs)
			}
		})
	}
}

func TestSendValidation(t *testing.T) {
	s := start(t, wechatsim.Config{
		Templates: map[string]wechatsim.Template{
			"TPL_SHIPPED": {Keywords: map[string]string{"thing1": "thing", "character_string2": "character_string", "time3": "time"}},
			"TPL_OA":      {},
		},
		OpenIDs: []string{userA, userB},
	})
	tok := stableToken(t, s)
	replace := func(body, old, new string) string {
		if !strings.Contains(body, old) {
			t.Fatalf("fixture lacks %q", old)
		}
		return strings.Replace(body, old, new, 1)
	}
	tests := []struct {
		name    string
		path    string
		body    string
		code    int
		errmsg  string // prefix of errmsg before " rid: "
		touched bool
	}{
		{"not JSON", subPath, `{"touser":`, 47001, "data format error", false},
		{"empty body", subPath, ``, 44002, "empty post data", false},
		{"array body", subPath, `[1,2]`, 47001, "data format error", false},
		{"missing touser", subPath, replace(subscribeBody, `"touser":"`+userA+`",`, ""), 47001, "data format error hint: [touser missing]", false},
		{"missing data", oaPath, `{"touser":"` + userA + `","template_id":"TPL_OA"}`, 47001, "data format error hint: [data missing]", false},
		{"touser wrong type", subPath, replace(subscribeBody, `"touser":"`+userA+`"`, `"touser":12`), 47001, "data format error hint: [touser must be string]", false},
		{"data value wrong type", oaPath, replace(oaTemplateBody, `"value":"巧克力"`, `"value":3`), 47001, "data format error hint: [data.keyword1.value must be string]", false},
		{"unknown field", subPath, replace(subscribeBody, `"page"`, `"pagee"`), 47001, "data format error hint: [pagee unexpected]", false},
		{"nested missing", oaPath, replace(oaTemplateBody, `"appid":"wxmp123",`, ""), 47001, "data format error hint: [miniprogram.appid missing]", false},
		{"uniform without template", uniPath, `{"touser":"` + userA + `"}`, 47001, "data format error hint: [weapp_template_msg.template_id or mp_template_msg.template_id missing]", false},
		{"bad lang enum", subPath, replace(subscribeBody, `"zh_CN"`, `"fr_FR"`), 47003, "argument invalid! lang invalid", false},
		{"escaped Chinese", oaPath, replace(oaTemplateBody, `巧克力`, `\u5de7\u514b\u529b`), 47002, "data format error, do NOT use json unicode encode", false},
		{"escaped <", oaPath, replace(oaTemplateBody, `巧克力`, `\u003cb\u003e`), 47002, "data format error, do NOT use json unicode encode", false},
		{"escaped backslash then u is fine", oaPath, replace(oaTemplateBody, `巧克力`, `a\\u5de7`), 0, "ok", true},
		{"escaped ASCII is fine", oaPath, replace(oaTemplateBody, `巧克力`, `\u0041`), 0, "ok", true},
		{"unknown template", oaPath, replace(oaTemplateBody, `TPL_OA`, `TPL_NOPE`), 40037, "invalid template_id", false},
		{"touser not allowed", oaPath, replace(oaTemplateBody, userA, "oSomeoneElse"), 40003, "invalid openid", false},
		{"touser with space", oaPath, replace(oaTemplateBody, userA, "o user"), 40003, "invalid openid", false},
		{"touser empty", oaPath, replace(oaTemplateBody, `"touser":"`+userA+`"`, `"touser":""`), 40003, "invalid openid", false},
		{"touser too long", oaPath, replace(oaTemplateBody, userA, strings.Repeat("o", 65)), 40003, "invalid openid", false},
		{"thing over 20 runes", subPath, replace(subscribeBody, "您的订单已发货", strings.Repeat("货", 21)), 47003, "argument invalid! data.thing1.value invalid", false},
		{"thing exactly 20 runes", subPath, replace(subscribeBody, "您的订单已发货", strings.Repeat("货", 20)), 0, "ok", true},
		{"character_string with Chinese", subPath, replace(subscribeBody, "SO20240101-001", "订单SO1"), 47003, "argument invalid! data.character_string2.value invalid", false},
		{"bad time", subPath, replace(subscribeBody, "2024-01-01 12:30", "25:61"), 47003, "argument invalid! data.time3.value invalid", false},
		{"newline in thing", subPath, replace(subscribeBody, "您的订单已发货", `已发货\n`), 47003, "argument invalid! data.thing1.value invalid", false},
		{"declared keyword missing", subPath, replace(subscribeBody, `"thing1":{"value":"您的订单已发货"},`, ""), 47003, "argument invalid! data.thing1.value invalid", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s.Reset()
			got := send(t, s, tt.path, tok, tt.body)
			msg, _, hasRID := strings.Cut(got.ErrMsg, " rid: ")
			if got.ErrCode != tt.code || !strings.HasPrefix(msg, tt.errmsg) || hasRID == (tt.code == 0) {
				t.Fatalf("got %s, want %d %q", got.raw, tt.code, tt.errmsg)
			}
			if n := len(s.Deliveries()); (n == 1) != tt.touched {
				t.Fatalf("%d deliveries", n)
			}
			if rs := s.Requests(); len(rs) != 1 || rs[0].ErrCode != tt.code || string(rs[0].Body) != tt.body {
				t.Fatalf("requests %+v", rs)
			}
		})
	}
}

func TestSubscribeValueRulesByInferredType(t *testing.T) {
	s := start(t, wechatsim.Config{}) // no templates: types come from keyword names
	tok := stableToken(t, s)
	tests := []struct {
		keyword, value string
		ok             bool
	}{
		{"thing1", "您的快递已到达小区门口的丰巢柜请及时取件", true}, // 20 runes, 60 bytes
		{"thing1", "您的快递已到达小区门口的丰巢柜请及时取件哦", false},
		{"phrase2", "已发货", true},
		{"phrase2", "shipped", false},
		{"phrase2", "已经发货了吗", false},
		{"date3", "2019年10月1日 15:01", true},
		{"date3", "2019-13-01", false},
		{"time4", "15:01~16:30", true},
		{"time4", "soon", false},
		{"amount5", "¥100.50", true},
		{"amount5", "一百元", false},
		{"number6", "3.14", true},
		{"number6", "3,14", false},
		{"car_number7", "粤A8Z888挂", true},
		{"name8", "张三", true},
		{"name8", "张三1", false},
		{"phone_number9", "+86-13800138000", true},
		{"letter10", "abc1", false},
		{"symbol11", "%", true},
		{"custom12", "anything\n goes", true}, // unknown prefix: no rule
	}
	for _, tt := range tests {
		t.Run(tt.keyword+"="+tt.value, func(t *testing.T) {
			body := `{"touser":"` + userA + `","template_id":"T","data":{"` + tt.keyword + `":{"value":"` +
				strings.ReplaceAll(tt.value, "\n", `\n`) + `"}}}`
			got := send(t, s, subPath, tok, body)
			want := 0
			if !tt.ok {
				want = 47003
			}
			if got.ErrCode != want {
				t.Fatalf("got %s, want %d", got.raw, want)
			}
			if !tt.ok && !strings.HasPrefix(got.ErrMsg, "argument invalid! data."+tt.keyword+".value invalid rid: ") {
				t.Fatalf("errmsg %q", got.ErrMsg)
			}
		})
	}
}

func TestClientMsgIDDedup(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{Now: clk.Now})
	tok := stableToken(t, s)
	first := send(t, s, oaPath, tok, oaTemplateBody)
	again := send(t, s, oaPath, tok, oaTemplateBody)
	if first.ErrCode != 0 || again.ErrCode != 0 || again.MsgID != first.MsgID {
		t.Fatalf("duplicate answered %s after %s; want same msgid", again.raw, first.raw)
	}
	other := send(t, s, oaPath, tok, strings.Replace(oaTemplateBody, userA, userB, 1))
	if other.MsgID == first.MsgID {
		t.Fatal("another openid with the same client_msg_id was deduplicated")
	}
	if n := len(s.Deliveries()); n != 2 {
		t.Fatalf("%d deliveries within the window, want 2", n)
	}
	if rs := s.Requests(); len(rs) != 3 || !rs[1].Duplicate || rs[0].Duplicate {
		t.Fatalf("requests %+v", rs)
	}
	clk.Add(10 * time.Minute)
	late := send(t, s, oaPath, tok, oaTemplateBody)
	if late.ErrCode != 0 || late.MsgID == first.MsgID || len(s.Deliveries()) != 3 {
		t.Fatalf("after the window: %s, %d deliveries", late.raw, len(s.Deliveries()))
	}
	sum := s.Summary()
	if sum.Total != 3 || sum.PerAPI["template.send"].Duplicates != 1 || sum.PerAPI["template.send"].Deduplicated != 1 ||
		len(sum.Duplicates) != 1 || sum.Duplicates[0].Key != "evt-1" || sum.Duplicates[0].Count != 2 {
		t.Fatalf("summary %+v", sum)
	}
}

func TestConcurrentSameUserSubscribeAnswers43108(t *testing.T) {
	s := start(t, wechatsim.Config{Latency: 200 * time.Millisecond})
	tok := stableToken(t, s)
	var wg sync.WaitGroup
	codes := make([]int, 2)
	for i := range codes {
		wg.Go(func() {
			if i == 1 {
				time.Sleep(50 * time.Millisecond) // arrive while the first is in flight
			}
			codes[i] = send(t, s, subPath, tok, subscribeBody).ErrCode
		})
	}
	wg.Wait()
	if codes[0] != 0 || codes[1] != 43108 {
		t.Fatalf("codes %v, want [0 43108]", codes)
	}
	if got := s.Calls("subscribeMessage.send", 43108); got != 1 {
		t.Fatalf("Calls(43108) = %d", got)
	}
	// Serial calls to the same user and concurrent calls to different users are fine.
	s.Reset()
	wg = sync.WaitGroup{}
	for _, u := range []string{userA, userB} {
		wg.Go(func() {
			if got := send(t, s, subPath, tok, strings.Replace(subscribeBody, userA, u, 1)); got.ErrCode != 0 {
				t.Errorf("%s: %s", u, got.raw)
			}
		})
	}
	wg.Wait()
	if s.Calls("", 43108) != 0 || len(s.Deliveries()) != 2 {
		t.Fatalf("different users: 43108=%d deliveries=%d", s.Calls("", 43108), len(s.Deliveries()))
	}
}

func TestRetiredAPIs(t *testing.T) {
	s := start(t, wechatsim.Config{RetiredAPIs: true})
	tok := stableToken(t, s)
	for _, tt := range []struct {
		path, body string
		want       int
	}{{mpPath, mpTemplateBody, 45103}, {uniPath, uniformBody, 45109}, {subPath, subscribeBody, 0}, {oaPath, oaTemplateBody, 0}} {
		if got := send(t, s, tt.path, tok, tt.body); got.ErrCode != tt.want {
			t.Errorf("%s: %s, want %d", tt.path, got.raw, tt.want)
		}
	}
}

func TestSendMustBePOST(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	if got := do(t, "GET", s.URL()+subPath+"?access_token="+tok, ""); got.ErrCode != 43002 {
		t.Fatalf("GET send: %s", got.raw)
	}
}

func TestQuotasFollowTheClock(t *testing.T) {
	// 23:59:00 in China (UTC+8) is 15:59:00 UTC.
	clk := &fakeClock{now: time.Date(2024, 5, 1, 15, 59, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{
		Now:        clk.Now,
		TokenTTL:   48 * time.Hour,
		Quota:      wechatsim.Quota{PerMinute: 2},
		QuotaByAPI: map[string]wechatsim.Quota{"template.send": {Daily: 3, PerMinute: 2}},
	})
	tok := stableToken(t, s)
	oa := func(i int) int {
		return send(t, s, oaPath, tok, strings.Replace(oaTemplateBody, "evt-1", "evt-"+string(rune('a'+i)), 1)).ErrCode
	}
	seq := []struct {
		advance time.Duration
		sub, oa int
	}{
		{0, 0, 0},
		{0, 0, 0},
		{0, 45011, 45011}, // third call in the minute
		{30 * time.Second, 45011, 45011},
		{30 * time.Second, 0, 0}, // 00:00:00 CST: new minute and new day
		{0, 0, 0},                // template.send: day count restarted
		{0, 45011, 45011},        //
		{time.Minute, 0, 0},      // third call of the new day
		{time.Minute, 0, 45009},  // fourth: daily quota
		{24 * time.Hour, 0, 0},   // next day
	}
	for i, step := range seq {
		clk.Add(step.advance)
		sub := send(t, s, subPath, tok, subscribeBody).ErrCode
		got := oa(i)
		if sub != step.sub || got != step.oa {
			t.Fatalf("step %d at %s: subscribe %d template %d, want %d %d", i, clk.Now(), sub, got, step.sub, step.oa)
		}
	}
}
