package processor

import (
	"cmp"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/sink/wechat"
	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Holding through a WeChat outage.
//
// A notification whose send ends transient (-1, HTTP 5xx, timeouts, connection errors, 43108,
// and 45011 once its pauses ran out) after the client's retries is not failed: it is parked, and
// its (account, API) is held. While held, its notifications park as they reach their send,
// without calling WeChat, except one probe at a time after a backoff (1s doubling to 30s, with
// jitter), which is a parked notification sent with a single attempt. When a probe, or any send,
// gets an answer that is not transient, the (account, API) resumes, and its parked notifications
// are sent again, oldest first, at most resumeConcurrency at a time.
//
// A parked notification keeps its scheduler lanes, so notifications of one Kafka key through
// one account and API, and sends to one user, stay in order and one at a time; its event's
// offset stays uncommitted. When it parks, its event moves from the in-flight budget to the held
// budget (MaxHeld), so the other (account, API)s keep flowing while one is held; with the held
// budget full, the event keeps its in-flight slot and fetching slows to what the in-flight
// budget allows. Other (account, API)s are not affected by one being held.
//
// A parked notification ends as expired once its rule's expire_after passes, and as failed
// (the errmsg says why) after MaxHold; the parked notifications of a revoked partition are
// abandoned at once, uncommitted, for the next owner to redo.

const (
	holdFirstProbe    = time.Second
	holdMaxProbe      = 30 * time.Second
	resumeConcurrency = 256
	holdSweep         = time.Second
)

// errAbandoned marks a notification given up unfinished: its event stays uncommitted.
var errAbandoned = errors.New("abandoned: the partition was revoked")

type gateKey struct{ account, api string }

// holds is the hold state of every (account, API).
type holds struct {
	p *Processor
	// firstProbe, maxProbe and sweepEvery are holdFirstProbe, holdMaxProbe and holdSweep;
	// shorter in tests.
	firstProbe, maxProbe, sweepEvery time.Duration

	mu      sync.Mutex
	gates   map[gateKey]*gate
	parked  int
	sweeper *time.Timer // runs sweep while anything is parked
	closed  bool
}

// gate is one (account, API)'s hold state.
type gate struct {
	key      gateKey
	held     bool
	since    time.Time
	lastErr  string
	queue    []*sendJob // parked, oldest first
	probing  bool
	resuming int // resumed notifications not yet answered
	backoff  time.Duration
	timer    *time.Timer
	metric   prometheus.Gauge
}

func newHolds(p *Processor) *holds {
	return &holds{p: p, gates: map[gateKey]*gate{}, firstProbe: holdFirstProbe, maxProbe: holdMaxProbe, sweepEvery: holdSweep}
}

func (h *holds) gateLocked(k gateKey) *gate {
	g := h.gates[k]
	if g == nil {
		g = &gate{key: k, metric: h.p.metrics.wechatHeld.WithLabelValues(k.account, k.api)}
		h.gates[k] = g
	}
	return g
}

// holdable reports whether a send's result calls for holding rather than failing.
func holdable(r wechat.Result) bool {
	switch {
	case r.Class == wechat.ClassTransient:
		return !r.Ambiguous
	case r.Class == wechat.ClassQuota:
		return r.ErrCode == wxapi.ErrMinuteQuota
	}
	return false
}

// held reports whether the (account, API) is held now.
func (h *holds) held(k gateKey) bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gates[k]
	return g != nil && g.held
}

// admit reports whether j may call WeChat now; if not, j is parked (it keeps its lanes).
func (h *holds) admit(j *sendJob) bool {
	if j.probe || j.resumed {
		return true
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gates[j.gateKey()]
	if g == nil || !g.held {
		return true
	}
	h.parkLocked(g, j, false)
	return false
}

// failed parks j after its send ended holdable, and holds its (account, API).
func (h *holds) failed(j *sendJob, r wechat.Result) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gateLocked(j.gateKey())
	g.lastErr = r.ErrMsg
	if j.probe {
		g.backoff = min(2*g.backoff, h.maxProbe)
	}
	h.ranLocked(g, j)
	if !g.held {
		g.held, g.since, g.backoff = true, h.p.cfg.Now(), h.firstProbe
		g.metric.Set(1)
		h.p.log.WithFields(logrus.Fields{"account": g.key.account, "api": g.key.api, "errcode": r.ErrCode, "errmsg": r.ErrMsg}).
			Warn("wechat keeps failing for this account and api: holding its notifications (not failing them) and probing until it answers")
	}
	h.parkLocked(g, j, true)
	h.probeLaterLocked(g)
}

