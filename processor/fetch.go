package processor

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
	"github.com/sirupsen/logrus"
)

// Fetching the events topics.
//
// kafka-go's Reader fetches one partition per request, each over its own connection. At a steady
// 1,000 events/s over 8 partitions nearly every event then paid for a fetch round trip of its
// own and two goroutine hand-offs (~14% of the processor's CPU in `wxbench -mode steady`). Here
// one request asks a leader broker for every assigned partition it leads, and while records keep
// arriving the broker is asked to gather them for FetchLinger before it answers; when a fetch
// comes back empty the next one long-polls instead, so an idle processor sends about two fetches
// a second per broker rather than polling. Each fetch loop owns its connection to its leader
// (sink/kafkaconn): the loop's goroutine writes the request and reads the answer itself.

const (
	// fetchMaxBytes bounds one fetch response (all partitions): besides the MaxInFlight
	// events, the most memory a fetch loop holds. A record batch bigger than this is still returned
	// whole when it comes first (Kafka's rule), so no record is ever too big to fetch.
	fetchMaxBytes = 2 << 20
	// fetchPartitionMaxBytes bounds one partition's share, so one partition's backlog does not
	// fill every response while the others wait.
	fetchPartitionMaxBytes = 512 << 10
	// fetchLongPoll is how long an idle fetch waits at the broker for a first record.
	fetchLongPoll = 500 * time.Millisecond
	// fetchLingerMinBytes is the data that ends a lingering fetch early: at a backlog the
	// broker answers at once.
	fetchLingerMinBytes = 256 << 10
	// fetchTimeout is how long past its wait a fetch may take before the connection is
	// presumed dead.
	fetchTimeout = 10 * time.Second
	// readCommitted is the fetch isolation level that hides open transactions.
	readCommitted = 1
	// controlAbort is the type of an abort marker's control record (commit is 1).
	controlAbort = 0
)

// fetchEvents reads the generation's events partitions until gctx ends, with one fetch loop
// per leader broker. A leader change, an unreachable broker or a partition error ends every
// loop; after a backoff the partitions are grouped again by the leaders in the client's metadata
// cache (refreshed every second, see brokerClient), each
// resuming at the offset after the last record it handed on.
func (p *Processor) fetchEvents(gctx context.Context, parts []*partition) {
	if len(parts) == 0 {
		return
	}
	const maxBackoff = 2 * time.Second
	backoff := time.Duration(0)
	for {
		start := time.Now()
		err := p.fetchRound(gctx, parts)
		if gctx.Err() != nil {
			return
		}
		if time.Since(start) > 10*maxBackoff {
			backoff = 0 // the failure ended a healthy stretch: start the backoff over
		}
		backoff = min(max(2*backoff, 100*time.Millisecond), maxBackoff)
		p.warn.WithError(err).WithField("retry_in", backoff).Warn("fetching events failed; retrying")
		select {
		case <-time.After(backoff):
		case <-gctx.Done():
			return
		}
	}
}

// fetchRound groups parts by leader and runs one fetch loop per leader until one of them fails
// or gctx ends.
func (p *Processor) fetchRound(gctx context.Context, parts []*partition) error {
	groups, err := p.groupByLeader(gctx, parts)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(gctx)
	defer cancel()
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for _, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := p.fetchLoop(ctx, g.addr, g.parts); err != nil {
				once.Do(func() { first = err; cancel() })
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = gctx.Err()
	}
	return first
}

// leaderGroup is the partitions one broker leads, and its address.
type leaderGroup struct {
	addr  string
	parts []*partition
}

