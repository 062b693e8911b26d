package processor

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"strings"
)

// Commit metadata: the finished offsets beyond the committed offset.
//
// Many events of a partition are in flight at once, and the commit point stops at the oldest
// unfinished one; the events finished behind it would be redone after a restart. As Confluent's
// parallel-consumer does, each commit therefore carries, in the OffsetCommit metadata, which
// offsets beyond the committed one are finished, and a new owner passes over them. Brokers cap
// the metadata (offset.metadata.max.bytes, 4,096 by default), so the encoding degrades
// gracefully: it covers as many offsets from the committed one as fit, and offsets past what it
// covers count as unfinished (they are redone, as without it).
//
// Format: "wxn1" + kind + ":" + base64url(payload), payload = uvarint(committed offset) +
// uvarint(covered offsets) + body. Kind 'r': run lengths, alternating and starting with an
// unfinished run (the committed offset itself is unfinished). Kind 'b': one bit per covered
// offset, least significant first, 1 = finished. The shorter of the two that covers the most is
// written. Metadata in any other form (empty, another tool's) restores nothing.

const (
	metaPrefix = "wxn1"
	// defaultMetaBudget leaves room under Kafka's default offset.metadata.max.bytes.
	defaultMetaBudget = 4000
)

// finishedSet is a set of finished offsets: sorted, disjoint ranges [lo, hi), all below end.
type finishedSet struct {
	ranges [][2]int64
	end    int64 // offsets at and above end are not known to be finished
}

func (s finishedSet) contains(o int64) bool {
	if o >= s.end || len(s.ranges) == 0 {
		return false
	}
	i, _ := slices.BinarySearchFunc(s.ranges, o, func(r [2]int64, o int64) int {
		switch {
		case r[1] <= o:
			return -1
		case r[0] > o:
			return 1
		}
		return 0
	})
	return i < len(s.ranges) && s.ranges[i][0] <= o && o < s.ranges[i][1]
}

// count returns how many offsets the set holds.
func (s finishedSet) count() int64 {
	var n int64
	for _, r := range s.ranges {
		n += r[1] - r[0]
	}
	return n
}

// segment is a run of offsets that are all finished or all unfinished.
type segment struct {
	finished bool
	n        int64
}

// segmentsLocked returns the runs of [cp, end): the bitset below next, the restored set above.
func (t *tracker) segmentsLocked(cp, end int64, yield func(segment) bool) {
	var cur segment
	emit := func(finished bool, n int64) bool {
		if n <= 0 {
			return true
		}
		if cur.n > 0 && cur.finished == finished {
			cur.n += n
			return true
		}
		if cur.n > 0 && !yield(cur) {
			return false
		}
		cur = segment{finished, n}
		return true
	}
	o := cp
	for o < min(end, t.next) {
		lim := min(end, t.next)
		if _, _, unfinished := t.hasLocked(o); unfinished {
			e := t.nextClearLocked(o, lim)
			if !emit(false, e-o) {
				return
			}
			o = e
		} else {
			e := t.nextSetLocked(o, lim)
			if !emit(true, e-o) {
				return
			}
			o = e
		}
	}
	for _, r := range t.restored.ranges {
		if o >= end {
			break
		}
		if r[1] <= o {
			continue
		}
		lo := max(r[0], o)
		if !emit(false, lo-o) || !emit(true, min(r[1], end)-lo) {
			return
		}
		o = min(r[1], end)
	}
	if o < end && !emit(false, end-o) {
		return
	}
	if cur.n > 0 {
		yield(cur)
	}
}

// nextSetLocked returns the first offset in [o, limit) that is added and unfinished, or limit.
func (t *tracker) nextSetLocked(o, limit int64) int64 {
	for o < limit {
		if o < t.base {
			o = t.base
			continue
		}
		i := o - t.base
		w := t.head + int(i>>6)
		if w >= len(t.words) {
			return limit
		}
		if rest := t.words[w] >> uint(i&63); rest != 0 {
			return min(o+int64(bits.TrailingZeros64(rest)), limit)
		}
		o += 64 - i&63
	}
	return limit
}

// nextClearLocked returns the first offset in [o, limit) that is not unfinished, or limit.
func (t *tracker) nextClearLocked(o, limit int64) int64 {
	for o < limit {
		i := o - t.base
		w := t.head + int(i>>6)
		if o < t.base || w >= len(t.words) {
			return o
		}
		if rest := ^t.words[w] >> uint(i&63); rest != 0 {
			return min(o+int64(bits.TrailingZeros64(rest)), limit)
		}
		o += 64 - i&63
	}
	return limit
}

