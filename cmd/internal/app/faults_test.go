package app

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/sasl/plain"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// The fault matrix: wxnotify run (app.Run) against the in-process broker with faults injected at
// the broker, and the WeChat simulator counting every send. Each test says what the user sees.
// What must hold whatever the timing: no event without an outcome per notification, each key's
// events in order, keyed sends never twice where the design says so, and bounds with margin.

// sends counts the simulator's deliveries by event id and rule, for events of orderEvents.
func (h *harness) sends() map[string]int {
	h.t.Helper()
	rules := map[string]string{"templateMessage.send": "order-paid", "subscribeMessage.send": "order-paid-subscribe"}
	out := map[string]int{}
	for _, d := range h.sim.Deliveries() {
		var b struct {
			Page string `json:"page"`
		}
		if err := json.Unmarshal(d.Body, &b); err != nil || rules[d.API] == "" {
			h.t.Fatalf("a delivery the test did not expect: %s %s", d.API, d.Body)
		}
		out[strings.TrimPrefix(b.Page, "pages/order/detail?id=9")+"/"+rules[d.API]]++
	}
	return out
}

// checkNothingLost checks that every notification of msgs (events of orderEvents) was sent and
// has an outcome, and that nothing else was sent or has one, and returns how many sends were
// repeats of a notification already sent.
func checkNothingLost(t *testing.T, outs, sends map[string]int, msgs []kafka.Message) (resent int) {
	t.Helper()
	want := map[string]bool{}
	for _, k := range notifications(t, msgs) {
		want[k] = true
		switch {
		case outs[k] == 0:
			t.Errorf("%s has no outcome", k)
		case sends[k] == 0:
			t.Errorf("%s has %d outcomes but was never sent", k, outs[k])
		}
		resent += max(sends[k]-1, 0)
	}
	for k := range outs {
		if !want[k] {
			t.Errorf("an outcome for %s, which is no notification of the test's events", k)
		}
	}
	for k := range sends {
		if !want[k] {
			t.Errorf("a send for %s, which is no notification of the test's events", k)
		}
	}
	return resent
}

// partitionOf returns the events partition kafka.Hash, the harness's producer, writes key to.
func partitionOf(key []byte) int {
	return (&kafka.Hash{}).Balance(kafka.Message{Key: key}, 0, 1, 2, 3)
}

// wait waits for a Run that ends by itself and returns its error; the harness no longer stops
// it.
func (h *harness) wait(r *running, timeout time.Duration) error {
	h.t.Helper()
	select {
	case err := <-r.done:
		r.cancel()
		r.cancel = nil
		return err
	case <-time.After(timeout):
		h.t.Fatalf("Run did not return within %s", timeout)
		return nil
	}
}

// An undecodable event close to the size limit (the broker's message.max.bytes, 64 KiB here): its
// dead-letter copy, with the headers that say why, does not fit. The user sees the copy on the
// dead-letter topic cut to fit, with header wxnotify.truncated giving the original size and the
// reason and source headers intact; the warning "record refused by the broker; writing it cut to
// fit"; wxnotify_kafka_write_failures_total{topic="wxnotify.dlq"} counting the refusal. The
// stream moves on: the next event is notified and the offsets commit to the end.
func TestDeadLetterTooLargeIsCutToFit(t *testing.T) {
	h := newHarness(t, wechatsim.Config{}, kfake.BrokerConfigs(map[string]string{"message.max.bytes": "65536"}))
	r := h.start()
	big := bytes.Repeat([]byte("x"), 65400) // fits in the events topic, not with the headers
	after := event("e-after", "order.paid", "u1")
	h.produce("events", kafka.Message{Key: []byte("u1"), Value: big})
	h.produce("events", after)
	wantOneOutcomeEach(t, h.outcomeCounts(2, 30*time.Second), []kafka.Message{after})
	dlq := h.readTopic("wxnotify.dlq", 1, 10*time.Second)
	if len(dlq) != 1 {
		t.Fatalf("%d dead letters, want 1", len(dlq))
	}
	hdr := map[string]string{}
	for _, x := range dlq[0].Headers {
		hdr[x.Key] = string(x.Value)
	}
	if hdr["wxnotify.truncated"] != "65400" || hdr["wxnotify.reason"] != "undecodable" || hdr["wxnotify.source.topic"] != "events" || hdr["wxnotify.error"] == "" {
		t.Errorf("dead letter headers %v, want wxnotify.truncated 65400 and the reason and source headers", hdr)
	}
	if v := dlq[0].Value; len(v) == 0 || len(v) >= len(big) || !bytes.HasPrefix(big, v) {
		t.Errorf("dead letter value of %d bytes, want a prefix of the event's %d", len(v), len(big))
	}
	if !strings.Contains(h.logBuf.String(), "writing it cut to fit") {
		t.Error("no warning that the dead letter was cut to fit")
	}
	if n := metric(t, r.reg, "wxnotify_kafka_write_failures_total", map[string]string{"topic": "wxnotify.dlq"}); n < 1 {
		t.Errorf("wxnotify_kafka_write_failures_total{topic=wxnotify.dlq} = %v, want the refusal counted", n)
	}
}

