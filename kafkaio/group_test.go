package kafkaio

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// join joins cfg's group with cl and returns its first generation. The group is left when the
// test ends.
func join(t *testing.T, cl *Client, cfg GroupConfig) (*Group, *Generation) {
	t.Helper()
	g, err := cl.JoinGroup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = g.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	gen, err := g.Next(ctx)
	if err != nil {
		t.Fatalf("joining %s: %v", cfg.GroupID, err)
	}
	return g, gen
}

// dropNextCommit makes the broker close, unanswered, the connection of the next OffsetCommit
// request.
func dropNextCommit(c *kfake.Cluster) {
	c.ControlKey(int16(kmsg.OffsetCommit), func(kmsg.Request) (kmsg.Response, error, bool) {
		return nil, errors.New("the test drops the connection"), true
	})
}

// committed returns the group's committed offset and metadata of topic/partition, as the broker
// holds them.
func committed(c *kfake.Cluster, group, topic string, partition int32) (int64, string) {
	gi := c.GroupInfo(group)
	if gi == nil {
		return -1, ""
	}
	cm, ok := gi.Commits[topic][partition]
	if !ok {
		return -1, ""
	}
	return cm.Offset, cm.Metadata
}

// The commit workaround (Generation.Commit goes through the Transport, not through kafka-go's
// generation connection): a commit whose connection the broker drops fails, and the next commit
// of the same generation succeeds. kafka-go's own Generation.CommitOffsets, after the same drop,
// keeps failing: its generation's coordinator connection stays broken until the generation ends.
// That second half documents the kafka-go behaviour the workaround answers; if it starts to fail,
// kafka-go recovers by itself and the workaround may go.
func TestCommitSucceedsAgainAfterADroppedConnection(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(1, "ev"))
	cl, _ := newClient(t, c, []string{"ev"})
	// Heartbeats far apart: kafka-go's heartbeat does not notice its broken connection, and end
	// the generation, while the test runs.
	_, gen := join(t, cl, GroupConfig{GroupID: "g", Topics: []string{"ev"}, SessionTimeout: 30 * time.Second, HeartbeatInterval: 10 * time.Second})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	commit := func(offset int64, meta string) error {
		return gen.Commit(ctx, []Offset{{Topic: "ev", Partition: 0, Offset: offset, Metadata: meta, LeaderEpoch: -1}})
	}

	dropNextCommit(c)
	if err := commit(3, "m3"); err == nil {
		t.Fatal("a commit whose connection was dropped succeeded")
	}
	if err := commit(3, "m3"); err != nil {
		t.Fatalf("the next commit of the generation: %v, want it to succeed", err)
	}
	if off, meta := committed(c, "g", "ev", 0); off != 3 || meta != "m3" {
		t.Fatalf("the broker holds offset %d metadata %q, want 3 and m3", off, meta)
	}

	dropNextCommit(c)
	offsets := map[string]map[int]int64{"ev": {0: 5}}
	if err := gen.gen.CommitOffsets(offsets); err == nil {
		t.Fatal("kafka-go: a commit whose connection was dropped succeeded")
	}
	if err := gen.gen.CommitOffsets(offsets); err == nil {
		t.Error("kafka-go's Generation.CommitOffsets succeeded after its connection was dropped: kafka-go now recovers by itself, " +
			"and Generation.Commit's detour through the Transport may no longer be needed")
	} else {
		t.Logf("kafka-go's Generation.CommitOffsets after the drop: %v", err)
	}
	if err := commit(7, "m7"); err != nil {
		t.Fatalf("a commit after kafka-go's connection broke: %v", err)
	}
	if off, meta := committed(c, "g", "ev", 0); off != 7 || meta != "m7" {
		t.Errorf("the broker holds offset %d metadata %q, want 7 and m7", off, meta)
	}
	if gi := c.GroupInfo("g"); gi.Epoch != gen.ID {
		t.Errorf("the group is at generation %d, want %d: the commits were not within one generation", gi.Epoch, gen.ID)
	}
}

