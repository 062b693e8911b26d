package processor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Delayed delivery (quiet_hours with action delay).
//
// A notification that falls in its rule's quiet hours is not held in memory: it is rendered as
// usual and published, body and all, to the delay topic (Config.DelayTopic) with the time it may
// go in a header. Its source event then finishes like any other once the broker acknowledges
// that record, so the source offset is committed and a restart does not evaluate it again.
//
// The processor consumes the delay topic in the same consumer group. Each delayed record is
// held until its not-before time (at most Config.MaxDelayed records per process; fetching a
// delay partition pauses when the bound is reached), then sent through the same scheduler,
// controls (dedupe, throttle) and outcome path as any notification, with its original event id,
// rule, rule version, source coordinates and event time, so its outcome looks like an
// undelayed one plus delayed_until. The delay partition's offset is committed only past records
// whose outcome is acknowledged. On a restart or rebalance, held records are handed back
// uncommitted and the partition's next owner re-reads and holds them again: nothing is lost, and
// a record sent but not yet committed may be sent twice (as for any event).
//
// The record is the rendered notification, not the event: a rule changed or removed by a reload
// while a notification is delayed does not change what is sent; its current dedupe and throttle
// settings (looked up by rule name) apply when it goes. expire_after is not checked again: a rule
// that delays chose to deliver late.

const (
	delayedSchema   = "wxnotify.delayed/v1"
	headerNotBefore = "wxnotify.not_before"
)

// delayedRecord is the value of a delay topic record.
type delayedRecord struct {
	Schema         string          `json:"schema"`
	NotBefore      time.Time       `json:"not_before"`
	EventID        string          `json:"event_id"`
	Rule           string          `json:"rule"`
	RuleVersion    string          `json:"rule_version"`
	Account        string          `json:"account"`
	API            string          `json:"api"`
	ToUser         string          `json:"touser"`
	TemplateID     string          `json:"template_id"`
	Body           json.RawMessage `json:"body"`
	RetryOnTimeout bool            `json:"retry_on_timeout,omitempty"`
	DryRun         bool            `json:"dry_run,omitempty"`
	DedupeKey      string          `json:"dedupe_key,omitempty"`
	ThrottleKey    string          `json:"throttle_key,omitempty"`
	Source         Source          `json:"source"`
	EventTime      time.Time       `json:"event_time"`
	Reason         string          `json:"reason"`
}

// delay publishes note to the delay topic, to be sent at notBefore. Like an outcome, the
// record's acknowledgement is what lets the source event finish.
func (p *Processor) delay(ev *event, note *rules.Notification, notBefore time.Time, reason string) {
	rec := delayedRecord{
		Schema: delayedSchema, NotBefore: notBefore.UTC(),
		EventID: ev.id, Rule: note.Rule.Name, RuleVersion: ev.version,
		Account: note.Rule.Account, API: note.Rule.API, ToUser: note.ToUser, TemplateID: note.TemplateID,
		Body: note.Body, RetryOnTimeout: note.Rule.RetryOnTimeout, DryRun: p.cfg.DryRun || note.Rule.DryRun,
		DedupeKey: note.DedupeKey, ThrottleKey: note.ThrottleKey,
		Source:    Source{Topic: ev.pt.topic, Partition: ev.pt.id, Offset: ev.rec.Offset},
		EventTime: ev.time, Reason: reason,
	}
	if ev.delayed != nil { // delayed again: keep where the event was read
		rec.Source = ev.delayed.Source
	}
	value, err := json.Marshal(&rec)
	if err != nil { // cannot happen for this struct; keep the event unfinished rather than lose it
		p.log.WithError(err).WithField("event_id", ev.id).Error("encoding delayed notification")
		return
	}
	p.metrics.delayed.WithLabelValues(note.Rule.Name, note.Rule.API).Inc()
	p.pub.Publish(kafkaio.Record{Topic: p.cfg.DelayTopic, Key: ev.rec.Key, Value: value, Headers: []kafkaio.Header{
		{Key: headerNotBefore, Value: []byte(rec.NotBefore.Format(time.RFC3339Nano))},
		{Key: "wxnotify.event_id", Value: []byte(ev.id)},
		{Key: "wxnotify.rule", Value: []byte(rec.Rule)},
	}}, ev.acked)
}