// The outcome topic refuses this processor's writes (kfake ACLs: it may read the events and
// write the dead-letter and delay topics, not the outcome topic). The user sees Run return,
// within seconds, an error naming the topic and the cause ("write to topic
// \"wxnotify.outcomes\" ... Topic Authorization Failed"), which makes `wxnotify run` exit with
// status 1; the log line "stopping: an outcome cannot be written; nothing past it is
// committed"; and no offset committed past an event whose outcome was refused (every event here
// needs one, so none is committed).
func TestOutcomeTopicNotAuthorizedStopsRun(t *testing.T) {
	allow := func(typ kmsg.ACLResourceType, name string) kfake.ACL {
		return kfake.ACL{Resource: typ, Name: name, Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationAll, Allow: true}
	}
	h := newHarness(t, wechatsim.Config{}, kfake.EnableSASL(), kfake.EnableACLs(), kfake.Superuser(saslPlain, "admin", "admin-secret"),
		kfake.User(saslPlain, "wxnotify", "wxnotify-secret", allow(kmsg.ACLResourceTypeTopic, "*"), allow(kmsg.ACLResourceTypeGroup, "*"),
			allow(kmsg.ACLResourceTypeCluster, "kafka-cluster"),
			kfake.ACL{Resource: kmsg.ACLResourceTypeTopic, Name: "wxnotify.outcomes", Pattern: kmsg.ACLResourcePatternTypeLiteral, Operation: kmsg.ACLOperationWrite}))
	h.sasl = plain.Mechanism{Username: "admin", Password: "admin-secret"}
	h.cfg.Kafka.SASL = KafkaSASLConfig{Mechanism: saslPlain, Username: "wxnotify", Password: "wxnotify-secret"}
	h.produce("events", orderEvents("acl-", 20)...)
	r := h.start()
	err := h.wait(r, 30*time.Second)
	if err == nil || !strings.Contains(err.Error(), `write to topic "wxnotify.outcomes"`) || !strings.Contains(err.Error(), "Topic Authorization Failed") {
		t.Fatalf("Run = %v, want an error naming the outcome topic and the authorization failure", err)
	}
	var perr *kafkaio.PermanentError
	if !errors.As(err, &perr) || !errors.Is(err, kafka.TopicAuthorizationFailed) {
		t.Errorf("Run's error %v is not the writer's permanent error", err)
	}
	if !strings.Contains(h.logBuf.String(), "stopping: an outcome cannot be written; nothing past it is committed") {
		t.Error("no log line saying why the processor stopped")
	}
	for p, off := range h.committed() {
		if off > 0 {
			t.Errorf("partition %d committed to %d, past events whose outcomes were refused", p, off)
		}
	}
	if n := len(h.sim.Deliveries()); n > 2*20 {
		t.Errorf("%d sends for 20 events of two notifications", n)
	}
}

