package processor

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

// TestOutcomeJSON holds Outcome.appendJSON to json.Marshal, byte for byte: the outcome schema is
// pinned and analytics parse it.
func TestOutcomeJSON(t *testing.T) {
	odd := []string{
		"", "plain", "王伟 广州市海珠区", "a\"b\\c/d", "<script>&amp;</script>", "\b\f\n\r\t", "\x00\x01\x1f\x7f",
		"\u2028 line \u2029 para", "\xff invalid \xc3", "\xed\xa0\x80 surrogate", "emoji 😀", "\ufffd", "e-000001",
		"2026-11-22T10:00:00.000Z", "sent", "templateMessage.send", "errmsg: invalid openid rid: 6b041ad6",
	}
	floats := []float64{0, math.Copysign(0, -1), 0.001, 1.5, 12.345, 999999.999, 1e-7, 1.2e-9, 5e-324, 1e20, 1e21,
		1.7976931348623157e308, -3.25, -1e-7, 123456.789}
	rng := rand.New(rand.NewPCG(3, 4))
	str := func() string {
		if rng.IntN(3) == 0 {
			return odd[rng.IntN(len(odd))] + odd[rng.IntN(len(odd))]
		}
		return odd[rng.IntN(len(odd))]
	}
	num := func() int64 {
		switch rng.IntN(4) {
		case 0:
			return 0
		case 1:
			return rng.Int64()
		case 2:
			return -rng.Int64N(100000)
		}
		return rng.Int64N(100)
	}
	bodies := []json.RawMessage{nil, {}, json.RawMessage(`{"touser":"o1", "data": {"k":"<b>&</b>"}}`), json.RawMessage("[1,\n 2]")}
	for i := range 5000 {
		o := Outcome{
			Schema: OutcomeSchema, EventID: str(), Rule: str(), RuleVersion: str(), Account: str(), API: str(),
			ToUser: str(), TemplateID: str(), Status: str(), ErrCode: int(num()), ErrMsg: str(), MsgID: num(),
			Attempts: int(num()), Class: str(), Source: Source{Topic: str(), Partition: int(num()), Offset: num()},
			EventTime: str(), ProcessedAt: formatTime(time.Unix(rng.Int64N(4e9), rng.Int64N(1e9))),
			LatencyMS: floats[rng.IntN(len(floats))], DelayedUntil: str(),
		}
		if rng.IntN(2) == 0 {
			o.LatencyMS = latencyMS(time.Duration(rng.Int64N(int64(time.Hour))))
		}
		if i%10 == 0 {
			o.Body = bodies[rng.IntN(len(bodies))]
		}
		want, wantErr := json.Marshal(&o)
		got, err := o.appendJSON(nil)
		if (err == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("outcome %+v:\nappendJSON  %s (%v)\njson.Marshal %s (%v)", o, got, err, want, wantErr)
		}
	}
	for _, f := range []float64{math.NaN(), math.Inf(1)} {
		if _, err := (&Outcome{LatencyMS: f}).appendJSON(nil); err == nil {
			t.Errorf("latency %v encoded", f)
		}
	}
}