// decodeDelayed reads a delay topic record; the not-before header wins over the body's.
func decodeDelayed(msg *kafkaio.Message) (*delayedRecord, error) {
	var rec delayedRecord
	if err := json.Unmarshal(msg.Value, &rec); err != nil {
		return nil, fmt.Errorf("delayed record: %w", err)
	}
	if rec.Schema != delayedSchema {
		return nil, fmt.Errorf("delayed record: schema %q, want %q", rec.Schema, delayedSchema)
	}
	for _, h := range msg.Headers {
		if h.Key == headerNotBefore {
			t, err := time.Parse(time.RFC3339Nano, string(h.Value))
			if err != nil {
				return nil, fmt.Errorf("delayed record: header %s: %w", headerNotBefore, err)
			}
			rec.NotBefore = t
		}
	}
	if rec.Rule == "" || rec.Account == "" || rec.API == "" || len(rec.Body) == 0 {
		return nil, errors.New("delayed record: rule, account, api and body are required")
	}
	return &rec, nil
}

// holdDelayed registers one delayed record and sends it at its time, or hands it back
// unfinished if the partition is revoked first.
func (p *Processor) holdDelayed(gctx context.Context, pt *partition, r *kafkaio.Message, holds *sync.WaitGroup) {
	pt.countConsumed(p.metrics)
	ev := &event{p: p, pt: pt, rec: *r, slot: pt.tracker.add(r.Offset), start: p.cfg.Now()}
	rec, err := decodeDelayed(&ev.rec)
	if err != nil {
		meta := rules.Meta{Topic: pt.topic, Partition: pt.id, Offset: r.Offset}
		ev.id = meta.ID()
		ev.delayed = &delayedRecord{}
		p.deadLetter(ev, "undecodable", err)
		return
	}
	ev.delayed, ev.id, ev.time, ev.version = rec, rec.EventID, rec.EventTime, rec.RuleVersion
	wait := rec.NotBefore.Sub(p.cfg.Now())
	if wait <= 0 {
		p.releaseDelayed(ev)
		return
	}
	holds.Add(1)
	go func() {
		defer holds.Done()
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
			p.releaseDelayed(ev)
		case <-gctx.Done():
			ev.slot.abandon()
			ev.release()
		}
	}()
}

// releaseDelayed sends a delayed notification whose time has come.
func (p *Processor) releaseDelayed(ev *event) {
	rec := ev.delayed
	ev.start = p.cfg.Now()
	// The notification as rendered when it was delayed, under its rule's current dedupe and
	// throttle settings; quiet hours and expiry are not applied again.
	rule := &rules.Rule{Name: rec.Rule, Account: rec.Account, API: rec.API, RetryOnTimeout: rec.RetryOnTimeout}
	if cur := p.rules.Current(); cur != nil {
		for _, r := range cur.Rules {
			if r.Name == rec.Rule {
				rule.Dedupe, rule.Throttle = r.Dedupe, r.Throttle
				break
			}
		}
	}
	note := &rules.Notification{Rule: rule, Body: rec.Body, ToUser: rec.ToUser, TemplateID: rec.TemplateID,
		DedupeKey: rec.DedupeKey, ThrottleKey: rec.ThrottleKey}
	if rule.Dedupe != nil && note.DedupeKey == "" {
		rule.Dedupe = nil // delayed before the rule had dedupe: there is no key to apply it with
	}
	if rule.Throttle != nil && note.ThrottleKey == "" {
		note.ThrottleKey = note.ToUser // delayed before the rule had throttle: its default key
	}
	ev.pending.Store(1)
	p.dispatch(ev, note, rec.DryRun || p.cfg.DryRun)
}

// delayForQuota handles a notification that WeChat's daily quota (45009) refused, for a rule
// with on_daily_quota: delay: it waits in the delay topic until the quota resets at 00:00
// Beijing time, unless its expire_after ends first (then it is expired now).
func (p *Processor) delayForQuota(ev *event, note *rules.Notification, res wechat.Result) {
	now := p.cfg.Now()
	reset := wxapi.NextDailyReset(now)
	if r := note.Rule; r.ExpireAfter > 0 && !ev.time.IsZero() && !ev.time.Add(r.ExpireAfter).After(reset) {
		p.emit(ev, note, StatusExpired, wechat.Result{ErrCode: res.ErrCode, Class: res.Class, Attempts: res.Attempts,
			ErrMsg: fmt.Sprintf("expired: the daily quota is exhausted until %s and expire_after %s ends first (WeChat said: %s)",
				reset.Format(time.RFC3339), formatDuration(r.ExpireAfter), res.ErrMsg)})
		return
	}
	p.delay(ev, note, reset, "daily quota exhausted (on_daily_quota: delay): "+res.ErrMsg)
}