// The leader of one events partition moves to another broker and its fetches are refused
// (NOT_LEADER) for a while, as during a slow election. The user sees the other partitions' events
// sent and given outcomes meanwhile, the warning "routing the partition again", and, once the
// partition is served, its events sent too: every event one outcome per rule, nothing sent twice.
func TestLeaderMoveOnOnePartitionWhileOthersFlow(t *testing.T) {
	h := newHarness(t, wechatsim.Config{}, kfake.NumBrokers(3))
	fault := h.cluster.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Fetch}, Topic: "events", Partitions: []int32{0}, Err: kerr.NotLeaderForPartition, Count: -1})
	if err := h.cluster.MoveTopicPartition("events", 0, (h.cluster.LeaderFor("events", 0)+1)%3); err != nil {
		t.Fatal(err)
	}
	h.start()
	var all []kafka.Message
	others, held := 0, 0
	for round := range 3 {
		batch := orderEvents(fmt.Sprintf("lm%d-", round), 60)
		for _, m := range batch {
			if partitionOf(m.Key) == 0 {
				held++
			} else {
				others++
			}
		}
		if held == 0 {
			t.Fatal("no event of the test lands on partition 0")
		}
		h.produce("events", batch...)
		all = append(all, batch...)
		waitFor(t, 20*time.Second, fmt.Sprintf("round %d of the other partitions sent while partition 0 is refused", round), func() bool {
			return len(h.sim.Deliveries()) >= 2*others
		})
	}
	if n := len(h.sim.Deliveries()); n != 2*others {
		t.Fatalf("%d sends while partition 0 was refused, want the other partitions' %d", n, 2*others)
	}
	fault.Remove()
	resent := checkNothingLost(t, h.outcomeCounts(2*len(all), 30*time.Second), h.sends(), all)
	if resent != 0 {
		t.Errorf("%d notifications sent twice", resent)
	}
	if !strings.Contains(h.logBuf.String(), "routing the partition again") {
		t.Error("no warning about the refused partition")
	}
}

// The broker restarts three times, with its data (DataDir) on the same port, while events are
// being sent. The user sees every notification sent and given an outcome, and, per restart, at
// most max_in_flight notifications sent again (the README's bound for a crash; max_in_flight is
// 32 events of two notifications here, so the bound bites: redoing every event in flight would
// exceed it). The work finished while the broker was away is committed once it is back, with
// the finished offsets in the commit metadata, so only unfinished work could be redone.
//
// The session timeout (6s) outlasts the outage (2s): Kafka's coordinator restarts the session
// timers of a group it loads after a restart, while kfake counts the outage against them, so a
// session shorter than the outage would evict the member on a kfake restart but not on Kafka's.
func TestBrokerRestartMidStream(t *testing.T) {
	ln := newLocalListener(t)
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close()
	h := newHarness(t, wechatsim.Config{Latency: 5 * time.Millisecond}, kfake.Ports(port), kfake.DataDir(t.TempDir()))
	const maxInFlight, restarts = 32, 3
	h.cfg.Processor.MaxInFlight = maxInFlight
	h.cfg.Kafka.SessionTimeout = 6 * time.Second
	// The defaults: the outcome writer's retries back off up to 5s, so outcomes held through the
	// outage may land a few seconds after the broker is back, within the drain.
	h.cfg.Processor.DrainTimeout, h.cfg.Kafka.RebalanceTimeout = 15*time.Second, 30*time.Second
	h.start()
	msgs := orderEvents("br-", 600)
	h.produce("events", msgs...)
	for i := 1; i <= restarts; i++ {
		waitFor(t, 30*time.Second, fmt.Sprintf("sends under way before restart %d", i), func() bool { return len(h.sim.Deliveries()) >= 300*i })
		h.restartBroker(2 * time.Second)
	}
	resent := checkNothingLost(t, h.outcomeCounts(2*len(msgs), 60*time.Second), h.sends(), msgs)
	t.Logf("%d restarts, %d notifications, %d sent again", restarts, 2*len(msgs), resent)
	if resent > restarts*maxInFlight {
		t.Errorf("%d notifications sent again over %d restarts, want at most max_in_flight (%d) per restart", resent, restarts, maxInFlight)
	}
}

