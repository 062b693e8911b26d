package main

import (
	"context"
	"fmt"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
)

// message is event i of g as a Kafka message, keyed by the recipient's openid (as the demo does).
func message(g *eventgen.Generator, i int) kafka.Message {
	e := g.Event(i)
	return kafka.Message{Key: e.Key, Value: e.Value}
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
func produceBacklog(ctx context.Context, w *kafka.Writer, g *eventgen.Generator, n int, t *tally) error {
	const chunk = 1000
	msgs := make([]kafka.Message, 0, chunk)
	for i := 0; i < n; i += chunk {
		msgs = msgs[:0]
		for j := i; j < min(i+chunk, n); j++ {
			msgs = append(msgs, message(g, j))
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
func produceSteady(ctx context.Context, w *kafka.Writer, g *eventgen.Generator, n int, rate float64, t *tally) error {
	const tick = 5 * time.Millisecond
	tk := time.NewTicker(tick)
	defer tk.Stop()
	start := time.Now()
	var msgs []kafka.Message
	for i := 0; i < n; {
		due := min(n, int(time.Since(start).Seconds()*rate)+1)
		msgs = msgs[:0]
		for ; i < due; i++ {
			msgs = append(msgs, message(g, i))
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
