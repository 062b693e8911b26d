package processor

import (
	"context"
	"sync"

	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
)

// receiver takes fetched records into the flow. Each record holds a slot of budget until its
// event finishes: the in-flight budget for the events topics, the delayed budget (MaxDelayed)
// for the delay topic, so that a night of delayed notifications does not stall the events.
type receiver struct {
	p      *Processor
	parts  []*partition // by kafkaio.Partition.Tag
	budget chan struct{}
	take   func(pt *partition, rec *kafkaio.Message)
}

func (p *Processor) eventReceiver(parts []*partition) *receiver {
	return &receiver{p: p, parts: parts, budget: p.budget, take: func(pt *partition, rec *kafkaio.Message) {
		p.metrics.inFlight.Inc()
		p.handle(pt, rec)
	}}
}

func (p *Processor) delayReceiver(parts []*partition, holds *sync.WaitGroup) *receiver {
	return &receiver{p: p, parts: parts, budget: p.delayBudget, take: func(pt *partition, rec *kafkaio.Message) {
		p.metrics.delayedHeld.Inc()
		p.holdDelayed(pt.gctx, pt, rec, holds)
	}}
}

func (r *receiver) Admit(ctx context.Context) bool { return admit(ctx, r.budget) }

func (r *receiver) Return() { <-r.budget }

func (r *receiver) Receive(kp *kafkaio.Partition, rec *kafkaio.Message) {
	pt := r.parts[kp.Tag]
	if !pt.arrive(r.p, rec) {
		if !rec.Skip {
			<-r.budget
		}
		return
	}
	r.take(pt, rec)
}

func admit(ctx context.Context, budget chan struct{}) bool {
	select {
	case budget <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

// arrive does the tracking every fetched record needs and reports whether the record is work
// to do: not a transaction marker or aborted record, and not finished before this generation
// (the commit metadata listed it).
func (pt *partition) arrive(p *Processor, rec *kafkaio.Message) bool {
	if !pt.tracker.accepts(rec.Offset) {
		// The log was truncated below records already handed on (a broker lost data and the
		// fetcher resumed lower): let their work finish so the tracker sees offsets in order
		// again, and let the commit point move back.
		p.log.WithFields(logrus.Fields{"topic": pt.topic, "partition": pt.id, "offset": rec.Offset}).
			Warn("the partition's log restarts below offsets already handed on; waiting for their work before going on")
		select {
		case <-pt.tracker.drained():
		case <-pt.gctx.Done():
			return false
		}
		pt.tracker.reset(rec.Offset)
	}
	defer pt.checkSpan()
	if rec.Skip || pt.tracker.restoredFinished(rec.Offset) {
		pt.tracker.pass(rec.Offset)
		return false
	}
	return true
}
