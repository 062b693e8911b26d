package processor

import (
	"math/bits"
	"sync"
)

// tracker follows the offsets of one partition that have been handed on but whose work is not
// yet finished, and yields the commit point: the offset after the longest finished prefix.
//
// Offsets are added in fetch order (increasing), finished in any order. The commit point never
// passes an unfinished offset: that is what makes the consumer at-least-once while many events of
// one partition are in flight. Offsets never added lie between added ones (compaction gaps,
// transaction markers, records finished before a restart) and count as finished, as Kafka
// consumers pass over them.
//
// Unfinished offsets are bits in a bitset that starts at the commit point, so memory is one
// bit per offset of the span from the commit point to the last offset added, whatever the
// number of events finished behind an unfinished one. The span is bounded by the processor
// (maxSpan), which pauses fetching a partition whose span reached it.
type tracker struct {
	mu      sync.Mutex
	next    int64    // one past the last offset added or passed; < 0 until the first
	base    int64    // offset of bit 0 of words[head]; a multiple of 64
	words   []uint64 // bit set: the offset was added and is unfinished
	aband   []uint64 // parallel to words, allocated on first use: unfinished but abandoned
	head    int      // words[:head] are all zero and dropped
	pending int      // unfinished offsets not abandoned
	idle    chan struct{}
	// restored is the finished offsets beyond the committed offset that the committed metadata
	// listed (a restart, a rebalance): they are passed over, not redone.
	restored finishedSet
}

// slot is one added offset; finish marks it done.
type slot struct {
	t      *tracker
	offset int64
}

// newTracker starts a tracker whose commit point is start (the committed offset; negative when
// there is none, until the first add).
func newTracker(start int64) *tracker {
	return &tracker{next: start, base: start &^ 63}
}

// add registers an offset handed on, at or above every offset added or passed before, and
// returns its slot.
func (t *tracker) add(offset int64) slot {
	t.mu.Lock()
	t.setNextLocked(offset)
	w, b := t.bitLocked(offset)
	t.words[w] |= b
	t.pending++
	t.mu.Unlock()
	return slot{t: t, offset: offset}
}

// pass moves past an offset that is not work (a transaction marker, an aborted record, a record
// finished before a restart).
func (t *tracker) pass(offset int64) {
	t.mu.Lock()
	t.setNextLocked(offset)
	t.mu.Unlock()
}

// setNextLocked makes offset the last one seen. With nothing unfinished the bitset starts over
// at it, so a jump (a compaction gap, a reposition) costs nothing.
func (t *tracker) setNextLocked(offset int64) {
	if t.head == len(t.words) {
		t.words, t.aband, t.head = t.words[:0], t.aband[:0], 0
		t.base = offset &^ 63
	}
	t.next = offset + 1
}

// bitLocked returns the word index and bit of offset, growing the bitset to hold it.
func (t *tracker) bitLocked(offset int64) (int, uint64) {
	i := offset - t.base
	w := t.head + int(i>>6)
	for w >= len(t.words) {
		t.words = append(t.words, 0)
		if t.aband != nil {
			t.aband = append(t.aband, 0)
		}
	}
	return w, 1 << uint(i&63)
}

// hasLocked reports whether offset is added and unfinished, with its word and bit.
func (t *tracker) hasLocked(offset int64) (int, uint64, bool) {
	if offset < t.base || t.head == len(t.words) {
		return 0, 0, false
	}
	i := offset - t.base
	w := t.head + int(i>>6)
	if w >= len(t.words) {
		return 0, 0, false
	}
	b := uint64(1) << uint(i&63)
	return w, b, t.words[w]&b != 0
}

// accepts reports whether offset may be added: it is above every offset added or passed.
func (t *tracker) accepts(offset int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.next < 0 || offset >= t.next
}

// reset moves the commit point to offset, which may be lower than the last one added (the log
// was truncated below it). Call it only with nothing unfinished but abandoned offsets, which
// it forgets.
func (t *tracker) reset(offset int64) {
	t.mu.Lock()
	t.words, t.aband, t.head = t.words[:0], nil, 0
	t.base, t.next = offset&^63, offset
	t.restored = finishedSet{}
	t.mu.Unlock()
}

// finish marks the slot's work done. Calling it twice is a no-op.
func (s slot) finish() {
	t := s.t
	t.mu.Lock()
	if w, b, ok := t.hasLocked(s.offset); ok {
		t.words[w] &^= b
		if t.aband != nil && t.aband[w]&b != 0 {
			t.aband[w] &^= b
		} else {
			t.pending--
		}
		t.trimLocked()
		t.wakeLocked()
	}
	t.mu.Unlock()
}

// abandon gives the slot's work up unfinished: the commit point stays at or below it, so the
// partition's next owner redoes it, but drained no longer waits for it.
func (s slot) abandon() {
	t := s.t
	t.mu.Lock()
	if w, b, ok := t.hasLocked(s.offset); ok {
		if t.aband == nil {
			t.aband = make([]uint64, len(t.words))
		}
		if t.aband[w]&b == 0 {
			t.aband[w] |= b
			t.pending--
			t.wakeLocked()
		}
	}
	t.mu.Unlock()
}

// trimLocked drops the leading words with no unfinished offset.
func (t *tracker) trimLocked() {
	for t.head < len(t.words) && t.words[t.head] == 0 {
		t.head++
		t.base += 64
	}
	if t.head == len(t.words) {
		return
	}
	if t.head > 64 && t.head*2 > len(t.words) {
		n := copy(t.words, t.words[t.head:])
		t.words = t.words[:n]
		if t.aband != nil {
			copy(t.aband, t.aband[t.head:])
			t.aband = t.aband[:n]
		}
		t.head = 0
	}
}

func (t *tracker) wakeLocked() {
	if t.pending == 0 && t.idle != nil {
		close(t.idle)
		t.idle = nil
	}
}

// commitPointLocked returns the offset to commit: every offset below it is finished.
func (t *tracker) commitPointLocked() int64 {
	if t.head < len(t.words) {
		return t.base + int64(bits.TrailingZeros64(t.words[t.head]))
	}
	return t.next
}

// span returns how many offsets lie between the commit point and the last offset seen.
func (t *tracker) span() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.next < 0 {
		return 0
	}
	return t.next - t.commitPointLocked()
}

// inFlight returns how many added offsets are unfinished and not abandoned.
func (t *tracker) inFlight() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pending
}

// drained returns a channel closed once no offset is unfinished (abandoned ones aside).
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

// restore installs the finished offsets the committed metadata listed beyond the committed
// offset; restoredFinished then reports them until they are passed.
func (t *tracker) restore(fs finishedSet) {
	t.mu.Lock()
	t.restored = fs
	t.mu.Unlock()
}

// restoredFinished reports whether offset was finished before the partition was assigned here.
func (t *tracker) restoredFinished(offset int64) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if offset >= t.restored.end {
		t.restored = finishedSet{}
		return false
	}
	return t.restored.contains(offset)
}

// state returns the commit point and the finished offsets beyond it, encoded in at most budget
// bytes (see encodeFinished).
func (t *tracker) state(budget int) (int64, string) {
	t.mu.Lock()
	defer t.mu.Unlock()
	cp := t.commitPointLocked()
	if cp < 0 || budget <= 0 {
		return cp, ""
	}
	end := max(t.next, t.restored.end)
	if end <= cp+1 {
		return cp, ""
	}
	return cp, encodeFinished(cp, func(yield func(segment) bool) { t.segmentsLocked(cp, end, yield) }, budget)
}
