package processor

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// Notification controls: the per-rule expire_after, quiet_hours, dedupe and throttle options
// that package rules parses and the processor enforces.
//
// They run in two places. The stateless ones (expire_after, then quiet_hours) run in gate, on
// the partition's fetch goroutine when the event is evaluated: an expired notification is not
// delayed, and a notification in quiet hours is skipped or handed to the delay topic before it
// takes any lane. The stateful ones (dedupe, then throttle) run in admit, inside the
// notification's scheduler task, just before the WeChat call, because what they decide depends
// on the outcome of earlier sends: a failed send must not count as "already sent".
//
// Dedupe and throttle state is in memory, per process (so across every partition the process
// owns), per rule name, and separate for dry-run and live sends, so a rule taken out of dry_run
// is not blocked by what its dry run would have sent. It is lost on restart and is not shared
// between replicas: a repeat that lands on another replica, or arrives after a restart, is sent.
// Rules without controls pay one nil check per notification (hasControls) and nothing else.

// hasControls reports whether the rule has any control.
func hasControls(r *rules.Rule) bool {
	return r.ExpireAfter > 0 || r.QuietHours != nil || r.Dedupe != nil || r.Throttle != nil
}

// hasStateful reports whether the rule has a control decided at send time.
func hasStateful(r *rules.Rule) bool { return r.Dedupe != nil || r.Throttle != nil }

// gate applies expire_after and quiet_hours to one notification of ev. It reports whether it
// handled the notification: an outcome (expired, skipped, published from the Kafka key's lane)
// or a delayed record was published for it. Processing time is the processor's clock
// when the event is evaluated.
func (p *Processor) gate(ev *event, note *rules.Notification) bool {
	r := note.Rule
	now := p.cfg.Now()
	if r.ExpireAfter > 0 && !ev.time.IsZero() {
		if age := now.Sub(ev.time); age > r.ExpireAfter {
			p.emitInLane(ev, note, StatusExpired, wechat.Result{
				ErrMsg: fmt.Sprintf("expired: event is %s old, expire_after %s", formatAge(age), formatDuration(r.ExpireAfter)),
			})
			return true
		}
	}
	if q := r.QuietHours; q != nil && q.Contains(now) {
		if q.Action == rules.QuietDelay && p.cfg.DelayTopic != "" {
			p.delay(ev, note, q.NextEnd(now), "quiet_hours: "+formatQuiet(q))
			return true
		}
		why := "quiet_hours: " + formatQuiet(q)
		if q.Action == rules.QuietDelay {
			why += " (action delay, but the processor has no delay topic)"
		}
		p.emitInLane(ev, note, StatusSkipped, wechat.Result{ErrMsg: why})
		return true
	}
	return false
}

// controls holds the dedupe and throttle state.
type controls struct {
	maxKeys int
	evicted *prometheus.CounterVec // by control

	mu       sync.Mutex
	dedupe   map[string]*dedupeStore
	throttle map[string]*throttleStore
}

func newControls(maxKeys int, evicted *prometheus.CounterVec) *controls {
	return &controls{maxKeys: maxKeys, evicted: evicted, dedupe: map[string]*dedupeStore{}, throttle: map[string]*throttleStore{}}
}

func storeName(rule string, dry bool) string {
	if dry {
		return rule + "\x00dry"
	}
	return rule
}

func (c *controls) dedupeStore(rule string, dry bool) *dedupeStore {
	name := storeName(rule, dry)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.dedupe[name]
	if s == nil {
		s = &dedupeStore{at: map[string]int64{}}
		c.dedupe[name] = s
	}
	return s
}

func (c *controls) throttleStore(rule string, dry bool) *throttleStore {
	name := storeName(rule, dry)
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.throttle[name]
	if s == nil {
		s = &throttleStore{logs: map[string][]int64{}}
		c.throttle[name] = s
	}
	return s
}

// admission is what admit let through for one notification; settle makes it final once the
// send's outcome is known.
type admission struct {
	c      *controls
	dd     *dedupeStore
	ddKey  string
	window time.Duration
	th     *throttleStore
	thKey  string
	stamp  int64
}

