package rules

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden")

func mustParse(t testing.TB, yaml string) *Set {
	t.Helper()
	s, err := Parse(map[string][]byte{"r.yaml": []byte(yaml)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func mustEvent(t testing.TB, js string) Event {
	t.Helper()
	ev, err := DecodeEvent([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

func readEvent(t testing.TB, name string) Event {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return mustEvent(t, string(b))
}

// TestGoldenBodies renders the two example rules against the example events, byte for byte.
func TestGoldenBodies(t *testing.T) {
	s, err := Load("testdata/example.yaml", Options{Accounts: []string{"weapp"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ event, rule, template string }{
		{"order-paid.json", "order-paid", "TPL_ORDER_PAID_v1"},
		{"shipment-sent.json", "shipment-sent", "TPL_SHIPMENT_SENT_v1"},
	} {
		t.Run(c.rule, func(t *testing.T) {
			ev := readEvent(t, c.event)
			ns := s.Evaluate(ev, Meta{EventID: ev.ID()}, nil)
			if len(ns) != 1 || ns[0].Rule.Name != c.rule {
				t.Fatalf("got %d notifications, want exactly %s", len(ns), c.rule)
			}
			n := ns[0]
			if n.Err != nil {
				t.Fatal(n.Err)
			}
			golden := filepath.Join("testdata", c.rule+".golden")
			if *update {
				if err := os.WriteFile(golden, append(bytes.Clone(n.Body), '\n'), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(n.Body, bytes.TrimSuffix(want, []byte("\n"))) {
				t.Errorf("body:\n%s\nwant:\n%s", n.Body, want)
			}
			if n.ToUser != "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" || n.TemplateID != c.template {
				t.Errorf("ToUser %q TemplateID %q", n.ToUser, n.TemplateID)
			}
			// The body is valid JSON and TemplateID agrees with the catalog's reading of it.
			var m map[string]any
			if err := json.Unmarshal(n.Body, &m); err != nil {
				t.Fatalf("body is not JSON: %v", err)
			}
			api, _ := wxapi.Lookup(n.Rule.API)
			if got := api.TemplateID(m); got != n.TemplateID {
				t.Errorf("wxapi.TemplateID = %q, Notification.TemplateID = %q", got, n.TemplateID)
			}
		})
	}
}

func TestMissingFieldRejectsNamingTheField(t *testing.T) {
	s, err := Load("testdata/example.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, event, want string
	}{
		{"nil leaf", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":"o"},"order":{"id":"1","amount_fen":1},"shop":{"name":"s"}}`,
			"message.data.keyword4.value: event.shop.address evaluated to nil"},
		{"null leaf", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":"o"},"order":{"id":"1","amount_fen":1},"shop":{"address":null}}`,
			"message.data.keyword4.value: event.shop.address evaluated to nil"},
		{"missing parent", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":"o"},"order":{"id":"1","amount_fen":1}}`,
			"message.data.keyword4.value: event.shop.address evaluated to nil (cannot fetch address from <nil>)"},
		{"nil inside a concatenation", `{"type":"order.paid","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":"o"},"order":{"id":"1","amount_fen":1},"shop":{"address":"a"}}`,
			"message.form_id: event.event_id evaluated to nil"},
		{"helper given nil", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":"o"},"order":{"id":"1"},"shop":{"address":"a"}}`,
			"message.data.keyword2.value: yuan(event.order.amount_fen) failed: yuan: amount is nil"},
		{"required field empty", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":""},"order":{"id":"1","amount_fen":1},"shop":{"address":"a"}}`,
			`message.touser: event.user.openid evaluated to "" (the field is required)`},
		{"object where a string is wanted", `{"type":"order.paid","event_id":"e","occurred_at":"2026-11-22T10:00:00Z","user":{"openid":{"x":1}},"order":{"id":"1","amount_fen":1},"shop":{"address":"a"}}`,
			`message.touser: event.user.openid evaluated to an object, want a string`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ns := s.Evaluate(mustEvent(t, tt.event), Meta{}, nil)
			if len(ns) != 1 {
				t.Fatalf("got %d notifications", len(ns))
			}
			n := ns[0]
			if n.Err == nil || n.Err.Error() != tt.want {
				t.Errorf("Err = %v, want %s", n.Err, tt.want)
			}
			if n.Body != nil || n.WhenErr {
				t.Errorf("rejected notification has Body %q, WhenErr %v", n.Body, n.WhenErr)
			}
		})
	}
}

func TestNilIsNeverRendered(t *testing.T) {
	s := mustParse(t, `rules:
  - name: r
    when: "true"
    account: oa
    api: template.send
    message:
      touser: "${event.user}"
      template_id: T
      url: "https://x/?a=${event.a}&b=${event.b}"
      data:
        k1: {value: "${default(event.nothing.deeper, '-')}"}
        k2: {value: "${has(event.nothing.deeper) ? 'yes' : 'no'}"}
        k3: {value: "${event.zero}${event.f}${event.t}"}
`)
	for _, js := range []string{
		`{"user":"u","a":null,"b":1}`, `{"user":"u","b":1}`, `{"user":"u","a":"x"}`, `{"a":"x","b":"y","zero":0,"f":1.5,"t":true}`,
	} {
		for _, n := range s.Evaluate(mustEvent(t, js), Meta{}, nil) {
			if n.Err == nil {
				t.Errorf("%s: rendered %s", js, n.Body)
			}
			if bytes.Contains(n.Body, []byte("nil")) || bytes.Contains(n.Body, []byte(`""`)) {
				t.Errorf("%s: body %s", js, n.Body)
			}
		}
	}
	n := s.Evaluate(mustEvent(t, `{"user":"u","a":"x","b":2,"zero":0,"f":1.5,"t":true}`), Meta{EventID: "e1"}, nil)[0]
	want := `{"touser":"u","template_id":"T","url":"https://x/?a=x&b=2","data":{"k1":{"value":"-"},"k2":{"value":"no"},"k3":{"value":"01.5true"}},"client_msg_id":"wxn-`
	if n.Err != nil || !strings.HasPrefix(string(n.Body), want) {
		t.Errorf("body %s, err %v\nwant prefix %s", n.Body, n.Err, want)
	}
}

func TestClientMsgID(t *testing.T) {
	yaml := `rules:
  - name: oa-notice
    when: "true"
    account: oa
    api: template.send
    message: {touser: u, template_id: T, data: {first: {value: hi}}}
  - name: oa-notice-2
    when: "true"
    account: oa
    api: template.send
    message: {touser: u, template_id: T, data: {}}
  - name: own-id
    when: "true"
    account: oa
    api: template.send
    message: {touser: u, template_id: T, data: {}, client_msg_id: "mine-${event.event_id}"}
`
	s := mustParse(t, yaml)
	ev := mustEvent(t, `{"event_id":"e-000001"}`)
	a := s.Evaluate(ev, Meta{EventID: "e-000001"}, nil)
	// Reloading and re-evaluating (a restart) gives the same id.
	b := mustParse(t, yaml).Evaluate(ev, Meta{EventID: "e-000001"}, nil)
	// "wxn-" + hex(sha256("e-000001/oa-notice"))[:24]
	want := `{"touser":"u","template_id":"T","data":{"first":{"value":"hi"}},"client_msg_id":"wxn-921f231992ec360801d27456"}`
	if got := string(a[0].Body); got != want {
		t.Errorf("body %s\nwant %s", got, want)
	}
	if string(a[0].Body) != string(b[0].Body) {
		t.Errorf("not deterministic:\n%s\n%s", a[0].Body, b[0].Body)
	}
	var body0, body1 struct {
		ClientMsgID string `json:"client_msg_id"`
	}
	if err := json.Unmarshal(a[0].Body, &body0); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(a[1].Body, &body1); err != nil {
		t.Fatal(err)
	}
	if body0.ClientMsgID == body1.ClientMsgID {
		t.Error("two rules share a client_msg_id for one event")
	}
	other := s.Evaluate(ev, Meta{EventID: "e-000002"}, nil)
	if bytes.Equal(other[0].Body, a[0].Body) {
		t.Error("two events share a client_msg_id")
	}
	if got := string(a[2].Body); got != `{"touser":"u","template_id":"T","data":{},"client_msg_id":"mine-e-000001"}` {
		t.Errorf("explicit client_msg_id: %s", got)
	}
	// Without an event id, the record's coordinates tell two events apart.
	noID := mustEvent(t, `{}`)
	at1 := s.Evaluate(noID, Meta{Topic: "orders", Partition: 1, Offset: 7}, nil)
	at2 := s.Evaluate(noID, Meta{Topic: "orders", Partition: 1, Offset: 8}, nil)
	if bytes.Equal(at1[0].Body, at2[0].Body) {
		t.Errorf("two events without event_id share a client_msg_id: %s", at1[0].Body)
	}
}

func TestExplain(t *testing.T) {
	s := mustParse(t, `rules:
  - name: paid-big
    when: event.type == "order.paid" && event.order.amount_fen >= 10000
    account: weapp
    api: subscribeMessage.send
    message: {touser: "${event.user.openid}", template_id: T, data: {amount1: {value: "${yuan(event.order.amount_fen)}"}}}
  - name: shipped
    when: event.type == "shipment.sent" and event.shipment.carrier != ""
    account: weapp
    api: subscribeMessage.send
    message: {touser: "${event.user.openid}", template_id: T, data: {thing1: {value: "${event.shipment.carrier}"}}}
  - name: broken
    when: event.order.items[5].qty > 1
    account: weapp
    api: subscribeMessage.send
    message: {touser: x, template_id: T, data: {}}
  - name: paid
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message: {touser: "${event.user.openid}", template_id: T, data: {thing1: {value: "${event.shop.address}"}}}
  - name: orders-topic
    when: kafka.topic == "orders" && event.type == "shipment.sent"
    account: weapp
    api: subscribeMessage.send
    message: {touser: x, template_id: T, data: {}}
`)
	ev := readEvent(t, "order-paid.json")
	xs := s.Explain(ev, Meta{Topic: "orders"})
	want := []struct {
		matched bool
		reason  string
	}{
		{false, "when is false: event.order.amount_fen >= 10000 (event.order.amount_fen = 3980)"},
		{false, `when is false: event.type == "shipment.sent" (event.type = "order.paid")`},
		{false, "when failed: index out of range: 5 (array length is 1)"},
		{true, ""},
		// The reason names the conjunct that is false for this record, not one that reads
		// the record's Kafka coordinates as empty.
		{false, `when is false: event.type == "shipment.sent" (event.type = "order.paid")`},
	}
	if len(xs) != len(want) {
		t.Fatalf("got %d explanations", len(xs))
	}
	for i, w := range want {
		if xs[i].Matched != w.matched || xs[i].Reason != w.reason {
			t.Errorf("%s: matched %v reason %q, want %v %q", xs[i].Rule.Name, xs[i].Matched, xs[i].Reason, w.matched, w.reason)
		}
	}
	if n := xs[3].Notification; n.Err != nil || !strings.Contains(string(n.Body), "新港中路") {
		t.Errorf("matched rule's notification: %+v", n)
	}

	// Evaluate agrees: one match and one when error.
	ns := s.Evaluate(ev, Meta{}, nil)
	if len(ns) != 2 || !ns[0].WhenErr || ns[0].Rule.Name != "broken" || ns[1].Rule.Name != "paid" || ns[1].Err != nil {
		t.Errorf("Evaluate: %+v", ns)
	}
	if got := ns[0].Err.Error(); got != "when: failed: index out of range: 5 (array length is 1)" {
		t.Errorf("when error: %s", got)
	}
}

func TestEscaping(t *testing.T) {
	s := mustParse(t, `rules:
  - name: r
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: "${event.s}"
      template_id: 'a "quoted" <b>&amp; $${literal} \ back'
      page: '${ "}" }${ {"a": "{"}.a }'
      data:
        keyword1: {value: '${event.s + "\n\t" + event.ctl}'}
        thing2: {value: "${event.ls}"}
`)
	ev := mustEvent(t, `{"s":"<王>&\"x\"","ctl":"\u0001","ls":"a\u2028b\u00e9"}`)
	n := s.Evaluate(ev, Meta{}, nil)[0]
	want := `{"touser":"<王>&\"x\"","template_id":"a \"quoted\" <b>&amp; ${literal} \\ back","page":"}{",` +
		`"data":{"keyword1":{"value":"<王>&\"x\"\n\t\u0001"},"thing2":{"value":"a` + "\u2028" + `bé"}}}`
	if n.Err != nil || string(n.Body) != want {
		t.Errorf("body %s (err %v)\nwant %s", n.Body, n.Err, want)
	}
	var m map[string]any
	if err := json.Unmarshal(n.Body, &m); err != nil {
		t.Errorf("invalid JSON: %v", err)
	}
}

func TestTypedValues(t *testing.T) {
	s := mustParse(t, `rules:
  - name: r
    when: "true"
    account: oa
    api: template.send
    message:
      touser: ${event.uid}
      template_id: T
      miniprogram: ${event.mp}
      data: ${event.data}
`)
	n := s.Evaluate(mustEvent(t, `{"uid":12345678901234567,"mp":{"appid":"wx1","pagepath":"p?a=<1>"},"data":{"k":{"value":"v"},"n":{"value":1.5}}}`), Meta{EventID: "e"}, nil)[0]
	want := `{"touser":"12345678901234567","template_id":"T","miniprogram":{"appid":"wx1","pagepath":"p?a=<1>"},"data":{"k":{"value":"v"},"n":{"value":1.5}},"client_msg_id":"wxn-`
	if n.Err != nil || !strings.HasPrefix(string(n.Body), want) {
		t.Errorf("body %s (err %v)\nwant prefix %s", n.Body, n.Err, want)
	}
	n = s.Evaluate(mustEvent(t, `{"uid":"u","mp":"wx1","data":{}}`), Meta{}, nil)[0]
	if n.Err == nil || n.Err.Error() != "message.miniprogram: event.mp evaluated to string, want an object" {
		t.Errorf("Err = %v", n.Err)
	}
}

func TestDecodeEvent(t *testing.T) {
	ev := mustEvent(t, `{"event_id":"e-1","occurred_at":"2026-11-22T10:00:00+08:00","big":123456789012345678901234567890,"id":9007199254740993,"f":1.5,"e":1e3,"n":3980}`)
	m := ev.Fields()
	if m["id"] != 9007199254740993 || m["n"] != 3980 || m["f"] != 1.5 || m["e"] != 1000.0 || m["big"] != json.Number("123456789012345678901234567890") {
		t.Errorf("numbers: %#v", m)
	}
	if ev.ID() != "e-1" {
		t.Errorf("ID = %q", ev.ID())
	}
	if at, ok := ev.OccurredAt(); !ok || !at.Equal(time.Date(2026, 11, 22, 2, 0, 0, 0, time.UTC)) {
		t.Errorf("OccurredAt = %v %v", at, ok)
	}
	for _, bad := range []string{`[1]`, `"x"`, `null`, `{"a":1} {}`, `{`} {
		if _, err := DecodeEvent([]byte(bad)); err == nil {
			t.Errorf("DecodeEvent(%s) succeeded", bad)
		}
	}
	if ev := mustEvent(t, `{"event_id":7}`); ev.ID() != "" {
		t.Errorf("non-string id: %q", ev.ID())
	}
	if _, ok := mustEvent(t, `{"occurred_at":"yesterday"}`).OccurredAt(); ok {
		t.Error("bad occurred_at parsed")
	}
}

func TestKafkaEnv(t *testing.T) {
	s := mustParse(t, `rules:
  - name: r
    when: kafka.topic == "orders"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${kafka.key}
      template_id: T
      data: {thing1: {value: "${kafka.topic}/${kafka.partition}/${kafka.offset} ${timefmt(kafka.time, '15:04')}"}}
`)
	meta := Meta{Topic: "orders", Partition: 3, Offset: 42, Key: []byte("o1"), Time: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	ns := s.Evaluate(mustEvent(t, `{}`), meta, nil)
	if len(ns) != 1 || string(ns[0].Body) != `{"touser":"o1","template_id":"T","data":{"thing1":{"value":"orders/3/42 08:00"}}}` {
		t.Errorf("%+v", ns)
	}
}

func TestEvaluateConcurrently(t *testing.T) {
	s, err := Load("testdata/example.yaml", Options{})
	if err != nil {
		t.Fatal(err)
	}
	paid, sent := readEvent(t, "order-paid.json"), readEvent(t, "shipment-sent.json")
	want := map[string]string{}
	for _, ev := range []Event{paid, sent} {
		n := s.Evaluate(ev, Meta{EventID: ev.ID()}, nil)[0]
		want[ev.ID()] = string(n.Body)
	}
	done := make(chan error)
	for g := range 4 {
		go func() {
			var dst []Notification
			for i := range 200 {
				ev := paid
				if (g+i)%2 == 1 {
					ev = sent
				}
				dst = s.Evaluate(ev, Meta{EventID: ev.ID()}, dst[:0])
				if len(dst) != 1 || string(dst[0].Body) != want[ev.ID()] {
					done <- fmt.Errorf("goroutine %d: %+v", g, dst)
					return
				}
			}
			done <- nil
		}()
	}
	for range 4 {
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
}

// Values of typed keywords are checked the way WeChat checks them (47003) before any HTTP call,
// counted in runes; free text may be truncated instead when the rule says so.
func TestKeywordValueRules(t *testing.T) {
	const rule = `rules:
  - name: r
    when: "true"
    account: weapp
    api: %s
    truncate: %v
    message:
      touser: o1
      template_id: T
      data:
        %s: {value: "${event.v}"}
`
	long := "广州市海珠区新港中路397号TIT创意园二期" // 22 runes, 46 bytes
	for _, tc := range []struct {
		name, api, kw, value string
		truncate             bool
		want, err            string
	}{
		{"thing within 20 runes", "subscribeMessage.send", "thing3", "广州市海珠区新港中路397号", false, "广州市海珠区新港中路397号", ""},
		{"thing over 20 runes rejected", "subscribeMessage.send", "thing3", long, false, "", `(22 characters) is not a valid thing value: at most 20 characters`},
		{"thing over 20 runes truncated on opt-in", "subscribeMessage.send", "thing3", long, true, "广州市海珠区新港中路397号TIT创意…", ""},
		{"thing with newline rejected", "subscribeMessage.send", "thing1", "a\nb", false, "", "is not a valid thing value"},
		{"character_string with Chinese", "subscribeMessage.send", "character_string2", "SF单号1", false, "", "is not a valid character_string value"},
		{"character_string not truncated", "subscribeMessage.send", "character_string2", "SF单号1", true, "", "is not a valid character_string value"},
		{"amount", "subscribeMessage.send", "amount4", "¥39.80", false, "¥39.80", ""},
		{"bad time", "subscribeMessage.send", "time5", "18h00", false, "", "is not a valid time value"},
		{"phrase", "subscribeMessage.send", "phrase6", "已发货", false, "已发货", ""},
		{"OA category keyword checked", "template.send", "thing2", long, false, "", "is not a valid thing value"},
		{"untyped OA keyword not checked", "template.send", "keyword1", long + long, false, long + long, ""},
		{"untyped OA keyword truncated visibly on opt-in", "template.send", "keyword1", long, true, "广州市海珠区新港中路397号TIT创意…", ""},
		{"short OA keyword untouched on opt-in", "template.send", "remark", "点击查看", true, "点击查看", ""},
		{"untyped subscribe keyword not truncated", "subscribeMessage.send", "keyword1", long, true, long, ""},
		{"legacy API not checked", "templateMessage.send", "thing1", long, false, long, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := fmt.Sprintf(rule, tc.api, tc.truncate, tc.kw)
			if tc.api == "templateMessage.send" {
				text = strings.Replace(text, "template_id: T", "template_id: T\n      form_id: F", 1)
			}
			s := mustParse(t, text)
			ev := NewEvent(map[string]any{"v": tc.value})
			n := s.Evaluate(ev, Meta{EventID: "e"}, nil)[0]
			if tc.err != "" {
				if n.Err == nil || !strings.Contains(n.Err.Error(), tc.err) || !strings.Contains(n.Err.Error(), "message.data."+tc.kw+".value") {
					t.Fatalf("err = %v, want it to name the field and contain %q", n.Err, tc.err)
				}
				return
			}
			if n.Err != nil {
				t.Fatalf("rejected: %v", n.Err)
			}
			var body struct {
				Data map[string]struct{ Value string } `json:"data"`
			}
			if err := json.Unmarshal(n.Body, &body); err != nil {
				t.Fatal(err)
			}
			if got := body.Data[tc.kw].Value; got != tc.want {
				t.Fatalf("value = %q, want %q", got, tc.want)
			}
		})
	}
}

// A static value that breaks its type's rules is a load problem, not a run-time surprise.
func TestStaticKeywordValueCheckedAtLoad(t *testing.T) {
	_, err := Parse(map[string][]byte{"r.yaml": []byte(`rules:
  - name: r
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: o1
      template_id: T
      data:
        phrase1: {value: "not a phrase"}
`)}, Options{})
	if err == nil || !strings.Contains(err.Error(), `r.yaml:10:`) || !strings.Contains(err.Error(), `message.data.phrase1.value: "not a phrase" (12 characters) is not a valid phrase value`) {
		t.Fatalf("err = %v", err)
	}
}
