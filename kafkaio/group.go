package kafkaio

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/segmentio/kafka-go"
	commitapi "github.com/segmentio/kafka-go/protocol/offsetcommit"
	"github.com/sirupsen/logrus"
)

// GroupConfig configures consumer group membership.
type GroupConfig struct {
	GroupID string
	Topics  []string
	// SessionTimeout, HeartbeatInterval and RebalanceTimeout are the group's timing. Defaults
	// 10s, 3s and 30s.
	SessionTimeout, HeartbeatInterval, RebalanceTimeout time.Duration
}

// Group is this process's membership in a consumer group, through kafka-go's ConsumerGroup.
type Group struct {
	c   *Client
	cfg GroupConfig
	cg  *kafka.ConsumerGroup
	log logrus.FieldLogger
}

// JoinGroup starts membership in the group; Next returns its generations.
func (c *Client) JoinGroup(cfg GroupConfig) (*Group, error) {
	if cfg.SessionTimeout <= 0 {
		cfg.SessionTimeout = 10 * time.Second
	}
	if cfg.HeartbeatInterval <= 0 {
		cfg.HeartbeatInterval = 3 * time.Second
	}
	if cfg.RebalanceTimeout <= 0 {
		cfg.RebalanceTimeout = 30 * time.Second
	}
	log := c.log.WithField("group_id", cfg.GroupID)
	cg, err := kafka.NewConsumerGroup(kafka.ConsumerGroupConfig{
		ID:                cfg.GroupID,
		Brokers:           c.cfg.Brokers,
		Dialer:            c.dialer,
		Topics:            cfg.Topics,
		SessionTimeout:    cfg.SessionTimeout,
		HeartbeatInterval: cfg.HeartbeatInterval,
		RebalanceTimeout:  cfg.RebalanceTimeout,
		JoinGroupBackoff:  time.Second,
		Timeout:           dialTimeout,
		ErrorLogger:       kafka.LoggerFunc(func(f string, a ...any) { log.Warnf("kafka group: "+f, a...) }),
		Logger:            kafka.LoggerFunc(func(f string, a ...any) { log.Debugf("kafka group: "+f, a...) }),
	})
	if err != nil {
		return nil, fmt.Errorf("consumer group: %w", err)
	}
	return &Group{c: c, cfg: cfg, cg: cg, log: log}, nil
}

