package wechat

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// pause is a quota stop of one (account, API): until when, and WeChat's errmsg that caused it.
type pause struct {
	until time.Time
	msg   string
}

type atomicPause = atomic.Pointer[pause]

// setPause publishes p unless a pause ending at or after p.until is already there. It reports
// whether p was published, so the caller logs and counts each stop once.
func setPause(ap *atomicPause, p *pause) bool {
	for {
		old := ap.Load()
		if old != nil && !old.until.Before(p.until) {
			return false
		}
		if ap.CompareAndSwap(old, p) {
			return true
		}
	}
}

// dailyStopped refuses a send of an (account, API) whose daily quota (45009) is exhausted.
func (c *Client) dailyStopped(st *apiState, now time.Time, attempts int) (Result, bool) {
	p := st.dailyUntil.Load()
	if p == nil || !now.Before(p.until) {
		return Result{}, false
	}
	return Result{
		ErrCode:  wxapi.ErrDailyQuota,
		ErrMsg:   fmt.Sprintf("daily quota of %s/%s exhausted: not sent until %s (WeChat said: %s)", st.acct.name, st.api.Name, p.until.Format(time.RFC3339), p.msg),
		Attempts: attempts,
		Class:    ClassQuota,
	}, true
}

func (c *Client) stopDaily(st *apiState, msg string) {
	p := &pause{until: wxapi.NextDailyReset(c.now()), msg: msg}
	if !setPause(&st.dailyUntil, p) {
		return
	}
	c.m.quotaTrips.WithLabelValues(st.acct.name, st.api.Name, "daily").Inc()
	c.log.WithFields(logrus.Fields{
		"account": st.acct.name, "api": st.api.Name, "errcode": wxapi.ErrDailyQuota, "errmsg": msg,
		"until": p.until.Format(time.RFC3339),
	}).Error("wechat daily quota exhausted: every send of this account and API fails until the next Beijing day")
}

func (c *Client) pauseMinute(st *apiState, msg string) {
	p := &pause{until: c.now().Truncate(time.Minute).Add(time.Minute), msg: msg}
	if !setPause(&st.minuteUntil, p) {
		return
	}
	c.m.quotaTrips.WithLabelValues(st.acct.name, st.api.Name, "minute").Inc()
	c.log.WithFields(logrus.Fields{
		"account": st.acct.name, "api": st.api.Name, "errcode": wxapi.ErrMinuteQuota, "errmsg": msg,
		"until": p.until.Format(time.RFC3339),
	}).Warn("wechat minute quota reached: sends of this account and API wait for the next minute")
}

// waitMinute waits out a 45011 pause of st, unless it ends after the deadline.
func (c *Client) waitMinute(ctx context.Context, st *apiState, deadline time.Time, r Result) (Result, bool) {
	p := st.minuteUntil.Load()
	if p == nil {
		return r, true
	}
	now := c.now()
	if !now.Before(p.until) {
		return r, true
	}
	if p.until.After(deadline) {
		return Result{
			ErrCode:  wxapi.ErrMinuteQuota,
			ErrMsg:   fmt.Sprintf("minute quota of %s/%s reached: paused until %s, after the retry deadline (WeChat said: %s)", st.acct.name, st.api.Name, p.until.Format(time.RFC3339), p.msg),
			Attempts: r.Attempts,
			Class:    ClassQuota,
		}, false
	}
	if err := c.cfg.Sleep(ctx, p.until.Sub(now)); err != nil {
		return gaveUp(r, err), false
	}
	return r, true
}

// waitLimit takes a token from the account-wide and the per-API bucket, waiting as needed. The
// reservation is made on the injected clock so tests need not sleep.
func (c *Client) waitLimit(ctx context.Context, st *apiState, deadline time.Time, r Result) (Result, bool) {
	for _, l := range [2]*rate.Limiter{st.acct.limiter, st.limiter} {
		if l == nil {
			continue
		}
		now := c.now()
		res := l.ReserveN(now, 1)
		d := res.DelayFrom(now)
		if d == 0 {
			continue
		}
		if now.Add(d).After(deadline) {
			res.CancelAt(now)
			if r.Class == "" {
				r = Result{ErrCode: ErrNoAnswer, Attempts: r.Attempts, Class: ClassTransient, ErrMsg: "not sent"}
			}
			r.ErrMsg += fmt.Sprintf(" (rate limit of %s/%s: next slot after the retry deadline)", st.acct.name, st.api.Name)
			return r, false
		}
		if err := c.cfg.Sleep(ctx, d); err != nil {
			res.CancelAt(c.now())
			return gaveUp(r, err), false
		}
	}
	return r, true
}

