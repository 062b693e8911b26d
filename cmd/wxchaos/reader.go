package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
)

// reader follows the outcome and dead-letter topics from their first offset with franz-go's kgo
// (no consumer group), through broker restarts, and hands every record to a sink. Its goroutine
// runs from start to close.
type reader struct {
	cl   *kgo.Client
	done chan struct{}

	mu    sync.Mutex
	next  map[string]map[int32]int64 // topic -> partition -> next offset to read
	moved chan struct{}              // closed and replaced after every poll
}

func startReader(b *broker, sink func(*kgo.Record, time.Time)) (*reader, error) {
	cl, err := kgo.NewClient(kgo.SeedBrokers(b.addr), b.sasl(), kgo.ConsumeTopics(outcomes, deadLetters),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()), kgo.FetchMaxWait(readerMaxWait),
		kgo.MetadataMinAge(250*time.Millisecond))
	if err != nil {
		return nil, fmt.Errorf("outcome reader: %w", err)
	}
	r := &reader{cl: cl, done: make(chan struct{}), next: make(map[string]map[int32]int64), moved: make(chan struct{})}
	go func() {
		defer close(r.done)
		for {
			fs := cl.PollFetches(context.Background())
			if fs.IsClientClosed() {
				return
			}
			now := time.Now()
			fs.EachRecord(func(rec *kgo.Record) { sink(rec, now) })
			r.mu.Lock()
			fs.EachPartition(func(p kgo.FetchTopicPartition) {
				if n := len(p.Records); n > 0 {
					if r.next[p.Topic] == nil {
						r.next[p.Topic] = make(map[int32]int64)
					}
					r.next[p.Topic][p.Partition] = p.Records[n-1].Offset + 1
				}
			})
			close(r.moved)
			r.moved = make(chan struct{})
			r.mu.Unlock()
		}
	}()
	return r, nil
}

// catchUp waits until the reader has read everything the broker holds now in both topics.
func (r *reader) catchUp(ctx context.Context) error {
	end, err := r.endOffsets(ctx)
	if err != nil {
		return err
	}
	for {
		r.mu.Lock()
		behind, ch := false, r.moved
		for t, ps := range end {
			for p, off := range ps {
				if r.next[t][p] < off {
					behind = true
				}
			}
		}
		r.mu.Unlock()
		if !behind {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("outcome reader still behind the broker: %w", ctx.Err())
		}
	}
}

// endOffsets asks the broker for the high watermark of every partition of both topics.
func (r *reader) endOffsets(ctx context.Context) (map[string]map[int32]int64, error) {
	req := kmsg.NewPtrListOffsetsRequest()
	req.ReplicaID = -1
	for t, n := range map[string]int32{outcomes: outcomePartitions, deadLetters: dlqPartitions} {
		rt := kmsg.NewListOffsetsRequestTopic()
		rt.Topic = t
		for p := range n {
			rp := kmsg.NewListOffsetsRequestTopicPartition()
			rp.Partition, rp.Timestamp = p, -1 // latest
			rt.Partitions = append(rt.Partitions, rp)
		}
		req.Topics = append(req.Topics, rt)
	}
	resp, err := req.RequestWith(ctx, r.cl)
	if err != nil {
		return nil, fmt.Errorf("list end offsets: %w", err)
	}
	end := make(map[string]map[int32]int64)
	for _, t := range resp.Topics {
		end[t.Topic] = make(map[int32]int64)
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				return nil, fmt.Errorf("list end offsets %s/%d: %w", t.Topic, p.Partition, err)
			}
			end[t.Topic][p.Partition] = p.Offset
		}
	}
	return end, nil
}

func (r *reader) close() {
	r.cl.Close()
	<-r.done
}
