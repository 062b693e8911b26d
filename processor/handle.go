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
	"github.com/wxnotify/wxnotify/sink/wxapi"
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
	// held: the event holds a slot of the held budget instead of the in-flight budget (hold.go).
	held atomic.Bool
}

// handle evaluates one record and starts its notifications. It runs on the partition's fetch
// goroutine, so records of a partition enter the scheduler in offset order.
func (p *Processor) handle(pt *partition, rec *kafkaio.Message) {
	pt.countConsumed(p.metrics)
	ev := &event{p: p, pt: pt, rec: *rec, slot: pt.tracker.add(rec.Offset), start: p.cfg.Now()}
	msg := &ev.rec

	decoded, err := rules.DecodeEvent(msg.Value)
	if err != nil {
		reason := "undecodable"
		if errors.Is(err, rules.ErrInvalidUTF8) {
			reason = "invalid_utf8" // never sent with replacement characters
		}
		p.deadLetter(ev, reason, err)
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
	for i := range notes {
		note := &notes[i]
		switch {
		case note.WhenErr:
		case note.Err != nil:
			p.emitInLane(ev, note, StatusRejected, wechat.Result{ErrMsg: note.Err.Error()})
		case hasControls(note.Rule) && p.gate(ev, note):
			// Notification controls (controls.go): expired, skipped or delayed.
		default:
			p.dispatch(ev, note, p.cfg.DryRun || note.Rule.DryRun)
		}
	}
	// What the notifications need is in them now; the value and headers would only weigh on
	// memory while the event is in flight (or held).
	ev.rec.Value, ev.rec.Headers = nil, nil
}

// dispatch starts a notification that passed the controls decided at evaluation: a dry run
// needs no lane but the Kafka key's (its outcome's order) unless dedupe or throttle must decide it
// in order; anything else becomes a task in three lanes, all through the rule's account and API,
// so that an API held through an outage (hold.go) does not stop another: the Kafka key's
// (notifications of one key are sent, and their outcomes published, in offset order), the
// recipient's (one send at a time per user: WeChat answers 43108 to concurrent subscribe sends)
// and, with dedupe, the dedupe key's.
func (p *Processor) dispatch(ev *event, note *rules.Notification, dry bool) {
	stateful := hasStateful(note.Rule)
	if dry && !stateful {
		p.emitInLane(ev, note, StatusDryRun, wechat.Result{})
		return
	}
	laneKey := p.keyLane(ev, note)
	userKey := "u\x00" + note.Rule.Account + "\x00" + note.Rule.API + "\x00" + note.ToUser
	dedupeKey := ""
	if note.Rule.Dedupe != nil {
		dedupeKey = "d\x00" + storeName(note.Rule.Name, dry) + "\x00" + note.DedupeKey
	}
	j := &sendJob{p: p, ev: ev, note: *note, dry: dry, stateful: stateful}
	j.job = j
	j.setKeys(laneKey, userKey, dedupeKey)
	if !dry && p.holds.held(j.gateKey()) {
		// It will park, or wait in a lane behind one that did: either way it should not take
		// the in-flight budget from the (account, API)s that flow.
		ev.moveToHeld()
	}
	p.sched.submit(&j.task)
}

// sendJob is the scheduler task of one notification.
type sendJob struct {
	task
	p             *Processor
	ev            *event
	note          rules.Notification
	dry, stateful bool
	// Hold state (hold.go), under holds.mu while parked: probe and resumed say why a parked
	// job runs again; parkedAt is when it first parked.
	probe, resumed bool
	parkedAt       time.Time
}

func (j *sendJob) runTask(*task) { j.run() }

func (j *sendJob) gateKey() gateKey { return gateKey{j.note.Rule.Account, j.note.Rule.API} }

// end reports the job's outcome and then releases its lanes: the outcome is published (queued,
// not acknowledged) before the key's next notification may run, so that the outcomes of one
// Kafka key are published in their events' order.
func (j *sendJob) end(status string, res wechat.Result) {
	j.p.emit(j.ev, &j.note, status, res)
	j.p.sched.done(&j.task)
}

// abandon releases the job's lanes and gives its notification up unfinished: the event is not
// committed, and the partition's next owner redoes it.
func (j *sendJob) abandon() {
	j.p.sched.done(&j.task)
	j.ev.acked(errAbandoned)
}

// run makes the WeChat call for one notification. It holds the notification's lanes for the call
// and until the outcome is published (see end). While its (account, API) is held it parks
// instead.
func (j *sendJob) run() {
	p, ev, note := j.p, j.ev, &j.note
	if !j.dry && !p.holds.admit(j) {
		return // parked: lanes kept, worker free
	}
	var adm admission
	if j.stateful {
		var why string
		if adm, why = p.controls.admit(note, j.dry, p.cfg.Now()); why != "" {
			p.holds.released(j)
			j.end(StatusSkipped, wechat.Result{ErrMsg: why})
			return
		}
	}
	if j.dry {
		adm.settle(true, p.cfg.Now())
		j.end(StatusDryRun, wechat.Result{})
		return
	}
	req := wechat.Request{
		Account:        note.Rule.Account,
		API:            note.Rule.API,
		Body:           note.Body,
		ToUser:         note.ToUser,
		TemplateID:     note.TemplateID,
		RetryOnTimeout: note.Rule.RetryOnTimeout,
	}
	if j.probe {
		req.MaxAttempts = 1
	}
	res := p.sender.Send(p.sendCtx, req)
	if j.stateful {
		adm.settle(res.OK(), p.cfg.Now())
	}
	switch {
	case !res.OK() && p.sendCtx.Err() != nil:
		// Stopped past the drain: not an answer, just given up; the next owner redoes it.
		j.abandon()
		return
	case holdable(res):
		p.holds.failed(j, res)
		return
	}
	p.holds.answered(j)
	if res.ErrCode == wxapi.ErrDailyQuota && note.Rule.OnDailyQuota == rules.DailyQuotaDelay && p.cfg.DelayTopic != "" {
		p.delayForQuota(ev, note, res)
		p.sched.done(&j.task)
		return
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
	j.end(status, res)
}

// keyLane is the scheduler lane of ev's Kafka key through note's account and API ("" for an
// event without a key, or a delayed record: they have no order to keep).
func (p *Processor) keyLane(ev *event, note *rules.Notification) string {
	if len(ev.rec.Key) == 0 || ev.delayed != nil {
		return ""
	}
	return "k\x00" + note.Rule.Account + "\x00" + note.Rule.API + "\x00" + ev.pt.topic + "\x00" + strconv.Itoa(ev.pt.id) + "\x00" + string(ev.rec.Key)
}

// emitInLane publishes an outcome decided without a send (rejected, expired, skipped, a dry run)
// from the event's key lane, after the outcomes of the key's earlier events, as a send's outcome
// is. An event without a key has no order to keep.
func (p *Processor) emitInLane(ev *event, note *rules.Notification, status string, res wechat.Result) {
	laneKey := p.keyLane(ev, note)
	if laneKey == "" {
		p.emit(ev, note, status, res)
		return
	}
	o := &laneOutcome{p: p, ev: ev, note: *note, status: status, res: res}
	o.job = o
	o.setKeys(laneKey)
	p.sched.submit(&o.task)
}

// laneOutcome is the scheduler task of emitInLane: like sendJob, it embeds its task, so the
// task and its copy of the notification (the caller's buffer is reused for the next event) are
// one allocation.
type laneOutcome struct {
	task
	p      *Processor
	ev     *event
	note   rules.Notification
	status string
	res    wechat.Result
}

func (o *laneOutcome) runTask(t *task) {
	o.p.emit(o.ev, &o.note, o.status, o.res)
	o.p.sched.done(t)
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
	p.metrics.notified(note.Rule.Name, note.Rule.API, status, string(res.Class))
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

// release gives back the budget the event holds.
func (ev *event) release() {
	switch {
	case ev.delayed != nil:
		<-ev.p.delayBudget
		ev.p.metrics.delayedHeld.Dec()
	case ev.held.Load():
		<-ev.p.heldBudget
		ev.p.metrics.heldEvents.Dec()
	default:
		ev.p.release()
	}
}

// moveToHeld moves the event from the in-flight budget to the held budget when one of its
// notifications parks, so fetching goes on for the other (account, API)s. With the held budget
// full it keeps its in-flight slot. Delayed records keep their own budget.
func (ev *event) moveToHeld() {
	if ev.delayed != nil || !ev.held.CompareAndSwap(false, true) {
		return
	}
	select {
	case ev.p.heldBudget <- struct{}{}:
		ev.p.release()
		ev.p.metrics.heldEvents.Inc()
	default:
		ev.held.Store(false)
	}
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