// dropEvery makes the broker close the connection of every nth request of key, unanswered (the
// request is not applied), and returns how many it dropped so far.
func dropEvery(c *kfake.Cluster, key kmsg.Key, n int64) func() int64 {
	var seen, dropped atomic.Int64
	c.ControlKey(int16(key), func(kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		if seen.Add(1)%n == 0 {
			dropped.Add(1)
			return nil, errors.New("the test drops the connection"), true
		}
		return nil, nil, false
	})
	return dropped.Load
}

// Connections dropped unanswered by the broker: every 10th Fetch, 20th Produce, 10th
// OffsetCommit and 5th Heartbeat request (a heartbeat dropped ends kafka-go's generation, so the
// processor drains, commits and rejoins). The user sees warnings (fetch failed, kafka write
// failed, offset commit failed) and rebalances, every notification sent and given an outcome,
// and nothing sent twice. The bound is derived: a dropped fetch is fetched again from the same
// position, a dropped produce is not applied and is retried, a dropped commit is retried at the
// next tick, and a drain commits each partition twice (when it drains and at its end) with
// never two consecutive commit requests dropped; a send is repeated only when a generation ends
// without its work committed, which these faults cannot cause.
func TestDroppedConnections(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 5 * time.Millisecond})
	h.cfg.Processor.MaxInFlight = 128
	dropped := map[kmsg.Key]func() int64{
		kmsg.Fetch:        dropEvery(h.cluster, kmsg.Fetch, 10),
		kmsg.Produce:      dropEvery(h.cluster, kmsg.Produce, 20),
		kmsg.OffsetCommit: dropEvery(h.cluster, kmsg.OffsetCommit, 10),
		kmsg.Heartbeat:    dropEvery(h.cluster, kmsg.Heartbeat, 5),
	}
	r := h.start()
	enough := func() bool {
		for _, n := range dropped {
			if n() < 3 {
				return false
			}
		}
		return true
	}
	var all []kafka.Message
	for round := 0; round < 5 || !enough() && round < 40; round++ {
		batch := orderEvents(fmt.Sprintf("dc%02d-", round), 100)
		h.produce("events", batch...)
		all = append(all, batch...)
		waitFor(t, 30*time.Second, fmt.Sprintf("round %d sent", round), func() bool { return len(h.sim.Deliveries()) >= 2*len(all) })
	}
	resent := checkNothingLost(t, h.outcomeCounts(2*len(all), 60*time.Second), h.sends(), all)
	var counts []string
	for _, k := range []kmsg.Key{kmsg.Fetch, kmsg.Produce, kmsg.OffsetCommit, kmsg.Heartbeat} {
		counts = append(counts, fmt.Sprintf("%s %d", kmsg.NameForKey(int16(k)), dropped[k]()))
	}
	generations := metric(t, r.reg, "wxnotify_group_generations_total", nil)
	commitErrors := metric(t, r.reg, "wxnotify_commit_errors_total", nil)
	t.Logf("%d events, %d notifications sent again; dropped: %s; %v generations, %v failed commits", len(all), resent, strings.Join(counts, ", "), generations, commitErrors)
	if !enough() {
		t.Errorf("dropped %s: too few of some kind to show anything", strings.Join(counts, ", "))
	}
	if resent != 0 {
		t.Errorf("%d notifications sent twice, want none", resent)
	}
}

