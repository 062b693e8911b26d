// Package eventgen makes the sample-shaped events cmd/wxbench and cmd/wxchaos produce: the
// fields and sizes of configs/samples/events.jsonl, unique event and order ids, a fixed mix of
// event types over a fixed population of recipients, all drawn from a seed. It owns only the
// events; producing them and the rules that turn them into notifications belong to each command.
package eventgen

import (
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"
)

// IDPrefix starts every event id: "e-" and the event's index in the run, so an outcome's
// event_id leads straight to its slot in per-event tables without a map.
const IDPrefix = "e-"

// ID returns the id of event i.
func ID(i int) string { return IDPrefix + strconv.Itoa(i) }

// Index parses an id ID made; it returns -1 for anything else.
func Index(id string) int {
	if len(id) <= len(IDPrefix) || id[:len(IDPrefix)] != IDPrefix {
		return -1
	}
	i, err := strconv.Atoi(id[len(IDPrefix):])
	if err != nil || i < 0 {
		return -1
	}
	return i
}

// Types is the mix the generator draws from: each type is one rule, and one send API, in the
// commands' rule sets. Weights are per mille.
var Types = []struct {
	Name   string
	Weight int
}{
	{"order.paid", 400},      // subscribeMessage.send
	{"shipment.sent", 300},   // template.send (mp account, client_msg_id)
	{"order.refunded", 150},  // templateMessage.send
	{"order.delivered", 150}, // uniformMessage.send
}

// Kinds of malformed events.
const (
	NotJSON     = "not_json"     // a value that is not JSON at all
	InvalidUTF8 = "invalid_utf8" // a shipment.sent event whose carrier holds the bytes oBad\xc3(
)

var (
	names     = []string{"王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆"}
	items     = []string{"Chocolates", "Green tea", "Gum", "Headphones", "Notebook", "Coffee beans"}
	carriers  = []string{"顺丰速运", "中通快递", "圆通速递", "京东物流"}
	shopName  = "TIT创意园店"
	shopAddr  = "广州市海珠区新港中路397号"
	onlineShp = "线上商城" // no address, like configs/samples' e-000004
	badUTF8   = "oBad\xc3("
)

// Event is one generated event.
type Event struct {
	Key       []byte // the recipient's openid, as the samples are keyed
	Value     []byte
	Malformed string // "", NotJSON or InvalidUTF8
}

// Generator makes the events of one run. It is not safe for concurrent use.
type Generator struct {
	rng       *rand.Rand
	users     int
	malformed float64
	bad       int // malformed events made so far
	at        time.Time
	buf       []byte
}

// New returns the generator of seed over users recipients. A share malformed of its events
// (drawn from the same seed; 0 = none) is malformed, alternately NotJSON and InvalidUTF8.
func New(users int, malformed float64, seed uint64) *Generator {
	return &Generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), users: users, malformed: malformed,
		at: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
}

// OpenID and OAOpenID are recipient u's ids, 28 characters like WeChat's.
func OpenID(u int) string   { return fmt.Sprintf("oUpF8uMuAJO_M2pxb1Q9%08d", u) }
func OAOpenID(u int) string { return fmt.Sprintf("o6_bmjrPTlm6_2sgVt7h%08d", u) }

// Event returns event i. Calls must come in order of i: each draws from the generator's
// sequence.
func (g *Generator) Event(i int) Event {
	w := g.rng.IntN(1000)
	typ := Types[len(Types)-1].Name
	for _, t := range Types {
		if w < t.Weight {
			typ = t.Name
			break
		}
		w -= t.Weight
	}
	u := g.rng.IntN(g.users)
	amount := 5 + g.rng.IntN(300000)
	item := items[g.rng.IntN(len(items))]
	qty := 1 + g.rng.IntN(3)
	online := g.rng.IntN(4) == 0
	kind := ""
	if g.malformed > 0 && g.rng.Float64() < g.malformed {
		kind = NotJSON
		if g.bad%2 == 1 {
			kind, typ = InvalidUTF8, "shipment.sent" // its carrier reaches a template.send body
		}
		g.bad++
	}
	carrier := ""
	if typ == "shipment.sent" || typ == "order.delivered" {
		carrier = carriers[g.rng.IntN(len(carriers))]
		if kind == InvalidUTF8 {
			carrier = badUTF8
		}
	}
	key := OpenID(u)
	if kind == NotJSON {
		return Event{Key: []byte(key), Value: []byte("not json: " + ID(i) + " {"), Malformed: kind}
	}

	b := g.buf[:0]
	b = append(b, `{"event_id":"`+IDPrefix...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	b = append(b, `","occurred_at":"`...)
	b = g.at.Add(time.Duration(i)*250*time.Millisecond).AppendFormat(b, time.RFC3339)
	b = append(b, `","order":{"id":"`...)
	b = strconv.AppendInt(b, 339208499+int64(i), 10)
	b = append(b, `","amount_fen":`...)
	b = strconv.AppendInt(b, int64(amount), 10)
	b = append(b, `,"items":[{"name":"`...)
	b = append(b, item...)
	b = append(b, `","qty":`...)
	b = strconv.AppendInt(b, int64(qty), 10)
	b = append(b, `}]},"user":{"openid":"`...)
	b = append(b, key...)
	b = append(b, `","oa_openid":"`...)
	b = append(b, OAOpenID(u)...)
	b = append(b, `","name":"`...)
	b = append(b, names[u%len(names)]...)
	if online {
		b = append(b, `"},"shop":{"name":"`+onlineShp+`"}`...)
	} else {
		b = append(b, `"},"shop":{"name":"`+shopName+`","address":"`+shopAddr+`"}`...)
	}
	if carrier != "" {
		b = append(b, `,"shipment":{"carrier":"`...)
		b = append(b, carrier...)
		b = append(b, `","tracking_no":"SF`...)
		b = strconv.AppendInt(b, 100000000000+int64(i), 10)
		b = append(b, `"}`...)
	}
	b = append(b, '}')
	g.buf = b
	return Event{Key: []byte(key), Value: append([]byte(nil), b...), Malformed: kind}
}
