package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

const noConsentOpenID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6r" // sample e-000006's user

// The shipped samples through the whole pipeline: the exact bodies WeChat receives (golden),
// one outcome per notification with the pinned fields, and offsets committed to the end.
func TestPipelineSamples(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Faults: []wechatsim.Fault{{
		Kind: wechatsim.FaultErrcode, API: "subscribeMessage.send", OpenIDs: []string{noConsentOpenID}, ErrCode: 43101, ErrMsg: "user refuse to accept the msg",
	}}})
	h.start()
	h.produce("events", h.sampleEvents()...)
	outs := h.outcomes(12, 30*time.Second)

	// Golden request bodies: every body the simulator received, sorted.
	var lines []string
	for _, r := range h.sim.Requests() {
		lines = append(lines, r.API+" "+string(r.Body))
	}
	sort.Strings(lines)
	golden(t, "testdata/sample_requests.golden", []byte(strings.Join(lines, "\n")+"\n"))

	byKey := map[string]processor.Outcome{}
	for _, o := range outs {
		k := o.EventID + "/" + o.Rule
		if _, dup := byKey[k]; dup {
			t.Errorf("duplicate outcome %s", k)
		}
		byKey[k] = o
	}
	want := map[string]struct {
		status, class string
		errcode       int
	}{
		"e-000001/order-paid": {"sent", "ok", 0}, "e-000001/order-paid-subscribe": {"sent", "ok", 0},
		"e-000002/order-paid": {"sent", "ok", 0}, "e-000002/order-paid-subscribe": {"sent", "ok", 0},
		"e-000003/shipment-sent": {"sent", "ok", 0}, "e-000003/shipment-sent-oa": {"sent", "ok", 0},
		"e-000004/order-paid": {"rejected", "", 0}, "e-000004/order-paid-subscribe": {"sent", "ok", 0},
		"e-000005/shipment-sent": {"sent", "ok", 0}, "e-000005/shipment-sent-oa": {"sent", "ok", 0},
		"e-000006/order-paid": {"sent", "ok", 0}, "e-000006/order-paid-subscribe": {"failed", "permanent", 43101},
	}
	for k, w := range want {
		o, ok := byKey[k]
		if !ok {
			t.Errorf("no outcome for %s", k)
			continue
		}
		if o.Status != w.status || o.Class != w.class || o.ErrCode != w.errcode {
			t.Errorf("%s: status/class/errcode = %s/%s/%d, want %s/%s/%d (errmsg %q)", k, o.Status, o.Class, o.ErrCode, w.status, w.class, w.errcode, o.ErrMsg)
		}
		if o.Schema != processor.OutcomeSchema || o.RuleVersion != h.set.Version || o.Source.Topic != "events" || o.Source.Offset < 0 {
			t.Errorf("%s: schema %q rule_version %q source %+v", k, o.Schema, o.RuleVersion, o.Source)
		}
		if _, err := time.Parse(time.RFC3339, o.ProcessedAt); err != nil {
			t.Errorf("%s: processed_at %q: %v", k, o.ProcessedAt, err)
		}
		if o.LatencyMS <= 0 {
			t.Errorf("%s: latency_ms = %v", k, o.LatencyMS)
		}
		switch o.Status {
		case "sent":
			if o.MsgID == 0 || o.Attempts != 1 {
				t.Errorf("%s: msgid %d attempts %d, want a msgid and 1 attempt", k, o.MsgID, o.Attempts)
			}
		case "failed":
			if o.Attempts != 1 || !strings.Contains(o.ErrMsg, "refuse") {
				t.Errorf("%s: attempts %d errmsg %q: a permanent error must not be retried and keeps WeChat's errmsg", k, o.Attempts, o.ErrMsg)
			}
		}
	}
	o := byKey["e-000001/order-paid"]
	if o.Account != "weapp" || o.API != "templateMessage.send" || o.ToUser != "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o" ||
		o.TemplateID != "TPL_ORDER_PAID_v1" || o.EventTime != "2026-11-22T10:00:00.000Z" {
		t.Errorf("e-000001/order-paid fields: %+v", o)
	}
	if u := byKey["e-000003/shipment-sent"]; u.TemplateID != "TPL_SHIPMENT_SENT_v1" {
		t.Errorf("uniform_send template_id = %q, want the mp half's", u.TemplateID)
	}
	if r := byKey["e-000004/order-paid"]; !strings.Contains(r.ErrMsg, "keyword4") || strings.Contains(r.ErrMsg, "<nil>") {
		t.Errorf("rejection errmsg %q should name the field message.data.keyword4.value", r.ErrMsg)
	}

	// Every event finished, so every partition commits to its end.
	waitFor(t, 10*time.Second, "offsets committed to the end", func() bool {
		end, got := h.endOffsets("events"), h.committed()
		for p, e := range end {
			if e > 0 && got[p] != e {
				return false
			}
		}
		return true
	})
	for _, line := range strings.Split(h.logBuf.String(), "\n") {
		if strings.Contains(line, "weapp-secret-xyz") || strings.Contains(line, "access_token=") {
			t.Fatalf("log line leaks a secret or token: %s", line)
		}
	}
}

