package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"time"

	"github.com/segmentio/kafka-go"
)

// Event ids are "e-" and the event's index in the run, so an outcome's event_id leads straight to
// its slot in the per-event tables without a map.
const eventIDPrefix = "e-"

// eventTypes is the mix the generator draws from: one rule (and one send API) each in the
// embedded rule set. Weights are per mille.
var eventTypes = []struct {
	name   string
	weight int
}{
	{"order.paid", 400},      // subscribeMessage.send
	{"shipment.sent", 300},   // template.send (mp account, client_msg_id)
	{"order.refunded", 150},  // templateMessage.send
	{"order.delivered", 150}, // uniformMessage.send
}

var (
	names     = []string{"王伟", "李娜", "张敏", "刘洋", "陈静", "杨帆"}
	items     = []string{"Chocolates", "Green tea", "Gum", "Headphones", "Notebook", "Coffee beans"}
	carriers  = []string{"顺丰速运", "中通快递", "圆通速递", "京东物流"}
	shopName  = "TIT创意园店"
	shopAddr  = "广州市海珠区新港中路397号"
	onlineShp = "线上商城" // no address, like configs/samples' e-000004
)

// generator makes sample-shaped events (the fields and sizes of configs/samples/events.jsonl)
// with unique event and order ids, over a fixed population of users.
type generator struct {
	rng   *rand.Rand
	users int
	at    time.Time
	buf   []byte
}

func newGenerator(users int, seed uint64) *generator {
	return &generator{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), users: users, at: time.Date(2026, 11, 22, 10, 0, 0, 0, time.UTC)}
}

// openID and oaOpenID are 28 characters, like WeChat's.
func openID(u int) string   { return fmt.Sprintf("oUpF8uMuAJO_M2pxb1Q9%08d", u) }
func oaOpenID(u int) string { return fmt.Sprintf("o6_bmjrPTlm6_2sgVt7h%08d", u) }

// event returns event number i as a Kafka message keyed by the user's openid (as the demo does).
func (g *generator) event(i int) kafka.Message {
	w := g.rng.IntN(1000)
	typ := eventTypes[len(eventTypes)-1].name
	for _, t := range eventTypes {
		if w < t.weight {
			typ = t.name
			break
		}
		w -= t.weight
	}
	u := g.rng.IntN(g.users)
	at := g.at.Add(time.Duration(i) * 250 * time.Millisecond)
	b := g.buf[:0]
	b = append(b, `{"event_id":"`+eventIDPrefix...)
	b = strconv.AppendInt(b, int64(i), 10)
	b = append(b, `","type":"`...)
	b = append(b, typ...)
	b = append(b, `","occurred_at":"`...)
	b = at.AppendFormat(b, time.RFC3339)
	b = append(b, `","order":{"id":"`...)
	b = strconv.AppendInt(b, 339208499+int64(i), 10)
	b = append(b, `","amount_fen":`...)
	b = strconv.AppendInt(b, 5+int64(g.rng.IntN(300000)), 10)
	b = append(b, `,"items":[{"name":"`...)
	b = append(b, items[g.rng.IntN(len(items))]...)
	b = append(b, `","qty":`...)
	b = strconv.AppendInt(b, 1+int64(g.rng.IntN(3)), 10)
	b = append(b, `}]},"user":{"openid":"`...)
	b = append(b, openID(u)...)
	b = append(b, `","oa_openid":"`...)
	b = append(b, oaOpenID(u)...)
	b = append(b, `","name":"`...)
	b = append(b, names[u%len(names)]...)
	if g.rng.IntN(4) == 0 {
		b = append(b, `"},"shop":{"name":"`+onlineShp+`"}`...)
	} else {
		b = append(b, `"},"shop":{"name":"`+shopName+`","address":"`+shopAddr+`"}`...)
	}
	if typ == "shipment.sent" || typ == "order.delivered" {
		b = append(b, `,"shipment":{"carrier":"`...)
		b = append(b, carriers[g.rng.IntN(len(carriers))]...)
		b = append(b, `","tracking_no":"SF`...)
		b = strconv.AppendInt(b, 100000000000+int64(i), 10)
		b = append(b, `"}`...)
	}
	b = append(b, '}')
	g.buf = b
	return kafka.Message{Key: []byte(openID(u)), Value: append([]byte(nil), b...)}
}

// newProducer is the bench's writer: acks=all, batches of up to 1000, a 1ms linger.
func newProducer(broker, topic string) *kafka.Writer {
	return &kafka.Writer{
		Addr: kafka.TCP(broker), Topic: topic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchSize: 1000, BatchTimeout: time.Millisecond,
		Transport: &kafka.Transport{},
	}
}

// produceBacklog writes events [0, n) before the processor starts, stamping each with the time
// its batch was handed to the writer.
func produceBacklog(ctx context.Context, w *kafka.Writer, g *generator, n int, t *tally) error {
	const chunk = 1000
	msgs := make([]kafka.Message, 0, chunk)
	for i := 0; i < n; i += chunk {
		msgs = msgs[:0]
		for j := i; j < min(i+chunk, n); j++ {
			msgs = append(msgs, g.event(j))
		}
		now := t.now()
		for j := range msgs {
			t.sent[i+j] = now
		}
		if err := w.WriteMessages(ctx, msgs...); err != nil {
			return fmt.Errorf("produce backlog: %w", err)
		}
	}
	return nil
}

// produceSteady writes n events at rate per second: every tick it writes the events that are due
// in one call, so the arrival pattern is the rate at tick granularity (5ms).
func produceSteady(ctx context.Context, w *kafka.Writer, g *generator, n int, rate float64, t *tally) error {
	const tick = 5 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	start := time.Now()
	var msgs []kafka.Message
	for i := 0; i < n; {
		due := min(n, int(time.Since(start).Seconds()*rate)+1)
		msgs = msgs[:0]
		for ; i < due; i++ {
			msgs = append(msgs, g.event(i))
		}
		if len(msgs) > 0 {
			now := t.now()
			for j := range msgs {
				t.sent[i-len(msgs)+j] = now
			}
			if err := w.WriteMessages(ctx, msgs...); err != nil {
				return fmt.Errorf("produce: %w", err)
			}
		}
		select {
		case <-tk.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}