// admit decides dedupe, then throttle, for a notification about to be sent (or dry-run) at now.
// A non-empty reason means skip it. Throttle reserves its slot here, so concurrent sends under
// one throttle key cannot overshoot max; settle gives the slot back if the send fails.
func (c *controls) admit(note *rules.Notification, dry bool, now time.Time) (admission, string) {
	r := note.Rule
	a := admission{c: c}
	if d := r.Dedupe; d != nil {
		s := c.dedupeStore(r.Name, dry)
		if at, ok := s.seen(note.DedupeKey, now, d.Window); ok {
			return admission{}, fmt.Sprintf("dedupe: repeat of key %q within %s (sent %s ago)",
				note.DedupeKey, formatDuration(d.Window), formatAge(now.Sub(at)))
		}
		a.dd, a.ddKey, a.window = s, note.DedupeKey, d.Window
	}
	if t := r.Throttle; t != nil {
		s := c.throttleStore(r.Name, dry)
		stamp, oldest, evicted, ok := s.reserve(note.ThrottleKey, now, t.Max, t.Per, c.maxKeys)
		c.countEvicted("throttle", evicted)
		if !ok {
			return admission{}, fmt.Sprintf("throttle: %d per %s reached for key %q (next slot in %s)",
				t.Max, formatDuration(t.Per), note.ThrottleKey, formatAge(oldest.Add(t.Per).Sub(now)))
		}
		a.th, a.thKey, a.stamp = s, note.ThrottleKey, stamp
	}
	return a, ""
}

// settle records a sent (or dry-run) notification's dedupe key, and gives a failed one's
// throttle slot back: a failed send neither blocks a later retry of the same business event nor
// uses up the recipient's quota. It must run before the task releases its dedupe lane.
func (a admission) settle(sent bool, now time.Time) {
	if a.dd != nil && sent {
		a.c.countEvicted("dedupe", a.dd.record(a.ddKey, now, a.window, a.c.maxKeys))
	}
	if a.th != nil && !sent {
		a.th.release(a.thKey, a.stamp)
	}
}

func (c *controls) countEvicted(control string, n int) {
	if n > 0 && c.evicted != nil {
		c.evicted.WithLabelValues(control).Add(float64(n))
	}
}

// stamped is a key and when it was recorded (unix nanoseconds).
type stamped struct {
	key string
	at  int64
}

// fifo is a queue of stamped entries in recording order, which is time order: what expires or
// is evicted first is at its head.
type fifo struct {
	q    []stamped
	head int
}

func (f *fifo) push(e stamped) { f.q = append(f.q, e) }
func (f *fifo) empty() bool    { return f.head == len(f.q) }
func (f *fifo) peek() stamped  { return f.q[f.head] }

func (f *fifo) pop() stamped {
	e := f.q[f.head]
	f.q[f.head] = stamped{}
	f.head++
	if f.head == len(f.q) {
		f.q, f.head = f.q[:0], 0
	} else if f.head > 1024 && f.head*2 > len(f.q) {
		n := copy(f.q, f.q[f.head:])
		clear(f.q[n:])
		f.q, f.head = f.q[:n], 0
	}
	return e
}

// dedupeStore is one rule's dedupe keys: key -> when it was last sent. Keys older than the
// window are forgotten as the store is used; at most maxKeys are kept, the oldest forgotten
// first when full.
type dedupeStore struct {
	mu    sync.Mutex
	at    map[string]int64
	order fifo
}

func (s *dedupeStore) seen(key string, now time.Time, window time.Duration) (time.Time, bool) {
	n := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(n - int64(window))
	at, ok := s.at[key]
	if !ok || n-at >= int64(window) {
		return time.Time{}, false
	}
	return time.Unix(0, at), true
}