// While outcomes cannot be written, the sends happen but no offset is committed past them; once
// the broker takes writes again the outcomes land and the commit catches up.
func TestCommitWaitsForOutcomeAcknowledgement(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	h.produce("events", event("e-1", "order.paid", "u1"))
	h.outcomes(2, 20*time.Second)
	waitFor(t, 10*time.Second, "first commit", func() bool { return sum(h.committed()) == 1 })

	fault := h.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: "wxnotify.outcomes", Err: kerr.UnknownServerError, Count: -1})
	var msgs []kafka.Message
	for i := 2; i <= 6; i++ {
		msgs = append(msgs, event(fmt.Sprintf("e-%d", i), "order.paid", fmt.Sprintf("u%d", i)))
	}
	h.produce("events", msgs...)
	waitFor(t, 10*time.Second, "the sends of the new events", func() bool { return len(h.sim.Deliveries()) == 12 })
	time.Sleep(20 * h.cfg.Processor.CommitInterval)
	if got := sum(h.committed()); got != 1 {
		t.Fatalf("committed %d events while their outcomes were unwritten, want 1", got)
	}
	fault.Remove()
	waitFor(t, 20*time.Second, "commit after outcomes are written", func() bool { return sum(h.committed()) == 6 })
	outs := h.outcomes(12, 10*time.Second)
	if len(outs) < 12 {
		t.Fatalf("%d outcomes, want 12", len(outs))
	}
}

// A graceful stop finishes and commits in-flight work; a new process resumes where it left off:
// every event gets its outcomes, none twice.
func TestRestartResumesWithoutLossOrDuplicates(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 5 * time.Millisecond})
	r1 := h.start()
	var batch1, batch2 []kafka.Message
	for i := 0; i < 60; i++ {
		batch1 = append(batch1, event(fmt.Sprintf("e-a%03d", i), "order.paid", fmt.Sprintf("user%d", i%17)))
		batch2 = append(batch2, event(fmt.Sprintf("e-b%03d", i), "order.paid", fmt.Sprintf("user%d", i%13)))
	}
	h.produce("events", batch1...)
	waitFor(t, 20*time.Second, "some sends", func() bool { return len(h.sim.Deliveries()) >= 20 })
	h.stop(r1) // mid-stream
	h.produce("events", batch2...)
	h.start()
	wantOneOutcomeEach(t, h.outcomeCounts(240, 40*time.Second), append(batch1, batch2...))
	if d := len(h.sim.Deliveries()); d != 240 {
		t.Errorf("simulator delivered %d messages, want 240", d)
	}
}