// answered notes that j's send got an answer that is not transient: a held (account, API)
// resumes.
func (h *holds) answered(j *sendJob) {
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gates[j.gateKey()] // set for a probe or a resume: they were parked
	if !j.probe && !j.resumed && (g == nil || !g.held) {
		return
	}
	h.ranLocked(g, j)
	if g.held {
		g.held = false
		g.metric.Set(0)
		if g.timer != nil {
			g.timer.Stop()
		}
		h.p.log.WithFields(logrus.Fields{"account": g.key.account, "api": g.key.api, "held_for": h.p.cfg.Now().Sub(g.since).Round(time.Millisecond).String(),
			"parked": len(g.queue)}).Info("wechat answers this account and api again: resuming its held notifications")
	}
	h.resumeLocked(g)
}

// released notes that j, probed or resumed, ended without an answer from WeChat (controls
// skipped it): the (account, API) stays as it is, and the next probe or resume goes out.
func (h *holds) released(j *sendJob) {
	if !j.probe && !j.resumed {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	g := h.gates[j.gateKey()]
	probe := j.probe
	h.ranLocked(g, j)
	if probe && g.held {
		h.probeLaterLocked(g)
	}
	h.resumeLocked(g)
}

// ranLocked notes that j, run again as g's probe or as one of its resumes, ended.
func (h *holds) ranLocked(g *gate, j *sendJob) {
	if j.probe {
		g.probing = false
	}
	if j.resumed {
		g.resuming--
	}
	j.probe, j.resumed = false, false
}

// parkLocked parks j: at the head when it is older than every parked one (it was resumed or
// probed), else at the tail.
func (h *holds) parkLocked(g *gate, j *sendJob, again bool) {
	ev := j.ev
	if ev.pt.revoked() {
		// Its partition is revoked: give it up now rather than hold the drain.
		j.abandon()
		return
	}
	if j.parkedAt.IsZero() {
		j.parkedAt = h.p.cfg.Now()
	}
	if again {
		g.queue = slices.Insert(g.queue, 0, j)
	} else {
		g.queue = append(g.queue, j)
	}
	h.parked++
	h.p.metrics.notificationsHeld.Set(float64(h.parked))
	ev.moveToHeld()
	if h.sweeper == nil && !h.closed {
		h.sweeper = time.AfterFunc(h.sweepEvery, h.sweep)
	}
}

// probeLaterLocked arms g's probe after its backoff, with jitter.
func (h *holds) probeLaterLocked(g *gate) {
	if g.probing || h.closed {
		return
	}
	d := g.backoff/2 + rand.N(g.backoff/2+1)
	if g.timer == nil {
		g.timer = time.AfterFunc(d, func() { h.probe(g) })
		return
	}
	g.timer.Reset(d)
}

// probe sends g's oldest parked notification with a single attempt.
func (h *holds) probe(g *gate) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if !g.held || g.probing || h.closed {
		return
	}
	if len(g.queue) == 0 {
		// Nothing waits: the next send tries WeChat for real, and holds it again if it fails.
		g.held = false
		g.metric.Set(0)
		h.p.log.WithFields(logrus.Fields{"account": g.key.account, "api": g.key.api}).
			Info("wechat hold lifted: no notification waits for this account and api; the next send tries it")
		return
	}
	j := h.popLocked(g)
	j.probe = true
	g.probing = true
	h.p.sched.start(&j.task)
}

// resumeLocked starts parked notifications while g is not held, at most resumeConcurrency at
// a time.
func (h *holds) resumeLocked(g *gate) {
	for !g.held && !h.closed && g.resuming < resumeConcurrency && len(g.queue) > 0 {
		j := h.popLocked(g)
		j.resumed = true
		g.resuming++
		h.p.sched.start(&j.task)
	}
}

func (h *holds) popLocked(g *gate) *sendJob {
	j := g.queue[0]
	g.queue[0] = nil
	g.queue = g.queue[1:]
	h.unparkedLocked()
	return j
}

