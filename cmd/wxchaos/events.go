package main

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wxnotify/wxnotify/rules"
)

//go:embed rules/chaos.yaml
var chaosRules []byte

// eventHeader names the header every produced record carries with its event id; the processor
// copies headers into dead-letter records, so a dead letter leads back to its event.
const eventHeader = "wxchaos-event"

// Kinds of malformed records.
const (
	notJSON     = "not_json"     // a value that is not JSON at all
	invalidUTF8 = "invalid_utf8" // a sample-shaped event with the bytes oBad\xc3( inside a string
)

// event is one record the chaos run produced.
type event struct {
	id        string // "e-<index>"
	key       []byte // the recipient's openid, as the samples are keyed
	value     []byte
	malformed string // "", notJSON or invalidUTF8
	partition int32  // where the broker put it
	offset    int64
}

// eventTypes is wxbench's mix: one rule, and one send API, each (per mille).
var eventTypes = []struct {
	name   string
	weight int
}{
	{"order.paid", 400},      // subscribeMessage.send
	{"shipment.sent", 300},   // template.send (client_msg_id)
	{"order.refunded", 150},  // templateMessage.send
	{"order.delivered", 150}, // uniformMessage.send
}

// sample is the shape of configs/samples/events.jsonl.
type sample struct {
	EventID    string `json:"event_id"`
	Type       string `json:"type"`
	OccurredAt string `json:"occurred_at"`
	Order      struct {
		ID        string `json:"id"`
		AmountFen int    `json:"amount_fen"`
		Items     []struct {
			Name string `json:"name"`
			Qty  int    `json:"qty"`
		} `json:"items"`
	} `json:"order"`
	User struct {
		OpenID   string `json:"openid"`
		OAOpenID string `json:"oa_openid"`
		Name     string `json:"name"`
	} `json:"user"`
	Shop struct {
		Name    string `json:"name"`
		Address string `json:"address,omitempty"`
	} `json:"shop"`
	Shipment *struct {
		Carrier    string `json:"carrier"`
		TrackingNo string `json:"tracking_no"`
	} `json:"shipment,omitempty"`
}

var (
	itemNames = []string{"Chocolates", "Green tea", "Gum", "Headphones", "Notebook", "Coffee beans"}
	userNames = []string{"王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆"}
	carriers  = []string{"顺丰速运", "中通快递", "圆通速递", "京东物流"}
)

// badUTF8 replaces a placeholder after encoding: json.Marshal would repair invalid UTF-8.
const badPlaceholder = "WXCHAOS_BAD_BYTES"

var badUTF8 = []byte("oBad\xc3(")

// generator makes sample-shaped events over a population of recipients, from a seed; a share
// of them (drawn from the same seeded generator) is malformed, alternately not JSON and invalid
// UTF-8.
type generator struct {
	rng       *rand.Rand
	users     int
	malformed float64
	bad       int // malformed events made so far
	start     time.Time
}

func newGenerator(users int, malformed float64, seed uint64) *generator {
	return &generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), users: users, malformed: malformed,
		start: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
}

// generate makes the first n events of the generator.
func generate(n, users int, malformed float64, seed uint64) []event {
	g := newGenerator(users, malformed, seed)
	out := make([]event, n)
	for i := range out {
		out[i] = g.event(i)
	}
	return out
}

// event makes event i; calls must come in order of i.
func (g *generator) event(i int) event {
	rng := g.rng
	var s sample
	s.EventID = "e-" + strconv.Itoa(i)
	w := rng.IntN(1000)
	for _, t := range eventTypes {
		if s.Type = t.name; w < t.weight {
			break
		}
		w -= t.weight
	}
	u := rng.IntN(g.users)
	s.OccurredAt = g.start.Add(time.Duration(i) * 250 * time.Millisecond).Format(time.RFC3339)
	s.Order.ID = strconv.Itoa(339208499 + i)
	s.Order.AmountFen = 5 + rng.IntN(300000)
	s.Order.Items = append(s.Order.Items, struct {
		Name string `json:"name"`
		Qty  int    `json:"qty"`
	}{itemNames[rng.IntN(len(itemNames))], 1 + rng.IntN(3)})
	s.User.OpenID = fmt.Sprintf("oUpF8uMuAJO_M2pxb1Q9%08d", u)
	s.User.OAOpenID = fmt.Sprintf("o6_bmjrPTlm6_2sgVt7h%08d", u)
	s.User.Name = userNames[u%len(userNames)]
	s.Shop.Name = "TIT创意园店"
	if rng.IntN(4) > 0 {
		s.Shop.Address = "广州市海珠区新港中路397号"
	}
	kind := ""
	if g.malformed > 0 && rng.Float64() < g.malformed {
		kind = notJSON
		if g.bad%2 == 1 {
			kind, s.Type = invalidUTF8, "shipment.sent" // its carrier reaches a template.send body
		}
		g.bad++
	}
	if s.Type == "shipment.sent" || s.Type == "order.delivered" {
		s.Shipment = &struct {
			Carrier    string `json:"carrier"`
			TrackingNo string `json:"tracking_no"`
		}{carriers[rng.IntN(len(carriers))], "SF" + strconv.Itoa(100000000000+i)}
	}
	if kind == invalidUTF8 {
		s.Shipment.Carrier = badPlaceholder
	}
	v, _ := json.Marshal(s) // plain strings and numbers: cannot fail
	switch kind {
	case invalidUTF8:
		v = bytes.Replace(v, []byte(badPlaceholder), badUTF8, 1)
	case notJSON:
		v = []byte("not json: " + s.EventID + " {")
	}
	return event{id: s.EventID, key: []byte(s.User.OpenID), value: v, malformed: kind}
}

