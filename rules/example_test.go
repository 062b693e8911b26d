package rules_test

import (
	"fmt"

	"github.com/wxnotify/wxnotify/rules"
)

func Example() {
	set, err := rules.Parse(map[string][]byte{"demo.yaml": []byte(`rules:
  - name: order-paid
    when: event.type == "order.paid"
    account: oa
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: TPL_ORDER_PAID
      data:
        amount: {value: "${yuan(event.order.amount_fen)}"}
        shop:   {value: "${default(event.shop.name, '线上商城')}"}
        when:   {value: "${timefmt(event.occurred_at, '2006-01-02 15:04')}"}
`)}, rules.Options{Accounts: []string{"oa"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	ev, _ := rules.DecodeEvent([]byte(`{"event_id":"e-1","type":"order.paid","occurred_at":"2026-11-22T10:00:00Z",
		"order":{"amount_fen":3980},"user":{"openid":"o-123"}}`))
	for _, n := range set.Evaluate(ev, rules.Meta{EventID: ev.ID()}, nil) {
		fmt.Println(n.Rule.Name, n.ToUser, n.TemplateID, n.Err)
		fmt.Println(string(n.Body))
	}
	// Output:
	// order-paid o-123 TPL_ORDER_PAID <nil>
	// {"touser":"o-123","template_id":"TPL_ORDER_PAID","data":{"amount":{"value":"39.80元"},"shop":{"value":"线上商城"},"when":{"value":"2026-11-22 18:00"}},"client_msg_id":"wxn-c349ac7afc95fb3e929e8a1f"}
}

func ExampleLoadError() {
	_, err := rules.Parse(map[string][]byte{"bad.yaml": []byte(`rules:
  - name: typo
    when: event.tpye == "order.paid" && evnt.x
    account: oa
    api: template.send
    message: {touser: "${event.user.openid}", template_id: T, colour: red}
`)}, rules.Options{})
	fmt.Println(err)
	// Output:
	// bad.yaml:3:41: rule "typo": when: unknown name evnt
	// bad.yaml:6:14: rule "typo": message.data: missing (template.send requires it)
	// bad.yaml:6:63: rule "typo": message.colour: not a field of template.send (fields: touser, template_id, url, miniprogram, data, client_msg_id)
}
