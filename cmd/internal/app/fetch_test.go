package app

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// The events fetcher (kafkaio/fetch.go) through the whole pipeline: what it must keep under
// leader moves and transaction markers, and the batching it exists for. Offsets outside the
// log and broker restarts are in the fault matrix (faults_test.go).

// Partition leaders move between three brokers while events are consumed: fetches for the
// moved partitions fail with NOT_LEADER, the fetcher groups the partitions by their new
// leaders, and every event still gets exactly one outcome per rule.
func TestLeaderMovesWhileConsuming(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 2 * time.Millisecond}, kfake.NumBrokers(3))
	r := h.start()
	defer h.stop(r)
	var all []kafka.Message
	for round := range 6 {
		batch := orderEvents(fmt.Sprintf("lm%d-", round), 40)
		h.produce("events", batch...)
		all = append(all, batch...)
		time.Sleep(100 * time.Millisecond)
		h.cluster.ShufflePartitionLeaders()
	}
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(all), 60*time.Second), all)
	if d := len(h.sim.Deliveries()); d != 2*len(all) {
		t.Errorf("simulator delivered %d messages, want %d", d, 2*len(all))
	}
}

// Events written in Kafka transactions come with commit and abort markers, which take offsets
// but are no events: they are passed over, and the committed offset reaches the end of the log.
// The events of an aborted transaction never happened: they get no notification.
func TestTransactionMarkersAreSkippedAndCommittedPast(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	cl, err := kgo.NewClient(kgo.SeedBrokers(h.broker), kgo.TransactionalID("wxnotify-test-tx"),
		kgo.DefaultProduceTopic("events"), kgo.RecordPartitioner(kgo.RoundRobinPartitioner()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var all []kafka.Message
	for tx := range 4 {
		if err := cl.BeginTransaction(); err != nil {
			t.Fatal(err)
		}
		batch := orderEvents(fmt.Sprintf("tx%d-", tx), 8)
		for _, m := range batch {
			if err := cl.ProduceSync(ctx, &kgo.Record{Key: m.Key, Value: m.Value}).FirstErr(); err != nil {
				t.Fatal(err)
			}
		}
		commit := tx != 1 // the second transaction is aborted
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
		if commit {
			all = append(all, batch...)
		}
	}
	r := h.start()
	defer h.stop(r)
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(all), 30*time.Second), all)
	ends := h.endOffsets("events")
	for p, end := range h.endOffsets("wxnotify.dlq") {
		if end > 0 {
			t.Errorf("dead-letter partition %d holds %d records: transaction markers were taken for events", p, end)
		}
	}
	waitFor(t, 10*time.Second, "commits past the last transaction markers", func() bool {
		committed := h.committed()
		for p, end := range ends {
			if committed[p] != end {
				return false
			}
		}
		return true
	})
}

// At a steady moderate rate the fetcher lets the broker gather records for kafka.fetch_linger,
// so fetches are far fewer than events (kafka-go's per-partition reader made about one fetch
// per event at this rate).
func TestFetchesAreBatchedAtSteadyRate(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	// A linger well above the writer's pace (one event per 1-2 ms) gathers several events per
	// fetch. On a loaded machine the writer is slower; what holds whatever its pace is that after
	// a fetch that brought records the next one lingers, so of two fetches in a row one lasts at
	// least the linger.
	linger := 25 * time.Millisecond
	h.cfg.Kafka.FetchLinger = &linger
	r := h.start()
	defer h.stop(r)
	waitFor(t, 10*time.Second, "partitions assigned", func() bool {
		v, _ := series(t, r.reg, "wxnotify_assigned_partitions")
		return v > 0
	})
	before, _ := series(t, r.reg, "wxnotify_kafka_fetch_requests_total")
	w := &kafka.Writer{Addr: kafka.TCP(h.broker), Topic: "events", Balancer: &kafka.Hash{}, RequiredAcks: kafka.RequireAll,
		BatchTimeout: time.Millisecond, Transport: &kafka.Transport{}}
	defer w.Close()
	msgs := orderEvents("steady-", 600)
	start := time.Now()
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for _, m := range msgs { // one event per write, at most one a millisecond
		<-tick.C
		if err := w.WriteMessages(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(msgs), 30*time.Second), msgs)
	after, _ := series(t, r.reg, "wxnotify_kafka_fetch_requests_total")
	elapsed := time.Since(start)
	fetches := after - before
	t.Logf("%d events in %s, %.0f fetches", len(msgs), elapsed.Round(time.Millisecond), fetches)
	// One fetch per four events at the writer's nominal pace; on a slower run, two fetches per
	// linger that passed (and a few around the start and end).
	limit := max(float64(len(msgs))/4, 2*elapsed.Seconds()/linger.Seconds()+4)
	if fetches > limit {
		t.Errorf("%.0f fetches for %d events written one at a time in %s: want at most %.0f", fetches, len(msgs), elapsed.Round(time.Millisecond), limit)
	}
}
