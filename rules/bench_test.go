package rules

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// benchRules returns n order-paid-like rules of which only the first matches order.paid
// events (the usual case: many rules, one or two match), or all of them with allMatch.
func benchRules(n int, allMatch bool) string {
	var b strings.Builder
	b.WriteString("rules:\n")
	for i := range n {
		typ := fmt.Sprintf("order.other%d", i)
		if i == 0 || allMatch {
			typ = "order.paid"
		}
		fmt.Fprintf(&b, `  - name: rule-%d
    when: event.type == %q && event.order.amount_fen > 0
    account: weapp
    api: templateMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL_ORDER_PAID_v1
      page: pages/order/detail?id=${event.order.id}
      form_id: FORMID_${event.event_id}
      data:
        keyword1: {value: "${event.order.id}"}
        keyword2: {value: "${yuan(event.order.amount_fen)}"}
        keyword3: {value: "${timefmt(event.occurred_at, '2006-01-02 15:04')}"}
        keyword4: {value: "${event.shop.address}"}
      emphasis_keyword: keyword1.DATA
`, i, typ)
	}
	return b.String()
}

func BenchmarkEvaluate(b *testing.B) {
	data, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		b.Fatal(err)
	}
	ev, err := DecodeEvent(data)
	if err != nil {
		b.Fatal(err)
	}
	meta := Meta{EventID: ev.ID(), Topic: "orders"}
	for _, c := range []struct {
		n   int
		all bool
	}{{1, false}, {10, false}, {100, false}, {10, true}} {
		name := fmt.Sprintf("rules=%d", c.n)
		if c.all {
			name += "/all-match"
		}
		b.Run(name, func(b *testing.B) {
			s := mustParse(b, benchRules(c.n, c.all))
			var dst []Notification
			b.ReportAllocs()
			for b.Loop() {
				dst = s.Evaluate(ev, meta, dst[:0])
			}
			if len(dst) == 0 || dst[0].Err != nil {
				b.Fatalf("%+v", dst)
			}
		})
	}
}

func BenchmarkDecodeEvent(b *testing.B) {
	data, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := DecodeEvent(data); err != nil {
			b.Fatal(err)
		}
	}
}