// unparkedLocked counts one notification taken off a queue.
func (h *holds) unparkedLocked() {
	h.parked--
	h.p.metrics.notificationsHeld.Set(float64(h.parked))
}

// sweep ends parked notifications that expired, were held for MaxHold, or whose partition was
// revoked; it runs every holdSweep while anything is parked.
func (h *holds) sweep() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sweeper = nil
	if h.closed {
		return
	}
	now := h.p.cfg.Now()
	h.endParkedLocked(func(g *gate, j *sendJob) func() { return h.endOf(g, j, now) })
	if h.parked > 0 {
		h.sweeper = time.AfterFunc(h.sweepEvery, h.sweep)
	}
}

// endParkedLocked takes off their queues, and ends, the parked notifications for which endOf
// returns how they end (nil: they stay). An end releases the lanes and reports; it does not
// call back into holds.
func (h *holds) endParkedLocked(endOf func(g *gate, j *sendJob) func()) {
	for _, g := range h.gates {
		kept := g.queue[:0]
		for _, j := range g.queue {
			if end := endOf(g, j); end != nil {
				h.unparkedLocked()
				end()
				continue
			}
			kept = append(kept, j)
		}
		clear(g.queue[len(kept):])
		g.queue = kept
	}
}

// endOf returns how a parked notification ends now, or nil if it stays parked.
func (h *holds) endOf(g *gate, j *sendJob, now time.Time) func() {
	ev, r := j.ev, j.note.Rule
	switch {
	case ev.pt.revoked():
		return j.abandon
	case r.ExpireAfter > 0 && !ev.time.IsZero() && now.Sub(ev.time) > r.ExpireAfter:
		msg := fmt.Sprintf("expired: event is %s old, expire_after %s (held while %s/%s was unavailable: %s)",
			formatAge(now.Sub(ev.time)), formatDuration(r.ExpireAfter), g.key.account, g.key.api, g.lastErr)
		return func() { j.end(StatusExpired, wechat.Result{ErrMsg: msg}) }
	case now.Sub(j.parkedAt) >= h.p.cfg.MaxHold:
		msg := fmt.Sprintf("held for %s while %s/%s kept failing (wechat.max_hold %s); last error: %s",
			formatAge(now.Sub(j.parkedAt)), g.key.account, g.key.api, formatDuration(h.p.cfg.MaxHold), g.lastErr)
		return func() {
			h.p.warn.WithFields(logrus.Fields{"event_id": ev.id, "rule": r.Name, "api": r.API, "topic": ev.pt.topic, "partition": ev.pt.id, "offset": ev.rec.Offset}).
				Warn("notification failed: held longer than wechat.max_hold")
			j.end(StatusFailed, wechat.Result{ErrCode: wechat.ErrNoAnswer, ErrMsg: msg, Class: wechat.ClassTransient})
		}
	}
	return nil
}

// abandonRevoked gives up, at once, the parked notifications of revoked partitions.
func (h *holds) abandonRevoked() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.endParkedLocked(func(_ *gate, j *sendJob) func() {
		if j.ev.pt.revoked() {
			return j.abandon
		}
		return nil
	})
}

// close stops probes and sweeps and abandons whatever is still parked.
func (h *holds) close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.closed = true
	if h.sweeper != nil {
		h.sweeper.Stop()
	}
	for _, g := range h.gates {
		if g.timer != nil {
			g.timer.Stop()
		}
		for _, j := range g.queue {
			h.unparkedLocked()
			j.abandon()
		}
		g.queue = nil
	}
}

// HeldAPI describes one (account, API) whose notifications are held.
type HeldAPI struct {
	Account   string    `json:"account"`
	API       string    `json:"api"`
	Since     time.Time `json:"since"`
	Parked    int       `json:"parked"`
	LastError string    `json:"last_error"`
}

// Held returns the (account, API)s held now.
func (p *Processor) Held() []HeldAPI {
	h := p.holds
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []HeldAPI
	for _, g := range h.gates {
		if g.held {
			out = append(out, HeldAPI{Account: g.key.account, API: g.key.api, Since: g.since, Parked: len(g.queue), LastError: g.lastErr})
		}
	}
	slices.SortFunc(out, func(a, b HeldAPI) int {
		return cmp.Or(strings.Compare(a.Account, b.Account), strings.Compare(a.API, b.API))
	})
	return out
}
