package processor

import "sync"

// tracker follows the offsets of one partition that have been fetched but whose work is not yet
// finished, and yields the commit point: the offset after the longest finished prefix.
//
// Offsets are added in fetch order (increasing), finished in any order. The commit point never
// passes an unfinished offset: that is what makes the consumer at-least-once while many events of
// one partition are in flight. Offsets the broker never handed out (compaction gaps) lie
// between fetched ones and are passed over, as Kafka consumers do; transaction markers and
// aborted records are added and finished at once by the fetcher.
type tracker struct {
	mu      sync.Mutex
	slots   []*slot // unfinished prefix, oldest first; slots[head:] are live
	head    int
	next    int64 // commit point once every live slot is finished: last added offset + 1
	pending int   // live slots not yet finished
	idle    chan struct{}
}

// slot is one fetched offset; finish marks it done.
type slot struct {
	t         *tracker
	offset    int64
	done      bool
	abandoned bool
}

// newTracker starts a tracker whose commit point is start (the assigned offset; may be a
// negative sentinel such as kafka.FirstOffset until the first add).
func newTracker(start int64) *tracker {
	return &tracker{next: start}
}

// add registers a fetched offset and returns its slot.
func (t *tracker) add(offset int64) *slot {
	s := &slot{t: t, offset: offset}
	t.mu.Lock()
	t.slots = append(t.slots, s)
	t.next = offset + 1
	t.pending++
	t.mu.Unlock()
	return s
}

// reset moves the commit point to offset, which may be lower than the last added one (the log
// was truncated below it). Call it only with no live slot.
func (t *tracker) reset(offset int64) {
	t.mu.Lock()
	t.next = offset
	t.mu.Unlock()
}

// finish marks the slot's work done. Calling it twice is a no-op.
func (s *slot) finish() {
	t := s.t
	t.mu.Lock()
	if !s.done {
		s.done = true
		if !s.abandoned {
			t.pending--
		}
		for t.head < len(t.slots) && t.slots[t.head].done {
			t.slots[t.head] = nil
			t.head++
		}
		// Reclaim the drained prefix so the slice does not grow with the stream.
		if t.head == len(t.slots) {
			t.slots, t.head = t.slots[:0], 0
		} else if t.head > 1024 && t.head*2 > len(t.slots) {
			n := copy(t.slots, t.slots[t.head:])
			clear(t.slots[n:])
			t.slots, t.head = t.slots[:n], 0
		}
		t.wake()
	}
	t.mu.Unlock()
}

// abandon gives the slot's work up unfinished: the commit point stays at or below it, so the
// partition's next owner redoes it, but drained no longer waits for it. Held delayed
// notifications are abandoned when their partition is revoked rather than held until their
// time.
func (s *slot) abandon() {
	t := s.t
	t.mu.Lock()
	if !s.done && !s.abandoned {
		s.abandoned = true
		t.pending--
		t.wake()
	}
	t.mu.Unlock()
}

func (t *tracker) wake() {
	if t.pending == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// commitPoint returns the offset to commit: every offset below it is finished.
func (t *tracker) commitPoint() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.head < len(t.slots) {
		return t.slots[t.head].offset
	}
	return t.next
}

// inFlight returns how many fetched offsets are unfinished.
func (t *tracker) inFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending
}

// drained returns a channel closed once no offset is unfinished.
func (t *tracker) drained() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	ch := make(chan struct{})
	if t.pending == 0 {
		close(ch)
		return ch
	}
	if t.idle == nil {
		t.idle = make(chan struct{})
	}
	return t.idle
}