// The group coordinator moves while the processor drains: one heartbeat connection is dropped,
// which ends kafka-go's generation, so the processor drains its partitions, heartbeating to keep
// its session (1s), and the coordinator moves meanwhile (WeChat answers in 300 ms and a user's
// sends go one at a time, so the drain takes seconds). The user sees "partitions revoked after
// finishing in-flight work and committing", every event one outcome per rule and nothing sent
// twice: the drain's heartbeats find the new coordinator, so the member is not evicted, and its
// commit succeeds there.
func TestCoordinatorMoveDuringDrain(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 300 * time.Millisecond}, kfake.NumBrokers(3))
	h.cfg.Processor.MaxInFlight = 100
	h.cfg.Processor.DrainTimeout = 20 * time.Second // the drain finishes: only the move can spoil it
	h.cfg.Kafka.RebalanceTimeout = 30 * time.Second
	var beats, droppedAt atomic.Int64
	var drop atomic.Bool
	h.cluster.ControlKey(int16(kmsg.Heartbeat), func(kmsg.Request) (kmsg.Response, error, bool) {
		h.cluster.KeepControl()
		n := beats.Add(1)
		if drop.CompareAndSwap(true, false) {
			droppedAt.Store(n)
			return nil, errors.New("the test drops the connection"), true
		}
		return nil, nil, false
	})
	h.start()
	msgs := orderEvents("cm-", 200)
	h.produce("events", msgs...)
	waitFor(t, 20*time.Second, "sends under way", func() bool { return len(h.sim.Deliveries()) >= 20 })
	drop.Store(true)
	waitFor(t, 10*time.Second, "the drain's heartbeats", func() bool { return droppedAt.Load() > 0 && beats.Load() >= droppedAt.Load()+2 })
	before := h.cluster.CoordinatorFor(h.cfg.Kafka.GroupID)
	for h.cluster.CoordinatorFor(h.cfg.Kafka.GroupID) == before {
		h.cluster.RehashCoordinators()
	}
	waitFor(t, 30*time.Second, "the drained revocation", func() bool {
		return strings.Contains(h.logBuf.String(), "partitions revoked after finishing in-flight work and committing")
	})
	resent := checkNothingLost(t, h.outcomeCounts(2*len(msgs), 60*time.Second), h.sends(), msgs)
	if resent != 0 {
		t.Errorf("%d notifications sent twice", resent)
	}
	if strings.Contains(h.logBuf.String(), "the group ended this generation before its offsets were committed") {
		t.Error("the drain's commit was refused")
	}
}

// The group's committed offset is outside the log: below its start (retention removed records
// while the processor was down) or above its end (the log lost its tail, or the topic was
// recreated). The user sees the warning "the partition's offset is outside its log" naming the
// offset, the log's bounds and where it resumes, and the events from there processed once:
// from the log start below it; above it, from the log start with start_offset first, or from the
// log end with start_offset last.
func TestOffsetsOutOfRangeAtBothEnds(t *testing.T) {
	t.Run("below the log start", func(t *testing.T) {
		h := newHarness(t, wechatsim.Config{})
		first := orderEvents("old-", 20)
		h.produce("events", first...)
		r := h.start()
		h.outcomeCounts(2*len(first), 30*time.Second) // and committed to the end
		h.stop(r)
		lost := orderEvents("lost-", 20) // removed by "retention" before anyone reads them
		h.produce("events", lost...)
		for p, end := range h.endOffsets("events") {
			if err := h.cluster.DeleteRecords("events", int32(p), end); err != nil {
				t.Fatal(err)
			}
		}
		kept := orderEvents("kept-", 20)
		h.produce("events", kept...)
		h.start()
		wantOneOutcomeEach(t, h.outcomeCounts(2*(len(first)+len(kept)), 30*time.Second), append(first, kept...))
		if !strings.Contains(h.logBuf.String(), "outside its log") {
			t.Error("no warning about the offset outside the log")
		}
	})
	for _, start := range []string{"first", "last"} {
		t.Run("above the log end, start_offset "+start, func(t *testing.T) {
			h := newHarness(t, wechatsim.Config{})
			h.cfg.Kafka.StartOffset = start
			old := orderEvents("old-", 20)
			h.produce("events", old...)
			h.commitOffsets(1000)
			h.start()
			waitFor(t, 20*time.Second, "the warning about the offset outside the log", func() bool {
				return strings.Count(h.logBuf.String(), "outside its log") >= 4 // one per partition
			})
			fresh := orderEvents("new-", 20)
			h.produce("events", fresh...)
			want := fresh
			if start == "first" {
				want = append(old, fresh...)
			}
			wantOneOutcomeEach(t, h.outcomeCounts(2*len(want), 30*time.Second), want)
			if d := len(h.sim.Deliveries()); d != 2*len(want) {
				t.Errorf("%d sends, want %d", d, 2*len(want))
			}
		})
	}
}