// heartbeat is a heartbeat the broker received.
type heartbeat struct {
	node       int32
	generation int32
}

// The heartbeat workaround and a coordinator move during a drain, on three brokers with the
// configured broker not the coordinator: once a rebalance ended the generation, KeepAlive's
// heartbeats reach the coordinator (kafka-go's heartbeat request has no group routing and would
// go to the configured broker); the coordinator then moves, KeepAlive finds the new one, and the
// drain's commit, with the ended generation's id, succeeds.
func TestDrainHeartbeatsAndCommitFollowTheCoordinator(t *testing.T) {
	c := startCluster(t, kfake.NumBrokers(3), kfake.SeedTopics(4, "ev"))
	first := c.CoordinatorFor("g")
	cl, hook := newClient(t, c, []string{"ev"}, c.ListenAddrs()[(first+1)%3])
	var mu sync.Mutex
	var beats []heartbeat
	c.ControlKey(int16(kmsg.Heartbeat), func(req kmsg.Request) (kmsg.Response, error, bool) {
		mu.Lock()
		beats = append(beats, heartbeat{c.CurrentNode(), req.(*kmsg.HeartbeatRequest).Generation})
		mu.Unlock()
		return nil, nil, false
	})
	// beatsOf returns the heartbeats of generation gen received from index from on.
	beatsOf := func(gen int32, from int) []heartbeat {
		mu.Lock()
		defer mu.Unlock()
		var out []heartbeat
		for _, b := range beats[min(from, len(beats)):] {
			if b.generation == gen {
				out = append(out, b)
			}
		}
		return out
	}
	received := func() int {
		mu.Lock()
		defer mu.Unlock()
		return len(beats)
	}
	cfg := GroupConfig{GroupID: "g", Topics: []string{"ev"}, SessionTimeout: 3 * time.Second, HeartbeatInterval: 100 * time.Millisecond}
	_, gen := join(t, cl, cfg)

	draining, commit := make(chan struct{}), make(chan struct{})
	drained := make(chan error, 1)
	var once sync.Once
	release := func() { once.Do(func() { close(commit) }) }
	t.Cleanup(release) // before the group's Close, which waits for the drain
	gen.Start(func(ctx context.Context) {
		<-ctx.Done() // the rebalance ended the generation: drain, as processor.runGeneration does
		stop := gen.KeepAlive(cl.log)
		defer stop()
		close(draining)
		<-commit
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- gen.Commit(cctx, []Offset{{Topic: "ev", Partition: 0, Offset: 42, Metadata: "drained", LeaderEpoch: -1}})
	})
	other, _ := newClient(t, c, []string{"ev"})
	joiner, err := other.JoinGroup(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = joiner.Close() })
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_, _ = joiner.Next(ctx)
	}()

	<-draining
	mark := received()
	waitFor(t, 10*time.Second, "three heartbeats while draining", func() bool { return len(beatsOf(gen.ID, mark)) >= 3 })
	for _, b := range beatsOf(gen.ID, 0) {
		if b.node != first {
			t.Errorf("a heartbeat of generation %d went to node %d, not the coordinator %d", gen.ID, b.node, first)
		}
	}

	for c.CoordinatorFor("g") == first {
		c.RehashCoordinators()
	}
	second := c.CoordinatorFor("g")
	// kafka-go's Client.Heartbeat reads the old coordinator's NOT_COORDINATOR as success (a v1+
	// answer's error code and throttle time are swapped, kafka-go PR #1371): why KeepAlive finds
	// the coordinator before every heartbeat. If this starts failing, kafka-go decodes heartbeat
	// errors and KeepAlive could look the coordinator up only after one.
	hctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := cl.kc.Heartbeat(hctx, &kafka.HeartbeatRequest{Addr: kafka.TCP(c.ListenAddrs()[first]), GroupID: "g", GenerationID: gen.ID, MemberID: gen.MemberID})
	if err != nil {
		t.Fatalf("a heartbeat to the old coordinator: %v", err)
	}
	if res.Error != nil {
		t.Errorf("kafka-go's Client.Heartbeat now reports %v from the old coordinator: it decodes heartbeat errors, and KeepAlive need not find the coordinator before every heartbeat", res.Error)
	}
	mark = received()
	waitFor(t, 10*time.Second, "a heartbeat reaching the new coordinator", func() bool {
		for _, b := range beatsOf(gen.ID, mark) {
			if b.node == second {
				return true
			}
		}
		return false
	})
	release()
	select {
	case err := <-drained:
		if err != nil {
			t.Fatalf("the drain's commit after the coordinator moved: %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the drain's commit did not return")
	}
	if off, meta := committed(c, "g", "ev", 0); off != 42 || meta != "drained" {
		t.Errorf("the broker holds offset %d metadata %q, want 42 and drained", off, meta)
	}
	if e := logged(hook, logrus.WarnLevel, "dropped this member"); e != nil {
		t.Errorf("the member was dropped while draining: %v", e.Data)
	}
}