func BenchmarkOutcomeJSON(b *testing.B) {
	o := Outcome{Schema: OutcomeSchema, EventID: "e-000001", Rule: "order-paid", RuleVersion: "3f2a9c1e4b7d",
		Account: "weapp", API: "templateMessage.send", ToUser: "oUpF8uMuAJO_M2pxb1Q9zNjWeS6o", TemplateID: "TPL_ORDER_PAID_v1",
		Status: StatusSent, MsgID: 2819318468279902210, Attempts: 1, Source: Source{Topic: "events", Partition: 3, Offset: 123456},
		EventTime: "2026-11-22T10:00:00.000Z", ProcessedAt: "2026-11-22T10:00:00.123Z", LatencyMS: 0.734}
	b.Run("appendJSON", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := o.appendJSON(make([]byte, 0, o.encodedLen())); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(&o); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// FuzzOutcomeJSON holds appendJSON to json.Marshal, byte for byte, for any field values: strings
// with any bytes, any integers, any float64 (NaN and ±Inf are errors in both, with the same
// text), any body. What encodes also round-trips through json.Unmarshal (outcomeRoundTrips).
// Seeds: testdata/fuzz/FuzzOutcomeJSON (outcomes as the processor writes them, and edges).
func FuzzOutcomeJSON(f *testing.F) {
	f.Fuzz(func(t *testing.T, schema, eventID, rule, ruleVersion, account, api, toUser, templateID, status, errMsg, class,
		topic, eventTime, processedAt, delayedUntil string, errCode, msgID, attempts, partition, offset int64,
		latency float64, body []byte) {
		o := Outcome{
			Schema: schema, EventID: eventID, Rule: rule, RuleVersion: ruleVersion, Account: account, API: api,
			ToUser: toUser, TemplateID: templateID, Status: status, ErrCode: int(errCode), ErrMsg: errMsg, MsgID: msgID,
			Attempts: int(attempts), Class: class, Source: Source{Topic: topic, Partition: int(partition), Offset: offset},
			EventTime: eventTime, ProcessedAt: processedAt, LatencyMS: latency, Body: body, DelayedUntil: delayedUntil,
		}
		want, wantErr := json.Marshal(&o)
		prefix := []byte("prefix")
		got, err := o.appendJSON(prefix)
		if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("outcome %+v: appendJSON error %v, json.Marshal %v", o, err, wantErr)
		}
		if err != nil {
			return
		}
		if !bytes.HasPrefix(got, prefix) || !bytes.Equal(got[len(prefix):], want) {
			t.Fatalf("outcome %+v:\nappendJSON   %q\njson.Marshal %q", o, got, want)
		}
		outcomeRoundTrips(t, &o, got[len(prefix):])
	})
}

// outcomeRoundTrips checks that enc, o's JSON form, decodes back to o, with what JSON cannot
// carry made explicit: a byte that is not UTF-8 comes back as U+FFFD (one per byte, as
// encoding/json writes it), and a body comes back compacted with <, >, &, U+2028 and U+2029
// escaped. Floats come back with the same bits (-0 included).
func outcomeRoundTrips(t *testing.T, o *Outcome, enc []byte) {
	t.Helper()
	var back Outcome
	if err := json.Unmarshal(enc, &back); err != nil {
		t.Fatalf("outcome %+v: %q does not decode: %v", o, enc, err)
	}
	want := *o
	for _, s := range []*string{&want.Schema, &want.EventID, &want.Rule, &want.RuleVersion, &want.Account, &want.API,
		&want.ToUser, &want.TemplateID, &want.Status, &want.ErrMsg, &want.Class, &want.Source.Topic, &want.EventTime,
		&want.ProcessedAt, &want.DelayedUntil} {
		*s = replaceInvalidUTF8(*s)
	}
	if len(o.Body) > 0 {
		var compact, escaped bytes.Buffer
		if err := json.Compact(&compact, o.Body); err != nil {
			t.Fatalf("outcome %+v encoded with a body that is not JSON: %v", o, err)
		}
		json.HTMLEscape(&escaped, compact.Bytes())
		want.Body = escaped.Bytes()
	}
	if !bytes.Equal(back.Body, want.Body) || math.Float64bits(back.LatencyMS) != math.Float64bits(want.LatencyMS) {
		t.Fatalf("outcome %+v: decoded body %q latency %v, want %q %v", o, back.Body, back.LatencyMS, want.Body, want.LatencyMS)
	}
	back.Body, want.Body = nil, nil
	if !reflect.DeepEqual(back, want) {
		t.Fatalf("outcome %+v:\ndecoded %+v\nwant    %+v", o, back, want)
	}
}

// replaceInvalidUTF8 is s with each byte that does not start valid UTF-8 replaced by U+FFFD.
func replaceInvalidUTF8(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b.WriteRune(utf8.RuneError)
		} else {
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}