// breakerSet holds the open circuit breakers of one account by template id. A missing entry is
// a closed breaker, so the hot path is one atomic load while nothing is broken.
type breakerSet struct {
	n  atomic.Int32 // len(m)
	mu sync.Mutex
	m  map[string]*breaker
}

// breaker is open while now < until; after that it is half-open: one send (the trial) goes
// through and closes or re-opens it.
type breaker struct {
	until time.Time
	code  int
	msg   string
	trial bool // a trial send is in flight
}

// admit decides whether a send of template tpl may go: refused is set if not; trial is set if
// this send is the half-open trial and must be reported back.
func (s *breakerSet) admit(now time.Time, tpl string) (trial bool, refused *Result) {
	if s.n.Load() == 0 {
		return false, nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.m[tpl]
	switch {
	case b == nil:
		return false, nil
	case now.Before(b.until):
		return false, &Result{ErrCode: b.code, Class: ClassConfig,
			ErrMsg: fmt.Sprintf("circuit breaker open for template %q until %s after errcode %d: %s", tpl, b.until.Format(time.RFC3339), b.code, b.msg)}
	case b.trial:
		return false, &Result{ErrCode: b.code, Class: ClassConfig,
			ErrMsg: fmt.Sprintf("circuit breaker half-open for template %q (trial send in flight) after errcode %d: %s", tpl, b.code, b.msg)}
	}
	b.trial = true
	return true, nil
}

// breakerReport feeds a Send's result to the account's breaker of req.TemplateID: a config fault
// answered by WeChat opens it (or re-opens it after a failed trial); a trial that got a verdict
// on the message closes it; a trial without one (transient, token) lets the next send try.
func (c *Client) breakerReport(a *account, req *Request, trial, answered bool, r Result) {
	s := &a.breakers
	now := c.now()
	var event string
	var until time.Time
	s.mu.Lock()
	b := s.m[req.TemplateID]
	switch {
	case answered && r.Class == ClassConfig:
		if b == nil {
			b = &breaker{}
			s.m[req.TemplateID] = b
			s.n.Add(1)
			event = "opened"
		} else if trial || (!b.trial && !now.Before(b.until)) {
			event = "re-opened"
		}
		if event != "" {
			b.until, b.code, b.msg, b.trial = now.Add(c.cfg.BreakerCooldown), r.ErrCode, r.ErrMsg, false
			until = b.until
		}
	case !trial || b == nil:
	case answered && (r.Class == ClassOK || r.Class == ClassPermanent || r.Class == ClassQuota):
		delete(s.m, req.TemplateID)
		s.n.Add(-1)
		event = "closed"
	default:
		b.trial = false
	}
	s.mu.Unlock()

	switch event {
	case "opened", "re-opened":
		a.trips.Inc()
		c.log.WithFields(logrus.Fields{
			"account": a.name, "api": req.API, "template_id": req.TemplateID,
			"errcode": r.ErrCode, "errmsg": r.ErrMsg, "until": until.Format(time.RFC3339),
		}).Error("wechat circuit breaker " + event + ": config fault, sends of this template fail until the cooldown ends")
	case "closed":
		c.log.WithFields(logrus.Fields{"account": a.name, "api": req.API, "template_id": req.TemplateID}).
			Info("wechat circuit breaker closed: trial send got through")
	}
}

// snapshot emits the state gauges at scrape time.
func (c *Client) snapshot(emit func(desc *prometheus.Desc, v float64, labels ...string)) {
	now := c.now()
	b2f := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	for _, name := range c.names {
		a := c.accounts[name]
		open := 0
		a.breakers.mu.Lock()
		for _, b := range a.breakers.m {
			if now.Before(b.until) {
				open++
			}
		}
		a.breakers.mu.Unlock()
		if f := a.fault.Load(); f != nil && now.Before(f.until) {
			open++
		}
		emit(c.m.breakerOpen, float64(open), name)
		for _, st := range a.apiList {
			d, m := st.dailyUntil.Load(), st.minuteUntil.Load()
			emit(c.m.quotaPaused, b2f(d != nil && now.Before(d.until)), name, st.api.Name, "daily")
			emit(c.m.quotaPaused, b2f(m != nil && now.Before(m.until)), name, st.api.Name, "minute")
		}
	}
}