// eventIndex parses "e-<index>" ids; -1 if id is not one.
func eventIndex(id string) int {
	if len(id) < 3 || id[:2] != "e-" {
		return -1
	}
	i, err := strconv.Atoi(id[2:])
	if err != nil || i < 0 {
		return -1
	}
	return i
}

// newProducer is the chaos run's producer: franz-go's kgo, a client independent of the
// processor's, acks from all replicas, and the produce timeout that marks its requests.
func newProducer(b *broker) (*kgo.Client, error) {
	return kgo.NewClient(kgo.SeedBrokers(b.addr), b.sasl(), kgo.DefaultProduceTopic(eventsTopic),
		kgo.ProduceRequestTimeout(producerTimeout), kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.MetadataMinAge(250*time.Millisecond))
}

// record is e as the producer writes it: keyed by recipient, its id in a header.
func (e *event) record() *kgo.Record {
	return &kgo.Record{Key: e.key, Value: e.value, Headers: []kgo.RecordHeader{{Key: eventHeader, Value: []byte(e.id)}}}
}

// produce writes events in order and notes where each landed.
func produce(ctx context.Context, cl *kgo.Client, evs []event) error {
	const chunk = 2000
	recs := make([]*kgo.Record, 0, chunk)
	index := make(map[*kgo.Record]int, chunk)
	for i := 0; i < len(evs); i += chunk {
		recs = recs[:0]
		clear(index)
		for j := i; j < min(i+chunk, len(evs)); j++ {
			r := evs[j].record()
			recs = append(recs, r)
			index[r] = j
		}
		res := cl.ProduceSync(ctx, recs...) // results come in the order the broker acknowledged them
		if err := res.FirstErr(); err != nil {
			return fmt.Errorf("produce events: %w", err)
		}
		for _, r := range res {
			e := &evs[index[r.Record]]
			e.partition, e.offset = r.Record.Partition, r.Record.Offset
		}
	}
	return nil
}

// ruleInfo is a rule of the chaos set, as the checker needs it.
type ruleInfo struct{ name, account, api string }

// expectations evaluates every well-formed event with the chaos rules (the rules package the
// processor uses) and returns, per event, the rules that must notify.
func expectations(evs []event) ([][]*ruleInfo, error) {
	set, err := rules.Parse(map[string][]byte{"chaos.yaml": chaosRules}, rules.Options{Accounts: []string{"mp", "weapp"}})
	if err != nil {
		return nil, fmt.Errorf("chaos rules: %w", err)
	}
	infos := make(map[string]*ruleInfo)
	for _, r := range set.Rules {
		infos[r.Name] = &ruleInfo{r.Name, r.Account, r.API}
	}
	out := make([][]*ruleInfo, len(evs))
	var dst []rules.Notification
	for i, e := range evs {
		if e.malformed != "" {
			continue
		}
		ev, err := rules.DecodeEvent(e.value)
		if err != nil {
			return nil, fmt.Errorf("event %s: %w", e.id, err)
		}
		dst = set.Evaluate(ev, rules.Meta{EventID: e.id, Topic: eventsTopic, Key: e.key}, dst[:0])
		for _, nt := range dst {
			if nt.Err != nil {
				return nil, fmt.Errorf("event %s: rule %s: %v (the chaos rules must render every well-formed event)", e.id, nt.Rule.Name, nt.Err)
			}
			out[i] = append(out[i], infos[nt.Rule.Name])
		}
	}
	return out, nil
}