// commitOffsets commits offset for every events partition of the group, as a tool resetting
// offsets would (no member: generation -1).
func (h *harness) commitOffsets(offset int64) {
	h.t.Helper()
	c := &kafka.Client{Addr: kafka.TCP(h.broker), Transport: h.transport()}
	req := &kafka.OffsetCommitRequest{GroupID: h.cfg.Kafka.GroupID, GenerationID: -1, Topics: map[string][]kafka.OffsetCommit{}}
	for p := range testPartitions {
		req.Topics["events"] = append(req.Topics["events"], kafka.OffsetCommit{Partition: p, Offset: offset})
	}
	res, err := c.OffsetCommit(context.Background(), req)
	if err != nil {
		h.t.Fatalf("offset commit: %v", err)
	}
	for _, p := range res.Topics["events"] {
		if p.Error != nil {
			h.t.Fatalf("offset commit events/%d: %v", p.Partition, p.Error)
		}
	}
}

// Events produced by another client (kgo) in batches compressed with gzip, snappy, lz4 and
// zstd. The user sees every event notified once per rule and the offsets committed to the end.
func TestCompressedBatches(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	h.start()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var all []kafka.Message
	for _, codec := range []struct {
		name  string
		codec kgo.CompressionCodec
	}{{"gzip", kgo.GzipCompression()}, {"snappy", kgo.SnappyCompression()}, {"lz4", kgo.Lz4Compression()}, {"zstd", kgo.ZstdCompression()}} {
		cl, err := kgo.NewClient(kgo.SeedBrokers(h.broker), kgo.ProducerBatchCompression(codec.codec), kgo.DefaultProduceTopic("events"))
		if err != nil {
			t.Fatal(err)
		}
		batch := orderEvents(codec.name+"-", 40) // alike events: compressed smaller, so sent compressed
		var recs []*kgo.Record
		for _, m := range batch {
			recs = append(recs, &kgo.Record{Key: m.Key, Value: m.Value})
		}
		err = cl.ProduceSync(ctx, recs...).FirstErr()
		cl.Close()
		if err != nil {
			t.Fatalf("%s: %v", codec.name, err)
		}
		all = append(all, batch...)
	}
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(all), 30*time.Second), all)
}

// Two producers write events in transactions interleaved on the same partitions: both abort,
// then one aborts while the other commits, then both commit. The user sees notifications and
// outcomes for the committed events only, nothing on the dead-letter topic (markers and aborted
// records are no events), and the offsets committed to the log end, past the markers.
func TestInterleavedAbortedTransactions(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	producer := func(id string) *kgo.Client {
		cl, err := kgo.NewClient(kgo.SeedBrokers(h.broker), kgo.TransactionalID(id), kgo.DefaultProduceTopic("events"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(cl.Close)
		return cl
	}
	a, b := producer("tx-a"), producer("tx-b")
	begin := func(cls ...*kgo.Client) {
		for _, cl := range cls {
			if err := cl.BeginTransaction(); err != nil {
				t.Fatal(err)
			}
		}
	}
	send := func(cl *kgo.Client, m kafka.Message) {
		if err := cl.ProduceSync(ctx, &kgo.Record{Key: m.Key, Value: m.Value}).FirstErr(); err != nil {
			t.Fatal(err)
		}
	}
	end := func(cl *kgo.Client, commit bool) {
		if err := cl.EndTransaction(ctx, kgo.TransactionEndTry(commit)); err != nil {
			t.Fatal(err)
		}
	}
	// Alternate the producers event by event, on keys that spread over the partitions.
	interleave := func(msgs []kafka.Message) {
		for i, m := range msgs {
			send([]*kgo.Client{a, b}[i%2], m)
		}
	}
	var committed []kafka.Message
	begin(a, b)
	interleave(orderEvents("both-aborted-", 16))
	end(a, false)
	end(b, false)
	begin(a, b)
	mixed := orderEvents("mixed-", 16)
	interleave(mixed)
	end(b, false)
	end(a, true)
	for i, m := range mixed {
		if i%2 == 0 {
			committed = append(committed, m)
		}
	}
	begin(a, b)
	both := orderEvents("both-committed-", 16)
	interleave(both)
	end(b, true)
	end(a, true)
	committed = append(committed, both...)

	h.start()
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(committed), 30*time.Second), committed)
	for p, end := range h.endOffsets("wxnotify.dlq") {
		if end > 0 {
			t.Errorf("dead-letter partition %d holds %d records: markers or aborted records were taken for events", p, end)
		}
	}
	if d := len(h.sim.Deliveries()); d != 2*len(committed) {
		t.Errorf("%d sends, want %d: aborted events were sent", d, 2*len(committed))
	}
}

