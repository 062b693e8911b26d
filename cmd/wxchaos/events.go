package main

import (
	"context"
	_ "embed"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
	"github.com/wxnotify/wxnotify/rules"
)

//go:embed rules/chaos.yaml
var chaosRules []byte

// eventHeader names the header every produced record carries with its event id; the processor
// copies headers into dead-letter records, so a dead letter leads back to its event.
const eventHeader = "wxchaos-event"

// event is one record the chaos run produced.
type event struct {
	id        string // "e-<index>"
	key       []byte // the recipient's openid, as the samples are keyed
	value     []byte
	malformed string // "", eventgen.NotJSON or eventgen.InvalidUTF8
	partition int32  // where the broker put it
	offset    int64
}

// generate makes the first n events of eventgen's generator of seed: wxbench's events, with a
// share malformed of malformed records.
func generate(n, users int, malformed float64, seed uint64) []event {
	g := eventgen.New(users, malformed, seed)
	out := make([]event, n)
	for i := range out {
		out[i] = newEvent(g, i)
	}
	return out
}

// newEvent is event i of g; calls must come in order of i.
func newEvent(g *eventgen.Generator, i int) event {
	e := g.Event(i)
	return event{id: eventgen.ID(i), key: e.Key, value: e.Value, malformed: e.Malformed}
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