// An event that is not JSON goes to the dead-letter topic with the reason and its coordinates;
// the stream moves on and commits past it.
func TestUndecodableEventGoesToDeadLetter(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	h.produce("events", kafka.Message{Key: []byte("u1"), Value: []byte("{not json"), Headers: []kafka.Header{{Key: "trace", Value: []byte("abc")}}},
		event("e-after", "order.paid", "u1"))
	h.outcomes(2, 20*time.Second)
	dlq := h.readTopic("wxnotify.dlq", 1, 10*time.Second)
	if len(dlq) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dlq))
	}
	m := dlq[0]
	hdr := map[string]string{}
	for _, x := range m.Headers {
		hdr[x.Key] = string(x.Value)
	}
	if string(m.Value) != "{not json" || string(m.Key) != "u1" || hdr["trace"] != "abc" || hdr["wxnotify.reason"] != "undecodable" ||
		hdr["wxnotify.source.topic"] != "events" || hdr["wxnotify.source.offset"] != "0" || hdr["wxnotify.error"] == "" {
		t.Fatalf("dead letter = key %q value %q headers %v", m.Key, m.Value, hdr)
	}
	if _, err := strconv.Atoi(hdr["wxnotify.source.partition"]); err != nil {
		t.Fatalf("partition header %q", hdr["wxnotify.source.partition"])
	}
	waitFor(t, 10*time.Second, "commit past the dead letter", func() bool { return sum(h.committed()) == 2 })
}

// An event whose value is not valid UTF-8 is dead-lettered with reason invalid_utf8, byte for
// byte, and never sent with replacement characters; the stream moves on.
func TestInvalidUTF8IsDeadLetteredNotSent(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	bad := []byte(`{"event_id":"e-bad","type":"order.paid","occurred_at":"2026-11-22T10:00:00Z","order":{"id":"1","amount_fen":1},` +
		`"user":{"openid":"oBad` + "\xc3(" + `"},"shop":{"name":"S","address":"A"}}`)
	h.produce("events", kafka.Message{Key: []byte("oBad"), Value: bad}, event("e-after", "order.paid", "u1"))
	h.outcomes(2, 20*time.Second)
	dlq := h.readTopic("wxnotify.dlq", 1, 10*time.Second)
	if len(dlq) != 1 || !bytes.Equal(dlq[0].Value, bad) {
		t.Fatalf("dead letters %v, want the event byte for byte", dlq)
	}
	hdr := map[string]string{}
	for _, x := range dlq[0].Headers {
		hdr[x.Key] = string(x.Value)
	}
	if hdr["wxnotify.reason"] != "invalid_utf8" || !strings.Contains(hdr["wxnotify.error"], "UTF-8") {
		t.Fatalf("dead letter headers %v", hdr)
	}
	for _, d := range h.sim.Deliveries() {
		if bytes.Contains(d.Body, []byte("oBad")) {
			t.Fatalf("sent: %s", d.Body)
		}
	}
	waitFor(t, 10*time.Second, "commit past the dead letter", func() bool { return sum(h.committed()) == 2 })
}

// A token invalidated while running costs one token fetch and a retry of the sends that met it,
// not a failure. e-2's two sends (two APIs of one account) may run at once, so one or both meet
// the invalidated token.
func TestTokenInvalidatedMidRunIsRefreshedOnce(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	h.produce("events", event("e-1", "order.paid", "u1"))
	h.outcomes(2, 20*time.Second)
	before := h.sim.TokenFetches(testWeappAppID)
	h.sim.InvalidateTokens(testWeappAppID)
	h.produce("events", event("e-2", "order.paid", "u2"))
	outs := h.outcomes(4, 20*time.Second)
	attempts, rejected, apis := 0, 0, map[string]bool{}
	for _, o := range outs {
		if o.EventID != "e-2" {
			continue
		}
		if o.Status != "sent" {
			t.Errorf("%s after token invalidation: %s %d %s", o.Rule, o.Status, o.ErrCode, o.ErrMsg)
		}
		attempts += o.Attempts
		if !apis[o.API] {
			apis[o.API] = true
			rejected += h.sim.Calls(o.API, 40001) // only e-2's sends met the invalidated token
		}
	}
	if rejected < 1 || attempts != 2+rejected {
		t.Errorf("attempts over e-2's two sends = %d after %d answers 40001, want one retry for each (and at least one)", attempts, rejected)
	}
	if got := h.sim.TokenFetches(testWeappAppID) - before; got != 1 {
		t.Errorf("token fetches after invalidation = %d, want 1", got)
	}
}