// groupByLeader splits parts by the broker that leads them, in the client's metadata, and
// positions partitions that have no offset yet.
func (p *Processor) groupByLeader(ctx context.Context, parts []*partition) ([]leaderGroup, error) {
	topics := map[string]bool{}
	for _, pt := range parts {
		topics[pt.topic] = true
	}
	meta, err := p.client.Metadata(ctx, &kafka.MetadataRequest{Topics: slices.Sorted(maps.Keys(topics))})
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	leader := map[string]map[int]int{}
	for _, t := range meta.Topics {
		if t.Error != nil {
			return nil, fmt.Errorf("metadata of topic %s: %w", t.Name, t.Error)
		}
		leader[t.Name] = map[int]int{}
		for _, part := range t.Partitions {
			if part.Error == nil {
				leader[t.Name][part.ID] = part.Leader.ID
			}
		}
	}
	byLeader := map[int][]*partition{}
	for _, pt := range parts {
		id, ok := leader[pt.topic][pt.id]
		if !ok {
			return nil, fmt.Errorf("partition %s/%d has no leader", pt.topic, pt.id)
		}
		byLeader[id] = append(byLeader[id], pt)
	}
	addrs := make(map[int]string, len(meta.Brokers))
	for _, b := range meta.Brokers {
		addrs[b.ID] = net.JoinHostPort(b.Host, strconv.Itoa(b.Port))
	}
	if err := p.position(ctx, parts); err != nil {
		return nil, err
	}
	groups := make([]leaderGroup, 0, len(byLeader))
	for _, id := range slices.Sorted(maps.Keys(byLeader)) {
		addr, ok := addrs[id]
		if !ok {
			return nil, fmt.Errorf("broker %d, which leads partition %s/%d, is not in the metadata", id, byLeader[id][0].topic, byLeader[id][0].id)
		}
		groups = append(groups, leaderGroup{addr: addr, parts: byLeader[id]})
	}
	return groups, nil
}

// position sets the fetch offset of partitions that have none (a first start without a
// committed offset) or whose offset left the log (outOfRange), following StartOffset, as
// Kafka's auto.offset.reset does. An offset below the log start (records removed by
// retention) moves to the log start whatever the policy.
func (p *Processor) position(ctx context.Context, parts []*partition) error {
	req := map[string][]kafka.OffsetRequest{}
	var todo []*partition
	for _, pt := range parts {
		if pt.next < 0 || pt.outOfRange {
			req[pt.topic] = append(req[pt.topic], kafka.FirstOffsetOf(pt.id), kafka.LastOffsetOf(pt.id))
			todo = append(todo, pt)
		}
	}
	if len(todo) == 0 {
		return nil
	}
	res, err := p.client.ListOffsets(ctx, &kafka.ListOffsetsRequest{Topics: req})
	if err != nil {
		return fmt.Errorf("list offsets: %w", err)
	}
	for _, pt := range todo {
		var po *kafka.PartitionOffsets
		for i := range res.Topics[pt.topic] {
			if res.Topics[pt.topic][i].Partition == pt.id {
				po = &res.Topics[pt.topic][i]
			}
		}
		switch {
		case po == nil:
			return fmt.Errorf("list offsets of %s/%d: no answer for the partition", pt.topic, pt.id)
		case po.Error != nil:
			return fmt.Errorf("list offsets of %s/%d: %w", pt.topic, pt.id, po.Error)
		}
		from, to := pt.next, po.FirstOffset
		if from < 0 || from > po.FirstOffset {
			if p.cfg.StartOffset == kafka.LastOffset {
				to = po.LastOffset
			}
		}
		if from >= 0 && to < from {
			// The log was truncated below records already handed on (a broker lost data): let
			// their work finish so the tracker sees offsets in order again, and allow the
			// commit point to move back.
			select {
			case <-pt.tracker.drained():
			case <-ctx.Done():
				return ctx.Err()
			}
			pt.tracker.reset(to)
		}
		pt.next = to
		if pt.outOfRange {
			p.log.WithFields(logrus.Fields{"topic": pt.topic, "partition": pt.id, "offset": from, "log_start": po.FirstOffset, "log_end": po.LastOffset, "resume_at": pt.next}).
				Warn("the partition's offset is outside its log (records removed by retention, or the log was truncated); resuming at the start offset policy")
		}
		pt.outOfRange = false
	}
	return nil
}

