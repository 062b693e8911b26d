package processor

import (
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// event is one fetched record on its way through: it finishes (its offset may be committed)
// once every one of its notifications has an acknowledged outcome.
type event struct {
	p       *Processor
	pt      *partition
	rec     kafkaio.Message
	slot    slot
	id      string
	time    time.Time // occurred_at, else the record's timestamp
	version string    // rule set version that evaluated it
	start   time.Time
	pending atomic.Int32
	lost    atomic.Bool    // an outcome was never acknowledged: the offset must stay uncommitted
	delayed *delayedRecord // set for a record of the delay topic (delay.go)
}

// handle evaluates one record and starts its notifications. It runs on the partition's fetch
// goroutine, so records of a partition enter the scheduler in offset order.
func (p *Processor) handle(pt *partition, rec *kafkaio.Message) {
	pt.countConsumed(p.metrics)
	ev := &event{p: p, pt: pt, rec: *rec, slot: pt.tracker.add(rec.Offset), start: p.cfg.Now()}
	msg := &ev.rec

	decoded, err := rules.DecodeEvent(msg.Value)
	if err != nil {
		p.deadLetter(ev, "undecodable", err)
		return
	}
	meta := rules.Meta{EventID: decoded.ID(), Topic: pt.topic, Partition: pt.id, Offset: msg.Offset, Key: msg.Key, Time: msg.Time}
	meta.EventID = meta.ID()
	ev.id = meta.EventID
	ev.time = msg.Time
	if t, ok := decoded.OccurredAt(); ok {
		ev.time = t
	}
	set := p.rules.Current()
	ev.version = set.Version
	// The notifications are copied into their tasks or finished before handle returns, so one
	// buffer per partition serves every event.
	notes := set.Evaluate(decoded, meta, pt.notes[:0])
	defer func() { clear(notes); pt.notes = notes[:0] }()

	n := 0
	for i := range notes {
		if notes[i].WhenErr {
			p.metrics.ruleErrors.WithLabelValues(notes[i].Rule.Name).Inc()
			p.log.WithError(notes[i].Err).WithFields(logrus.Fields{"event_id": ev.id, "rule": notes[i].Rule.Name}).Debug("rule condition failed to evaluate; treated as no match")
			continue
		}
		n++
	}
	if n == 0 {
		p.metrics.unmatched.Inc()
		ev.finish()
		return
	}
	ev.pending.Store(int32(n))
	laneKey := ""
	if len(msg.Key) > 0 {
		laneKey = "k\x00" + pt.topic + "\x00" + strconv.Itoa(pt.id) + "\x00" + string(msg.Key)
	}
	for i := range notes {
		note := &notes[i]
		switch {
		case note.WhenErr:
		case note.Err != nil:
			p.emitInLane(ev, note, laneKey, StatusRejected, wechat.Result{ErrMsg: note.Err.Error()})
		case hasControls(note.Rule) && p.gate(ev, note, laneKey):
			// Notification controls (controls.go): expired, skipped or delayed.
		default:
			p.dispatch(ev, note, laneKey, p.cfg.DryRun || note.Rule.DryRun)
		}
	}
}

// dispatch starts a notification that passed the controls decided at evaluation: a dry run
// needs no lane but the Kafka key's (its outcome's order) unless dedupe or throttle must decide
// it in order; anything else becomes a task in the Kafka key's lane, the recipient's lane and,
// with dedupe, the dedupe key's lane.
func (p *Processor) dispatch(ev *event, note *rules.Notification, laneKey string, dry bool) {
	stateful := hasStateful(note.Rule)
	if dry && !stateful {
		p.emitInLane(ev, note, laneKey, StatusDryRun, wechat.Result{})
		return
	}
	userKey := "u\x00" + note.Rule.Account + "\x00" + note.ToUser
	dedupeKey := ""
	if note.Rule.Dedupe != nil {
		dedupeKey = "d\x00" + storeName(note.Rule.Name, dry) + "\x00" + note.DedupeKey
	}
	j := &sendJob{p: p, ev: ev, note: *note, dry: dry, stateful: stateful}
	j.job = j
	j.setKeys(laneKey, userKey, dedupeKey)
	p.sched.submit(&j.task)
}

// sendJob is the scheduler task of one notification.
type sendJob struct {
	task
	p             *Processor
	ev            *event
	note          rules.Notification
	dry, stateful bool
}

func (j *sendJob) runTask(t *task) { j.p.send(t, j.ev, &j.note, j.dry, j.stateful) }

// send makes the WeChat call for one notification. It holds the notification's lanes for the
// call and until the outcome is published (queued, not acknowledged), so that the outcomes of
// one Kafka key are published in their events' order.
func (p *Processor) send(t *task, ev *event, note *rules.Notification, dry, stateful bool) {
	var adm admission
	if stateful {
		var why string
		if adm, why = p.controls.admit(note, dry, p.cfg.Now()); why != "" {
			p.emit(ev, note, StatusSkipped, wechat.Result{ErrMsg: why})
			p.sched.done(t)
			return
		}
	}
	if dry {
		adm.settle(true, p.cfg.Now())
		p.emit(ev, note, StatusDryRun, wechat.Result{})
		p.sched.done(t)
		return
	}
	res := p.sender.Send(p.sendCtx, wechat.Request{
		Account:        note.Rule.Account,
		API:            note.Rule.API,
		Body:           note.Body,
		ToUser:         note.ToUser,
		TemplateID:     note.TemplateID,
		RetryOnTimeout: note.Rule.RetryOnTimeout,
	})
	if stateful {
		adm.settle(res.OK(), p.cfg.Now())
	}
	status := StatusSent
	if !res.OK() {
		status = StatusFailed
		p.warn.WithFields(logrus.Fields{
			"event_id": ev.id, "rule": note.Rule.Name, "api": note.Rule.API, "errcode": res.ErrCode,
			"errmsg": res.ErrMsg, "class": res.Class, "attempts": res.Attempts,
			"topic": ev.pt.topic, "partition": ev.pt.id, "offset": ev.rec.Offset,
		}).Warn("notification failed")
	}
	p.emit(ev, note, status, res)
	p.sched.done(t)
}

// emitInLane publishes an outcome decided without a send (rejected, expired, skipped, a dry run)
// from the event's Kafka key lane, after the outcomes of the key's earlier events, as a send's
// outcome is. An event without a key has no order to keep.
func (p *Processor) emitInLane(ev *event, note *rules.Notification, laneKey, status string, res wechat.Result) {
	if laneKey == "" {
		p.emit(ev, note, status, res)
		return
	}
	n := *note // the caller's buffer is reused for the next event
	p.sched.submit(newTask(func(t *task) {
		p.emit(ev, &n, status, res)
		p.sched.done(t)
	}, laneKey))
}

// emit publishes the outcome of one notification.
func (p *Processor) emit(ev *event, note *rules.Notification, status string, res wechat.Result) {
	now := p.cfg.Now()
	o := Outcome{
		Schema:      OutcomeSchema,
		EventID:     ev.id,
		Rule:        note.Rule.Name,
		RuleVersion: ev.version,
		Account:     note.Rule.Account,
		API:         note.Rule.API,
		ToUser:      note.ToUser,
		TemplateID:  note.TemplateID,
		Status:      status,
		ErrCode:     res.ErrCode,
		ErrMsg:      res.ErrMsg,
		MsgID:       res.MsgID,
		Attempts:    res.Attempts,
		Class:       string(res.Class),
		Source:      Source{Topic: ev.pt.topic, Partition: ev.pt.id, Offset: ev.rec.Offset},
		EventTime:   formatTime(ev.time),
		ProcessedAt: formatTime(now),
		LatencyMS:   latencyMS(now.Sub(ev.start)),
	}
	if status == StatusDryRun {
		o.Body = note.Body
	}
	if d := ev.delayed; d != nil {
		o.Source, o.DelayedUntil = d.Source, formatTime(d.NotBefore)
	}
	if status == StatusRejected {
		p.warn.WithFields(logrus.Fields{"event_id": ev.id, "rule": note.Rule.Name, "reason": res.ErrMsg,
			"topic": ev.pt.topic, "partition": ev.pt.id, "offset": ev.rec.Offset}).Warn("notification rejected")
	}
	p.metrics.notified(note.Rule.Name, note.Rule.API, status)
	value, err := o.appendJSON(make([]byte, 0, o.encodedLen()))
	if err != nil { // cannot happen for this struct; keep the event unfinished rather than lose it
		p.log.WithError(err).WithField("event_id", ev.id).Error("encoding outcome")
		return
	}
	p.pub.Publish(kafkaio.Record{Topic: p.cfg.OutcomesTopic, Key: ev.rec.Key, Value: value}, ev.acked)
}

// acked is the Publisher callback for each of the event's records.
func (ev *event) acked(err error) {
	if err != nil {
		ev.lost.Store(true)
		var perr *kafkaio.PermanentError
		if errors.As(err, &perr) {
			ev.p.stopWith(err)
		}
	}
	if ev.pending.Add(-1) != 0 {
		return
	}
	if ev.lost.Load() {
		// The writer closed before the broker acknowledged an outcome: leave the offset
		// uncommitted so the next owner redoes the event, but give back the budget.
		ev.slot.abandon()
		ev.release()
		return
	}
	ev.finish()
}

func (ev *event) finish() {
	ev.slot.finish()
	ev.p.metrics.eventSeconds.Observe(ev.p.cfg.Now().Sub(ev.start).Seconds())
	ev.release()
}

// release gives back the budget the event was fetched under.
func (ev *event) release() {
	if ev.delayed != nil {
		<-ev.p.delayBudget
		ev.p.metrics.delayedHeld.Dec()
		return
	}
	ev.p.release()
}

func (p *Processor) release() {
	<-p.budget
	p.metrics.inFlight.Dec()
}

// deadLetter copies an event the processor cannot handle to the dead-letter topic with the
// reason and its source coordinates in headers, and lets the stream move on once it is written.
func (p *Processor) deadLetter(ev *event, reason string, cause error) {
	p.metrics.deadLettered.WithLabelValues(reason).Inc()
	p.warn.WithError(cause).WithFields(logrus.Fields{"topic": ev.pt.topic, "partition": ev.pt.id, "offset": ev.rec.Offset, "reason": reason}).
		Warn("event written to the dead-letter topic")
	headers := append([]kafkaio.Header(nil), ev.rec.Headers...)
	headers = append(headers,
		kafkaio.Header{Key: "wxnotify.reason", Value: []byte(reason)},
		kafkaio.Header{Key: "wxnotify.error", Value: []byte(cause.Error())},
		kafkaio.Header{Key: "wxnotify.source.topic", Value: []byte(ev.pt.topic)},
		kafkaio.Header{Key: "wxnotify.source.partition", Value: []byte(strconv.Itoa(ev.pt.id))},
		kafkaio.Header{Key: "wxnotify.source.offset", Value: []byte(strconv.FormatInt(ev.rec.Offset, 10))},
		kafkaio.Header{Key: "wxnotify.source.timestamp", Value: []byte(formatTime(ev.rec.Time))},
	)
	ev.pending.Store(1)
	p.pub.Publish(kafkaio.Record{Topic: p.cfg.DeadLetterTopic, Key: ev.rec.Key, Value: ev.rec.Value, Headers: headers, Truncatable: true}, ev.acked)
}
