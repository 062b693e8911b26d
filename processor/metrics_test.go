package processor

import (
	"fmt"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// series returns every series of the registry whose name starts with wxnotify_, as
// `name{label="value",...} value`, labels sorted.
func series(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, f := range families {
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			sort.Strings(labels)
			v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
			out[f.GetName()+"{"+strings.Join(labels, ",")+"}"] = v
		}
	}
	return out
}

func parseRules(t *testing.T, src string) *rules.Set {
	t.Helper()
	set, err := rules.Parse(map[string][]byte{"r.yaml": []byte(src)}, rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// Alerts rate over counters, and a counter with labels appears only at its first increment:
// the series whose label values are known at start (topics, reasons, controls, the rules, their
// APIs and accounts, statuses, classes) exist at 0 before the first event, and a reload's new
// rules get theirs when the set is installed.
func TestSeriesExistAtZeroBeforeTheFirstEvent(t *testing.T) {
	set := parseRules(t, strings.Replace(twoAPIRules, "EXTRA\n", "", 1))
	reg := prometheus.NewRegistry()
	log := logrus.New()
	log.SetLevel(logrus.PanicLevel)
	cfg := Config{GroupID: "g", Topics: []string{"events"}, OutcomesTopic: "out", DeadLetterTopic: "dlq", DelayTopic: "delayed"}
	p, err := New(cfg, staticRules{set}, &fakeSender{}, &fakePublisher{}, nil, reg, log)
	if err != nil {
		t.Fatal(err)
	}
	got := series(t, reg)
	want := []string{
		`wxnotify_events_consumed_total{topic="events"}`,
		`wxnotify_events_consumed_total{topic="delayed"}`,
		`wxnotify_events_dead_lettered_total{reason="undecodable"}`,
		`wxnotify_events_dead_lettered_total{reason="invalid_utf8"}`,
		`wxnotify_control_keys_evicted_total{control="dedupe"}`,
		`wxnotify_control_keys_evicted_total{control="throttle"}`,
		`wxnotify_rule_when_errors_total{rule="sub"}`,
		`wxnotify_rule_when_errors_total{rule="oa"}`,
		`wxnotify_notifications_delayed_total{api="subscribeMessage.send",rule="sub"}`,
		`wxnotify_notifications_delayed_total{api="template.send",rule="oa"}`,
		`wxnotify_wechat_held{account="weapp",api="subscribeMessage.send"}`,
		`wxnotify_wechat_held{account="mp",api="template.send"}`,
		`wxnotify_outcomes_total{api="template.send",class="ok",status="sent"}`,
		`wxnotify_outcomes_total{api="uniformMessage.send",class="permanent",status="failed"}`,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="none",status="rejected"}`,
	}
	for _, rule := range []string{`api="subscribeMessage.send",rule="sub"`, `api="template.send",rule="oa"`} {
		for _, st := range allStatuses {
			want = append(want, fmt.Sprintf(`wxnotify_notifications_total{%s,status=%q}`, rule, st))
		}
	}
	for _, s := range want {
		if v, ok := got[s]; !ok || v != 0 {
			t.Errorf("%s: present %v, value %v; want present at 0", s, ok, v)
		}
	}
	if n := len(got); n > 100 {
		t.Errorf("%d series for 2 rules before any event: the pre-created products should stay small", n)
	}
	if problems, err := testutil.GatherAndLint(reg); err != nil || len(problems) != 0 {
		t.Errorf("lint: %v %v", problems, err)
	}

	// A reload brings a rule in: its series exist once the set is installed.
	p.RulesChanged(parseRules(t, strings.Replace(twoAPIRules, "EXTRA\n", "", 1)+`  - name: shipped
    when: event.type == "shipment.sent"
    account: mp
    api: uniformMessage.send
    message:
      touser: ${event.user.openid}
      mp_template_msg:
        appid: wxmp
        template_id: T
        url: https://example.com
        miniprogram: {appid: wxapp, pagepath: index}
        data: {first: {value: x}}
`))
	got = series(t, reg)
	for _, s := range []string{
		`wxnotify_notifications_total{api="uniformMessage.send",rule="shipped",status="sent"}`,
		`wxnotify_rule_when_errors_total{rule="shipped"}`,
		`wxnotify_wechat_held{account="mp",api="uniformMessage.send"}`,
	} {
		if v, ok := got[s]; !ok || v != 0 {
			t.Errorf("after the reload, %s: present %v, value %v; want present at 0", s, ok, v)
		}
	}
}

// Each outcome is counted by rule (wxnotify_notifications_total) and by class
// (wxnotify_outcomes_total): a sent notification with class ok, a failed one with its answer's
// class, a rejected one (no call made) with class none.
func TestOutcomesAreCountedByStatusAndClass(t *testing.T) {
	w := newWorld(t, "", nil)
	w.send.fail = func(r wechat.Request) bool { return r.ToUser == "refuses" }
	w.event("e1", "u1", time.Time{})
	w.event("e2", "refuses", time.Time{})
	w.p.budget <- struct{}{}
	w.p.handle(w.pt, &kafkaio.Message{Offset: w.offset, Value: []byte(`{"event_id":"e3","type":"order.paid","order":{"id":"o"}}`)}) // no user: rejected
	w.outcomes(3)
	got := series(t, w.reg)
	for s, v := range map[string]float64{
		`wxnotify_notifications_total{api="subscribeMessage.send",rule="r",status="sent"}`:       1,
		`wxnotify_notifications_total{api="subscribeMessage.send",rule="r",status="failed"}`:     1,
		`wxnotify_notifications_total{api="subscribeMessage.send",rule="r",status="rejected"}`:   1,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="ok",status="sent"}`:          1,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="permanent",status="failed"}`: 1,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="none",status="rejected"}`:    1,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="transient",status="failed"}`: 0,
		`wxnotify_events_consumed_total{topic="events"}`:                                         3,
	} {
		if gv, ok := got[s]; !ok || gv != v {
			t.Errorf("%s: present %v, value %v; want %v", s, ok, gv, v)
		}
	}
	if _, ok := got[`wxnotify_outcomes_total{api="subscribeMessage.send",class="",status="rejected"}`]; ok {
		t.Error("an outcome counted with an empty class")
	}
}