// fetchLoop fetches parts (all led by the broker at addr) over a connection of its own until
// ctx ends (nil) or a fetch fails.
func (p *Processor) fetchLoop(ctx context.Context, addr string, parts []*partition) error {
	conn, err := p.conns.DialContext(ctx, addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("fetch: %w", err)
	}
	defer conn.Close()
	byID := make(map[string]map[int32]*partition, 1)
	for _, pt := range parts {
		if byID[pt.topic] == nil {
			byID[pt.topic] = map[int32]*partition{}
		}
		byID[pt.topic][int32(pt.id)] = pt
	}
	req := &fetchapi.Request{ReplicaID: -1, MaxBytes: fetchMaxBytes, SessionID: -1, SessionEpoch: -1, IsolationLevel: readCommitted}
	linger, rotate := false, 0
	for {
		// Hold a slot of the in-flight budget before fetching: a full budget stops fetching.
		select {
		case p.budget <- struct{}{}:
		case <-ctx.Done():
			return nil
		}
		buildFetch(req, parts, rotate)
		rotate++
		wait := fetchLongPoll
		req.MinBytes = 1
		if linger {
			wait, req.MinBytes = p.cfg.FetchLinger, fetchLingerMinBytes
		}
		req.MaxWaitTime = int32(wait / time.Millisecond)
		rctx, cancel := context.WithTimeout(ctx, wait+fetchTimeout)
		m, err := conn.RoundTrip(rctx, req)
		cancel()
		p.metrics.fetches.Inc()
		if err != nil {
			<-p.budget
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("fetch: %w", err)
		}
		res, ok := m.(*fetchapi.Response)
		if !ok {
			<-p.budget
			return fmt.Errorf("fetch: unexpected response %T", m)
		}
		held := true
		got, err := p.deliver(ctx, res, byID, &held)
		if held {
			<-p.budget
		}
		if err != nil || ctx.Err() != nil {
			return err
		}
		linger = got > 0 && p.cfg.FetchLinger > 0
	}
}

// buildFetch fills req with parts (grouped by topic, as fetchLoop keeps them) at their next
// offsets. Each topic's partitions start at a rotating position, so that no partition is always
// served last from a response's byte budget.
func buildFetch(req *fetchapi.Request, parts []*partition, rotate int) {
	req.Topics = req.Topics[:0]
	for start := 0; start < len(parts); {
		end := start + 1
		for end < len(parts) && parts[end].topic == parts[start].topic {
			end++
		}
		same := parts[start:end]
		t := fetchapi.RequestTopic{Topic: same[0].topic, Partitions: make([]fetchapi.RequestPartition, len(same))}
		for i := range same {
			pt := same[(i+rotate)%len(same)]
			t.Partitions[i] = fetchapi.RequestPartition{Partition: int32(pt.id), CurrentLeaderEpoch: -1,
				FetchOffset: pt.next, LogStartOffset: -1, PartitionMaxBytes: fetchPartitionMaxBytes}
		}
		req.Topics = append(req.Topics, t)
		start = end
	}
}

// deliver hands the response's records to handle in offset order, partition by partition,
// taking a budget slot for each (the first is the one fetchLoop holds: *held reports whether it
// is still unused). It returns how many records it handed on, and an error for a partition error
// that needs the partitions regrouped. When ctx ends it stops between records: the partitions'
// next offsets then point at the first record not handed on.
func (p *Processor) deliver(ctx context.Context, res *fetchapi.Response, byID map[string]map[int32]*partition, held *bool) (int, error) {
	got := 0
	var perr error
	for ti := range res.Topics {
		t := &res.Topics[ti]
		for pi := range t.Partitions {
			rp := &t.Partitions[pi]
			pt := byID[t.Topic][rp.Partition]
			if pt == nil || ctx.Err() != nil {
				continue
			}
			if rp.ErrorCode != 0 {
				err := kafka.Error(rp.ErrorCode)
				if errors.Is(err, kafka.OffsetOutOfRange) {
					pt.outOfRange = true
				}
				if perr == nil {
					perr = fmt.Errorf("fetch %s/%d at offset %d: %w", pt.topic, pt.id, pt.next, err)
				}
				continue
			}
			if rp.HighWatermark >= 0 {
				pt.hwm.Store(rp.HighWatermark)
			}
			n, err := p.deliverPartition(ctx, pt, rp, held)
			got += n
			if err != nil {
				return got, err
			}
		}
	}
	return got, perr
}