// encodeFinished writes the runs of [cp, end) into at most budget bytes of metadata.
func encodeFinished(cp int64, segments func(func(segment) bool), budget int) string {
	room := (budget-len(metaPrefix)-2)*3/4 - 2*binary.MaxVarintLen64
	if room <= 0 {
		return ""
	}
	// Runs.
	var runs []byte
	var runsCovered int64
	finishedSeen := false
	segments(func(s segment) bool {
		if len(runs) == 0 && s.finished { // the first run is unfinished by definition
			runs = binary.AppendUvarint(runs, 0)
		}
		var buf [binary.MaxVarintLen64]byte
		n := binary.PutUvarint(buf[:], uint64(s.n))
		if len(runs)+n > room {
			return false
		}
		runs = append(runs, buf[:n]...)
		runsCovered += s.n
		finishedSeen = finishedSeen || s.finished
		return true
	})
	if !finishedSeen {
		return "" // nothing finished beyond the commit point: nothing to skip
	}
	// Bits, for as many offsets as fit.
	var bitset []byte
	var bitsCovered int64
	maxBits := int64(room) * 8
	segments(func(s segment) bool {
		n := min(s.n, maxBits-bitsCovered)
		for i := int64(0); i < n; i++ {
			if bitsCovered%8 == 0 {
				bitset = append(bitset, 0)
			}
			if s.finished {
				bitset[len(bitset)-1] |= 1 << uint(bitsCovered%8)
			}
			bitsCovered++
		}
		return bitsCovered < maxBits
	})
	kind, body, covered := byte('r'), runs, runsCovered
	if bitsCovered > runsCovered || bitsCovered == runsCovered && len(bitset) < len(runs) {
		kind, body, covered = 'b', bitset, bitsCovered
	}
	payload := binary.AppendUvarint(nil, uint64(cp))
	payload = binary.AppendUvarint(payload, uint64(covered))
	payload = append(payload, body...)
	return metaPrefix + string(kind) + ":" + base64.RawURLEncoding.EncodeToString(payload)
}

// decodeFinished reads metadata written by encodeFinished for the committed offset. Metadata
// that is empty or not ours restores nothing (and no error); metadata that is ours but does
// not match the offset, or is damaged, is an error (and restores nothing).
func decodeFinished(committed int64, md string) (finishedSet, error) {
	if len(md) < len(metaPrefix)+2 || !strings.HasPrefix(md, metaPrefix) || md[len(metaPrefix)+1] != ':' {
		return finishedSet{}, nil
	}
	kind := md[len(metaPrefix)]
	payload, err := base64.RawURLEncoding.DecodeString(md[len(metaPrefix)+2:])
	if err != nil {
		return finishedSet{}, fmt.Errorf("commit metadata: %w", err)
	}
	cp, n := binary.Uvarint(payload)
	if n <= 0 {
		return finishedSet{}, errors.New("commit metadata: bad offset")
	}
	payload = payload[n:]
	covered, n := binary.Uvarint(payload)
	if n <= 0 || covered > 1<<40 {
		return finishedSet{}, errors.New("commit metadata: bad length")
	}
	payload = payload[n:]
	if int64(cp) != committed {
		return finishedSet{}, fmt.Errorf("commit metadata describes offset %d, but %d is committed", cp, committed)
	}
	s := finishedSet{end: committed + int64(covered)}
	add := func(lo, hi int64) {
		if k := len(s.ranges); k > 0 && s.ranges[k-1][1] == lo {
			s.ranges[k-1][1] = hi
			return
		}
		s.ranges = append(s.ranges, [2]int64{lo, hi})
	}
	o := committed
	switch kind {
	case 'r':
		finished := false
		for len(payload) > 0 {
			l, n := binary.Uvarint(payload)
			if n <= 0 || int64(l) > s.end-o {
				return finishedSet{}, errors.New("commit metadata: bad run")
			}
			payload = payload[n:]
			if finished && l > 0 {
				add(o, o+int64(l))
			}
			o += int64(l)
			finished = !finished
		}
		if o != s.end {
			return finishedSet{}, errors.New("commit metadata: runs do not cover their length")
		}
	case 'b':
		if int64(len(payload))*8 < int64(covered) {
			return finishedSet{}, errors.New("commit metadata: bitset shorter than its length")
		}
		for i := int64(0); i < int64(covered); i++ {
			if payload[i/8]&(1<<uint(i%8)) != 0 {
				add(o+i, o+i+1)
			}
		}
	default:
		return finishedSet{}, fmt.Errorf("commit metadata: unknown kind %q", kind)
	}
	return s, nil
}