// record remembers key as sent at now and returns how many live keys it evicted to stay within
// maxKeys.
func (s *dedupeStore) record(key string, now time.Time, window time.Duration, maxKeys int) (evicted int) {
	n := now.UnixNano()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(n - int64(window))
	if _, ok := s.at[key]; !ok {
		for len(s.at) >= maxKeys && !s.order.empty() {
			if s.drop() {
				evicted++
			}
		}
	}
	s.at[key] = n
	s.order.push(stamped{key, n})
	return evicted
}

// expire forgets keys recorded at or before cutoff.
func (s *dedupeStore) expire(cutoff int64) {
	for !s.order.empty() && s.order.peek().at <= cutoff {
		s.drop()
	}
}

// drop removes the oldest entry, reporting whether it was the key's latest record.
func (s *dedupeStore) drop() bool {
	e := s.order.pop()
	if at, ok := s.at[e.key]; ok && at == e.at {
		delete(s.at, e.key)
		return true
	}
	return false
}

// throttleStore is one rule's throttle state: for each key, the times of its sends in the last
// `per` (a sliding log, at most max entries). Keys with no send in the last `per` are
// forgotten as the store is used; at most maxKeys keys are kept, the longest idle forgotten
// first when full.
type throttleStore struct {
	mu    sync.Mutex
	logs  map[string][]int64
	order fifo
}

// reserve takes a slot for key at now if fewer than max were taken in the last per. When it
// cannot, oldest is the send whose expiry frees the next slot.
func (s *throttleStore) reserve(key string, now time.Time, max int, per time.Duration, maxKeys int) (stamp int64, oldest time.Time, evicted int, ok bool) {
	n := now.UnixNano()
	cutoff := n - int64(per)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire(cutoff)
	log := s.logs[key]
	i := 0
	for i < len(log) && log[i] <= cutoff {
		i++
	}
	log = log[i:]
	if len(log) >= max {
		s.logs[key] = log
		return 0, time.Unix(0, log[len(log)-max]), 0, false
	}
	if len(log) == 0 {
		if _, known := s.logs[key]; !known {
			for len(s.logs) >= maxKeys && !s.order.empty() {
				if s.drop() {
					evicted++
				}
			}
		}
	}
	s.logs[key] = append(log, n)
	s.order.push(stamped{key, n})
	return n, time.Time{}, evicted, true
}

// release gives back the slot reserve took at stamp.
func (s *throttleStore) release(key string, stamp int64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	log := s.logs[key]
	for i, at := range log {
		if at == stamp {
			log = append(log[:i], log[i+1:]...)
			break
		}
	}
	if len(log) == 0 {
		delete(s.logs, key)
		return
	}
	s.logs[key] = log
}

func (s *throttleStore) expire(cutoff int64) {
	for !s.order.empty() && s.order.peek().at <= cutoff {
		s.drop()
	}
}

// drop removes the oldest entry and, if it was its key's latest send, the key.
func (s *throttleStore) drop() bool {
	e := s.order.pop()
	if log, ok := s.logs[e.key]; ok && (len(log) == 0 || log[len(log)-1] <= e.at) {
		delete(s.logs, e.key)
		return true
	}
	return false
}

// formatDuration writes a configured duration the way it is usually written: 24h, 1h30m, 10m.
func formatDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// formatAge writes an age for people: 2d3h, 3h4m, 12m5s, 3.2s.
func formatAge(d time.Duration) string {
	switch {
	case d < 0:
		return "-" + formatAge(-d)
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return formatDuration(d.Round(time.Second))
	case d < 24*time.Hour:
		return formatDuration(d.Round(time.Minute))
	}
	d = d.Round(time.Hour)
	days, rest := d/(24*time.Hour), d%(24*time.Hour)
	if rest == 0 {
		return fmt.Sprintf("%dd", days)
	}
	return fmt.Sprintf("%dd%s", days, formatDuration(rest))
}

// formatQuiet writes a quiet window as 22:00-08:00 Asia/Shanghai.
func formatQuiet(q *rules.QuietHours) string {
	hm := func(d time.Duration) string {
		return fmt.Sprintf("%02d:%02d", int(d/time.Hour), int(d%time.Hour/time.Minute))
	}
	return hm(q.Start) + "-" + hm(q.End) + " " + q.Zone.String()
}