// deliverPartition hands one partition's records on.
func (p *Processor) deliverPartition(ctx context.Context, pt *partition, rp *fetchapi.ResponsePartition, held *bool) (int, error) {
	rr := rp.RecordSet.Records
	if rr == nil {
		return 0, nil
	}
	var batches []protocol.RecordReader
	if s, ok := rr.(*protocol.RecordStream); ok {
		batches = s.Records
	} else {
		batches = []protocol.RecordReader{rr}
	}
	// Fetches are read_committed: the broker answers up to the last stable offset and lists the
	// aborted transactions in range; the records of those are passed over like the markers, as
	// Kafka's own consumer does. (kafka-go's Reader delivered them, and the markers too.)
	aborted := slices.SortedFunc(slices.Values(rp.AbortedTransactions), func(a, b fetchapi.ResponseTransaction) int {
		return cmp.Compare(a.FirstOffset, b.FirstOffset)
	})
	abortedBy := map[int64]bool{}
	got := 0
	for _, b := range batches {
		control, skip := false, false
		var producer int64
		switch b := b.(type) {
		case *protocol.ControlBatch:
			control, producer = true, b.ProducerID
		case *protocol.RecordBatch:
			for len(aborted) > 0 && aborted[0].FirstOffset <= b.BaseOffset {
				abortedBy[aborted[0].ProducerID] = true
				aborted = aborted[1:]
			}
			skip = b.Attributes.Transactional() && abortedBy[b.ProducerID]
		}
		for {
			rec, err := b.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return got, fmt.Errorf("fetch %s/%d: reading records at offset %d: %w", pt.topic, pt.id, pt.next, err)
			}
			if rec.Offset < pt.next {
				closeRecord(rec)
				continue
			}
			if control || skip {
				// Transaction markers and aborted records take offsets but are not events:
				// pass over them (and let the commit point pass them too).
				if !control {
					closeRecord(rec)
				} else if cr, err := protocol.ReadControlRecord(rec); err == nil && cr.Type == controlAbort {
					delete(abortedBy, producer)
				}
				pt.tracker.add(rec.Offset).finish()
				pt.next = rec.Offset + 1
				continue
			}
			if ctx.Err() != nil { // revoked: hand nothing more on (a ready budget would race it)
				closeRecord(rec)
				return got, nil
			}
			if !*held {
				select {
				case p.budget <- struct{}{}:
				case <-ctx.Done():
					closeRecord(rec)
					return got, nil
				}
			}
			*held = false
			msg, err := toMessage(pt, rp.HighWatermark, rec)
			if err != nil {
				<-p.budget
				return got, fmt.Errorf("fetch %s/%d: reading record %d: %w", pt.topic, pt.id, rec.Offset, err)
			}
			pt.next = rec.Offset + 1
			got++
			p.metrics.inFlight.Inc()
			p.handle(pt, msg)
		}
	}
	return got, nil
}

// toMessage copies a fetched record out of the response's buffers.
func toMessage(pt *partition, hwm int64, rec *protocol.Record) (kafka.Message, error) {
	defer closeRecord(rec)
	msg := kafka.Message{Topic: pt.topic, Partition: pt.id, Offset: rec.Offset, HighWaterMark: hwm, Time: rec.Time}
	var err error
	if rec.Key != nil {
		if msg.Key, err = protocol.ReadAll(rec.Key); err != nil {
			return msg, err
		}
	}
	if rec.Value != nil {
		if msg.Value, err = protocol.ReadAll(rec.Value); err != nil {
			return msg, err
		}
	}
	if len(rec.Headers) > 0 {
		msg.Headers = slices.Clone(rec.Headers)
	}
	return msg, nil
}

func closeRecord(rec *protocol.Record) {
	if rec.Key != nil {
		rec.Key.Close()
	}
	if rec.Value != nil {
		rec.Value.Close()
	}
}