// Next blocks until this member holds the group's next generation, or ctx ends (ctx's error).
// Failures to join are logged and retried. There is never more than one generation: Next
// returns the next one only after every function started on the previous one returned.
func (g *Group) Next(ctx context.Context) (*Generation, error) {
	for {
		gen, err := g.cg.Next(ctx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if errors.Is(err, kafka.ErrGroupClosed) {
			return nil, err
		}
		if err != nil {
			g.log.WithError(err).Warn("joining the consumer group failed; retrying")
			continue
		}
		out, err := g.generation(ctx, gen)
		if err == nil {
			return out, nil
		}
		// The generation ended (or ctx did) before its offsets could be read: end it (kafka-go
		// ends a generation when a function started on it returns) and join the next one.
		gen.Start(func(context.Context) {})
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		g.log.WithError(err).Warn("reading the committed offsets failed; rejoining")
	}
}

// Close leaves the group once the current generation's functions have returned.
func (g *Group) Close() error { return g.cg.Close() }

// Generation is one generation of the group: this member's assignments, with the offsets and
// metadata committed for them.
type Generation struct {
	ID          int32
	GroupID     string
	MemberID    string
	Assignments []Assignment // by topic, then partition

	gen *kafka.Generation
	c   *Client
	hb  time.Duration
}

// Assignment is one assigned partition and what was committed for it.
type Assignment struct {
	Topic     string
	Partition int
	// Offset is the committed offset, or -1 when the group has none for the partition.
	Offset int64
	// Metadata is the metadata committed with Offset.
	Metadata string
}

// generation reads the committed offsets and metadata of gen's assignments. kafka-go's
// Generation carries the offsets but not the metadata committed with them.
func (g *Group) generation(ctx context.Context, gen *kafka.Generation) (*Generation, error) {
	out := &Generation{ID: gen.ID, GroupID: gen.GroupID, MemberID: gen.MemberID, gen: gen, c: g.c, hb: g.cfg.HeartbeatInterval}
	req := &kafka.OffsetFetchRequest{GroupID: gen.GroupID, Topics: map[string][]int{}}
	for topic, parts := range gen.Assignments {
		for _, p := range parts {
			req.Topics[topic] = append(req.Topics[topic], p.ID)
		}
	}
	if len(req.Topics) == 0 {
		return out, nil
	}
	var (
		res *kafka.OffsetFetchResponse
		err error
	)
	for attempt := 0; attempt < 5; attempt++ {
		if attempt > 0 {
			select {
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		res, err = g.c.kc.OffsetFetch(fctx, req)
		cancel()
		if err == nil {
			err = res.Error
		}
		if err == nil {
			break
		}
	}
	if err != nil {
		return nil, fmt.Errorf("offset fetch: %w", err)
	}
	for topic, parts := range res.Topics {
		for _, p := range parts {
			if p.Error != nil {
				return nil, fmt.Errorf("offset fetch %s/%d: %w", topic, p.Partition, p.Error)
			}
			out.Assignments = append(out.Assignments, Assignment{Topic: topic, Partition: p.Partition, Offset: p.CommittedOffset, Metadata: p.Metadata})
		}
	}
	slices.SortFunc(out.Assignments, func(a, b Assignment) int {
		return compareTopicPartition(TopicPartition{a.Topic, a.Partition}, TopicPartition{b.Topic, b.Partition})
	})
	return out, nil
}

// Start runs fn in a goroutine bound to the generation: fn's ctx ends when the generation ends
// (a rebalance, a failed heartbeat, Group.Close), and the group does not rejoin until fn
// returned. Start is kafka-go's Generation.Start.
func (g *Generation) Start(fn func(ctx context.Context)) { g.gen.Start(fn) }

// Offset is one partition's commit.
type Offset struct {
	Topic     string
	Partition int
	Offset    int64
	Metadata  string
	// LeaderEpoch is the leader epoch of the last record consumed below Offset, -1 if unknown.
	LeaderEpoch int32
}

// ErrGenerationEnded is reported (errors.Is) for commits the coordinator refused because this
// member's generation is over: a rebalance started, or the member was evicted. Later commits of
// the generation are refused too.
var ErrGenerationEnded = errors.New("the consumer group generation ended")

// CommitError lists the partitions a commit did not commit.
type CommitError struct {
	Failed map[TopicPartition]error
}

// TopicPartition names a partition.
type TopicPartition struct {
	Topic     string
	Partition int
}

// compareTopicPartition orders partitions by topic, then partition.
func compareTopicPartition(a, b TopicPartition) int {
	return cmp.Or(strings.Compare(a.Topic, b.Topic), cmp.Compare(a.Partition, b.Partition))
}

func (e *CommitError) Error() string {
	keys := slices.SortedFunc(maps.Keys(e.Failed), compareTopicPartition)
	msg := fmt.Sprintf("commit failed for %d partitions", len(keys))
	for i, k := range keys {
		if i == 3 {
			msg += ", ..."
			break
		}
		msg += fmt.Sprintf("; %s/%d: %v", k.Topic, k.Partition, e.Failed[k])
	}
	return msg
}

// Is makes errors.Is(err, ErrGenerationEnded) true when the coordinator ended the generation.
func (e *CommitError) Is(target error) bool {
	if target != ErrGenerationEnded {
		return false
	}
	for _, err := range e.Failed {
		if generationEnded(err) {
			return true
		}
	}
	return false
}

func generationEnded(err error) bool {
	return errors.Is(err, kafka.RebalanceInProgress) || errors.Is(err, kafka.IllegalGeneration) ||
		errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.FencedInstanceID)
}

// Commit commits offsets, with their metadata and leader epochs, for this generation. It goes
// through the Transport, which finds the group's coordinator for every request, so a dropped
// connection or a moved coordinator fails one commit, not every commit until the generation
// ends (kafka-go's Generation.CommitOffsets uses the generation's coordinator connection, which
// stays broken). It returns nil when every partition was committed, a *CommitError naming the
// partitions that were not (errors.Is ErrGenerationEnded when the coordinator ended the
// generation), or the request's error.
func (g *Generation) Commit(ctx context.Context, offsets []Offset) error {
	if len(offsets) == 0 {
		return nil
	}
	req := &commitapi.Request{GroupID: g.GroupID, GenerationID: g.ID, MemberID: g.MemberID, RetentionTimeMs: -1}
	for _, o := range offsets {
		if n := len(req.Topics); n == 0 || req.Topics[n-1].Name != o.Topic {
			req.Topics = append(req.Topics, commitapi.RequestTopic{Name: o.Topic})
		}
		t := &req.Topics[len(req.Topics)-1]
		t.Partitions = append(t.Partitions, commitapi.RequestPartition{
			PartitionIndex: int32(o.Partition), CommittedOffset: o.Offset, CommittedMetadata: o.Metadata,
			CommittedLeaderEpoch: o.LeaderEpoch, CommitTimestamp: -1,
		})
	}
	m, err := g.c.tr.RoundTrip(ctx, g.c.addr, req)
	if err != nil {
		return fmt.Errorf("offset commit: %w", err)
	}
	res, ok := m.(*commitapi.Response)
	if !ok {
		return fmt.Errorf("offset commit: unexpected response %T", m)
	}
	answered := 0
	failed := map[TopicPartition]error{}
	for _, t := range res.Topics {
		for _, p := range t.Partitions {
			answered++
			if p.ErrorCode != 0 {
				failed[TopicPartition{t.Name, int(p.PartitionIndex)}] = kafka.Error(p.ErrorCode)
			}
		}
	}
	if answered < len(offsets) {
		return fmt.Errorf("offset commit: %d of %d partitions answered", answered, len(offsets))
	}
	if len(failed) > 0 {
		return &CommitError{Failed: failed}
	}
	return nil
}

// KeepAlive heartbeats for the generation, at once and then every heartbeat interval, until
// stop is called. Use it while revoked partitions drain after the generation ended: kafka-go
// stops heartbeating when a generation ends, and without heartbeats a drain longer than the
// session timeout would get this member evicted and its partitions handed to another member
// while its sends still run. The coordinator answers REBALANCE_IN_PROGRESS, which still keeps
// the session: the group waits (up to the rebalance timeout) for this member to commit and
// rejoin.
//
// kafka-go's heartbeat request has no group routing (its protocol type lacks the Group method
// by which the Transport sends group requests to the coordinator), so through the cluster's
// address it would reach any broker, and a broker that is not the coordinator answers
// NOT_COORDINATOR. KeepAlive therefore addresses each heartbeat to the coordinator's own
// address, which the Transport serves from a pool of that broker. It finds the coordinator
// again before every heartbeat: kafka-go's Client.Heartbeat reads a v1+ answer with its error
// code and throttle time swapped (kafka-go PR #1371), so it reports no error for
// NOT_COORDINATOR and a moved coordinator would never be noticed from the answers (nor an
// eviction: an evicted member heartbeats on, uselessly, until its drain ends).
func (g *Generation) KeepAlive(log logrus.FieldLogger) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(g.hb)
		defer t.Stop()
		for {
			hctx, hcancel := context.WithTimeout(ctx, max(g.hb, time.Second))
			err := g.heartbeat(hctx)
			hcancel()
			switch {
			case err == nil || errors.Is(err, kafka.RebalanceInProgress) || ctx.Err() != nil:
			case errors.Is(err, kafka.UnknownMemberId) || errors.Is(err, kafka.IllegalGeneration):
				// Evicted after all: the partitions are someone else's now, so the work still
				// draining will be redone there. Heartbeating on cannot change that.
				log.WithError(err).WithField("generation", g.ID).Warn("the group dropped this member while its revoked partitions drained; their unfinished work will be redone")
				return
			default:
				log.WithError(err).WithField("generation", g.ID).Warn("heartbeat while draining failed; retrying")
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	return func() {
		cancel()
		<-done
	}
}

// heartbeat finds the group's coordinator and sends it one heartbeat.
func (g *Generation) heartbeat(ctx context.Context) error {
	res, err := g.c.kc.FindCoordinator(ctx, &kafka.FindCoordinatorRequest{Key: g.GroupID, KeyType: kafka.CoordinatorKeyTypeConsumer})
	if err == nil {
		err = res.Error
	}
	if err != nil {
		return fmt.Errorf("find the group coordinator: %w", err)
	}
	coord := kafka.TCP(net.JoinHostPort(res.Coordinator.Host, strconv.Itoa(res.Coordinator.Port)))
	hb, err := g.c.kc.Heartbeat(ctx, &kafka.HeartbeatRequest{Addr: coord, GroupID: g.GroupID, GenerationID: g.ID, MemberID: g.MemberID})
	if err == nil {
		err = hb.Error
	}
	return err
}

// ErrOffsetMetadataTooLarge is a partition's commit error (errors.Is) when the broker refused
// the metadata as longer than its offset.metadata.max.bytes.
const ErrOffsetMetadataTooLarge = kafka.OffsetMetadataTooLarge