// /readyz reports the group, the rules version and the tokens; /metrics carries the counters.
func TestOpsEndpoints(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	r := h.start()
	h.produce("events", event("e-1", "order.paid", "u1"))
	h.outcomes(2, 20*time.Second)
	var ready readiness
	waitFor(t, 10*time.Second, "readyz 200", func() bool {
		resp, err := http.Get("http://" + r.ops + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		_ = json.NewDecoder(resp.Body).Decode(&ready)
		return resp.StatusCode == 200
	})
	if !ready.GroupJoined || !ready.TokensReady || ready.RulesVersion != h.set.Version {
		t.Errorf("readyz = %+v", ready)
	}
	resp, err := http.Get("http://" + r.ops + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{
		`wxnotify_notifications_total{api="templateMessage.send",rule="order-paid",status="sent"} 1`,
		`wxnotify_events_consumed_total{topic="events"} 1`,
		`wxnotify_rules_info{version="` + h.set.Version + `"}`,
		`wxnotify_last_commit_timestamp_seconds`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if bytes.Contains(body, []byte("u1")) {
		t.Error("/metrics carries an openid")
	}
}

func sum(m map[int]int64) int64 {
	var s int64
	for _, v := range m {
		if v > 0 {
			s += v
		}
	}
	return s
}

func golden(t *testing.T, path string, got []byte) {
	t.Helper()
	if update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with UPDATE_GOLDEN=1 to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s differs (UPDATE_GOLDEN=1 rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

// A subscribe value WeChat would refuse (thing over 20 characters) is rejected locally, naming
// the field, without spending a call; the other notification of the event is still sent.
func TestOverlongThingRejectedWithoutHTTPCall(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	m := event("e-long", "order.paid", "u-long")
	m.Value = bytes.Replace(m.Value, []byte(`"name":"TIT创意园店"`), []byte(`"name":"广州市海珠区新港中路397号TIT创意园二期旗舰店"`), 1)
	h.produce("events", m)
	outs := h.outcomes(2, 20*time.Second)
	for _, o := range outs {
		switch o.Rule {
		case "order-paid-subscribe":
			if o.Status != "rejected" || !strings.Contains(o.ErrMsg, "message.data.thing3.value") || o.Attempts != 0 {
				t.Errorf("subscribe outcome = %s attempts %d %q, want rejected naming data.thing3.value", o.Status, o.Attempts, o.ErrMsg)
			}
		case "order-paid":
			if o.Status != "sent" {
				t.Errorf("order-paid = %s %q", o.Status, o.ErrMsg)
			}
		}
	}
	for _, r := range h.sim.Requests() {
		if r.API == "subscribeMessage.send" {
			t.Errorf("the simulator received a subscribe call: %s", r.Body)
		}
	}
}

// Readiness asks for tokens only for the accounts the rules use: a configured account no rule
// uses (here with credentials WeChat would refuse) does not hold /readyz at 503.
func TestReadyIgnoresAccountsNoRuleUses(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.cfg.WeChat.Accounts["spare"] = AccountConfig{AppID: "wxunknown", Secret: "nope", TokenSource: "stable"}
	r := h.start()
	waitFor(t, 20*time.Second, "readyz 200", func() bool {
		resp, err := http.Get("http://" + r.ops + "/readyz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if n := h.sim.TokenFetches("wxunknown"); n != 0 {
		t.Errorf("fetched a token %d times for an account no rule uses", n)
	}
}
