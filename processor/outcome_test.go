package processor

import (
	"bytes"
	"encoding/json"
	"math"
	"math/rand/v2"
	"testing"
	"time"
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