// A commit the coordinator refuses is reported per partition in a *CommitError. A partition whose
// metadata is refused as too large fails alone (errors.Is ErrOffsetMetadataTooLarge) while the
// others commit, and that is not the generation ending; a commit of a generation the group has
// moved past is refused for every partition and is (errors.Is ErrGenerationEnded).
func TestCommitErrorsNameTheirPartitions(t *testing.T) {
	c := startCluster(t, kfake.SeedTopics(2, "ev"))
	cl, _ := newClient(t, c, []string{"ev"})
	_, gen := join(t, cl, GroupConfig{GroupID: "g", Topics: []string{"ev"}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	offsets := []Offset{
		{Topic: "ev", Partition: 0, Offset: 3, Metadata: "m0", LeaderEpoch: -1},
		{Topic: "ev", Partition: 1, Offset: 4, Metadata: "m1", LeaderEpoch: -1},
	}

	f := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.OffsetCommit}, Topic: "ev", Partitions: []int32{1}, Err: kerr.OffsetMetadataTooLarge})
	err := gen.Commit(ctx, offsets)
	var cerr *CommitError
	if !errors.As(err, &cerr) || len(cerr.Failed) != 1 || !errors.Is(cerr.Failed[TopicPartition{"ev", 1}], ErrOffsetMetadataTooLarge) {
		t.Fatalf("a commit with ev/1's metadata refused: %v, want a *CommitError naming only ev/1 with OFFSET_METADATA_TOO_LARGE", err)
	}
	if f.Hits() != 1 {
		t.Fatalf("the fault was hit %d times, want 1", f.Hits())
	}
	if errors.Is(err, ErrGenerationEnded) {
		t.Errorf("%v is ErrGenerationEnded: a refused metadata would end the generation's commits", err)
	}
	if off, meta := committed(c, "g", "ev", 0); off != 3 || meta != "m0" {
		t.Errorf("the broker holds offset %d metadata %q of ev/0, want 3 and m0: the other partition was not committed", off, meta)
	}

	stale := *gen
	stale.ID--
	err = stale.Commit(ctx, offsets)
	if !errors.As(err, &cerr) || len(cerr.Failed) != 2 || !errors.Is(err, ErrGenerationEnded) {
		t.Fatalf("a commit of a past generation: %v, want a *CommitError naming both partitions that is ErrGenerationEnded", err)
	}
	if want := "commit failed for 2 partitions; ev/0: "; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error text %q, want it to start with %q", err, want)
	}
	if off, _ := committed(c, "g", "ev", 0); off != 3 {
		t.Errorf("the broker holds offset %d of ev/0 after the refused commit, want 3", off)
	}
}
