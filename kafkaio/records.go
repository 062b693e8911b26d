package kafkaio

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/segmentio/kafka-go/protocol"
	fetchapi "github.com/segmentio/kafka-go/protocol/fetch"
)

// controlAbort is the type of an abort marker's control record (commit is 1).
const controlAbort = 0

// deliverPartition hands one partition's fetched records to the receiver in offset order,
// taking an admission for each (the first is the one the fetch holds while *held). Fetches are
// read_committed: the broker answers up to the last stable offset and lists the aborted
// transactions in range; their records are passed over like the transaction markers, as
// Kafka's own consumer does (kafka-go's Reader delivered them, and the markers too). When ctx
// ends it stops between records: p.next then points at the first record not handed on.
func (f *fetcher) deliverPartition(ctx context.Context, p *Partition, rp *fetchapi.ResponsePartition, held *bool) (int, error) {
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
	aborted := slices.SortedFunc(slices.Values(rp.AbortedTransactions), func(a, b fetchapi.ResponseTransaction) int {
		return cmp.Compare(a.FirstOffset, b.FirstOffset)
	})
	abortedBy := map[int64]bool{}
	got := 0
	var rec Message
	for _, b := range batches {
		control, skip := false, false
		var producer int64
		switch b := b.(type) {
		case *protocol.ControlBatch:
			control, producer = true, b.ProducerID
			p.epoch.Store(b.PartitionLeaderEpoch)
		case *protocol.RecordBatch:
			for len(aborted) > 0 && aborted[0].FirstOffset <= b.BaseOffset {
				abortedBy[aborted[0].ProducerID] = true
				aborted = aborted[1:]
			}
			skip = b.Attributes.Transactional() && abortedBy[b.ProducerID]
			p.epoch.Store(b.PartitionLeaderEpoch)
		}
		for {
			r, err := b.ReadRecord()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return got, fmt.Errorf("fetch %s/%d: reading records at offset %d: %w", p.Topic, p.ID, p.next, err)
			}
			if r.Offset < p.next {
				closeRecord(r)
				continue
			}
			if control || skip {
				if !control {
					closeRecord(r)
				} else if cr, err := protocol.ReadControlRecord(r); err == nil && cr.Type == controlAbort {
					delete(abortedBy, producer)
				}
				rec = Message{Offset: r.Offset, Skip: true}
				f.recv.Receive(p, &rec)
				p.next = r.Offset + 1
				continue
			}
			if ctx.Err() != nil { // revoked: hand nothing more on
				closeRecord(r)
				return got, nil
			}
			if !*held && !f.recv.Admit(ctx) {
				closeRecord(r)
				return got, nil
			}
			*held = false
			rec, err = readRecord(r)
			if err != nil {
				f.recv.Return()
				return got, fmt.Errorf("fetch %s/%d: reading record %d: %w", p.Topic, p.ID, r.Offset, err)
			}
			p.next = r.Offset + 1
			got++
			f.recv.Receive(p, &rec)
		}
	}
	return got, nil
}

// readRecord copies a fetched record out of the response's buffers.
func readRecord(r *protocol.Record) (Message, error) {
	defer closeRecord(r)
	rec := Message{Offset: r.Offset, Time: r.Time}
	var err error
	if r.Key != nil {
		if rec.Key, err = protocol.ReadAll(r.Key); err != nil {
			return rec, err
		}
	}
	if r.Value != nil {
		if rec.Value, err = protocol.ReadAll(r.Value); err != nil {
			return rec, err
		}
	}
	if len(r.Headers) > 0 {
		rec.Headers = slices.Clone(r.Headers)
	}
	return rec, nil
}

func closeRecord(r *protocol.Record) {
	if r.Key != nil {
		r.Key.Close()
	}
	if r.Value != nil {
		r.Value.Close()
	}
}