// Outcome records of one Kafka key through one account and API reach the outcome topic in their
// events' order (notifications of one key through different APIs are sent, and their outcomes
// published, independently, so that an API held through an outage does not stop another), while produce
// requests to two outcome partitions are refused for a while (retried whole, ahead of later
// records), connections of a third are dropped, and leaders move between three brokers. A third
// of the events have a notification rejected at evaluation (a value WeChat would refuse), whose
// outcome is decided without a send. The user sees, for every key and API, outcomes in event
// order, and exactly one per notification.
func TestOutcomeOrderPerKeyAcrossFailures(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 2 * time.Millisecond}, kfake.NumBrokers(3))
	faults := h.cluster.Fault(
		kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: h.cfg.Kafka.OutcomesTopic, Partitions: []int32{0}, Err: kerr.NotLeaderForPartition, Count: 4},
		kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: h.cfg.Kafka.OutcomesTopic, Partitions: []int32{2}, Err: kerr.NotEnoughReplicas, Count: 4},
	)
	var toP1 atomic.Int64
	h.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		h.cluster.KeepControl()
		for _, rt := range req.(*kmsg.ProduceRequest).Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == h.cfg.Kafka.OutcomesTopic && rp.Partition == 1 && toP1.Add(1)%4 == 0 {
					return nil, errors.New("the test drops the connection"), true
				}
			}
		}
		return nil, nil, false
	})
	h.start()
	var msgs []kafka.Message
	for i := range 400 {
		m := event(fmt.Sprintf("or-%04d", i), "order.paid", fmt.Sprintf("user%02d", i%40))
		if i%3 == 1 { // thing3 over 20 characters: order-paid-subscribe is rejected, order-paid sent
			m.Value = bytes.Replace(m.Value, []byte(`"name":"TIT创意园店"`), []byte(`"name":"广州市海珠区新港中路397号TIT创意园二期旗舰店"`), 1)
		}
		msgs = append(msgs, m)
	}
	for round := range 4 {
		h.produce("events", msgs[round*100:(round+1)*100]...)
		h.cluster.ShufflePartitionLeaders()
	}
	wantOneOutcomeEach(t, h.outcomeCounts(2*len(msgs), 60*time.Second), msgs)
	if faults.Hits() < 8 || toP1.Load() < 4 {
		t.Errorf("%d produce requests refused and %d to partition 1 seen: the faults did not bite", faults.Hits(), toP1.Load())
	}
	// Per key and API, the events' offsets as their outcomes appear, in outcome topic order.
	byKey := map[string][]int64{}
	for _, m := range h.readUpTo(h.cfg.Kafka.OutcomesTopic, h.endOffsets(h.cfg.Kafka.OutcomesTopic)) {
		var o struct {
			API    string `json:"api"`
			Source struct {
				Offset int64 `json:"offset"`
			} `json:"source"`
		}
		if err := json.Unmarshal(m.Value, &o); err != nil {
			t.Fatal(err)
		}
		k := string(m.Key) + " " + o.API
		byKey[k] = append(byKey[k], o.Source.Offset)
	}
	bad := 0
	for key, offs := range byKey {
		for i := 1; i < len(offs); i++ {
			if offs[i] < offs[i-1] {
				if bad++; bad <= 5 {
					t.Errorf("key %s: the outcome of offset %d follows the outcome of offset %d", key, offs[i], offs[i-1])
				}
				break
			}
		}
	}
	if bad > 5 {
		t.Errorf("... %d keys out of order in all", bad)
	}
}
