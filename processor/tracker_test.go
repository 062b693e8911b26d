package processor

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

// commitPoint returns the offset to commit: every offset below it is finished.
func (t *tracker) commitPoint() int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.commitPointLocked()
}

func TestTrackerCommitPointNeverPassesUnfinished(t *testing.T) {
	tr := newTracker(-2)
	const n = 3000
	slots := make([]slot, 0, n)
	off := int64(100)
	for i := 0; i < n; i++ {
		off += 1 + int64(i%3/2) // gaps, as compaction leaves them
		slots = append(slots, tr.add(off))
	}
	if got := tr.commitPoint(); got != slots[0].offset {
		t.Fatalf("commit point before any finish = %d, want %d", got, slots[0].offset)
	}
	order := rand.New(rand.NewPCG(3, 4)).Perm(n)
	finished := make([]bool, n)
	var wg sync.WaitGroup
	for chunk := 0; chunk < n; chunk += 100 {
		part := order[chunk : chunk+100]
		wg.Add(len(part))
		for _, i := range part {
			go func() { defer wg.Done(); slots[i].finish() }()
		}
		wg.Wait()
		for _, i := range part {
			finished[i] = true
		}
		cp := tr.commitPoint()
		for i, s := range slots {
			if s.offset < cp && !finished[i] {
				t.Fatalf("commit point %d passes unfinished offset %d", cp, s.offset)
			}
			if !finished[i] {
				if cp != s.offset {
					t.Fatalf("commit point %d, want first unfinished %d", cp, s.offset)
				}
				break
			}
		}
	}
	if got, want := tr.commitPoint(), off+1; got != want {
		t.Fatalf("commit point after all finished = %d, want %d", got, want)
	}
	select {
	case <-tr.drained():
	default:
		t.Fatal("drained not closed with nothing in flight")
	}
}

func TestTrackerDrainedWaitsAndDoubleFinishIsNoop(t *testing.T) {
	tr := newTracker(0)
	a, b := tr.add(0), tr.add(1)
	d := tr.drained()
	a.finish()
	a.finish()
	if tr.inFlight() != 1 {
		t.Fatalf("inFlight = %d, want 1", tr.inFlight())
	}
	select {
	case <-d:
		t.Fatal("drained closed with offset 1 unfinished")
	default:
	}
	b.finish()
	<-d
	if tr.commitPoint() != 2 {
		t.Fatalf("commit point = %d, want 2", tr.commitPoint())
	}
}

func TestTrackerStartsAtAssignedOffset(t *testing.T) {
	if got := newTracker(42).commitPoint(); got != 42 {
		t.Fatalf("commit point with nothing fetched = %d, want 42", got)
	}
}

// An abandoned slot (a held delayed record whose partition was revoked) no longer holds up
// drained, but the commit point never passes it.
func TestTrackerAbandonKeepsCommitPointButDrains(t *testing.T) {
	tr := newTracker(-2)
	a, b, c := tr.add(10), tr.add(11), tr.add(12)
	a.finish()
	b.abandon()
	drained := tr.drained()
	c.finish()
	select {
	case <-drained:
	default:
		t.Fatal("drained not closed after the last unfinished slot was abandoned")
	}
	if got := tr.commitPoint(); got != 11 {
		t.Fatalf("commit point = %d, want 11 (the abandoned offset)", got)
	}
	if got := tr.inFlight(); got != 0 {
		t.Fatalf("inFlight = %d, want 0", got)
	}
	b.finish() // late finish of an abandoned slot must not corrupt the count
	if got := tr.inFlight(); got != 0 {
		t.Fatalf("inFlight after a late finish = %d, want 0", got)
	}
}

// After the log was truncated below the handed-out offsets, reset moves the commit point back to
// where fetching resumes: it must not stay at the old, higher offset.
func TestTrackerResetMovesTheCommitPointBack(t *testing.T) {
	tr := newTracker(100)
	tr.add(100).finish()
	tr.add(101).finish()
	if cp := tr.commitPoint(); cp != 102 {
		t.Fatalf("commit point %d, want 102", cp)
	}
	tr.reset(5)
	if cp := tr.commitPoint(); cp != 5 {
		t.Errorf("after reset(5) the commit point is %d, want 5", cp)
	}
	tr.add(5).finish()
	if cp := tr.commitPoint(); cp != 6 {
		t.Errorf("commit point %d, want 6", cp)
	}
}

// Memory follows the span from the commit point, not the events finished behind an
// unfinished one: a million finished offsets behind one stuck offset cost a bit each, and once
// the stuck one finishes the bitset starts over.
func TestTrackerSpanAndMemory(t *testing.T) {
	tr := newTracker(0)
	stuck := tr.add(0)
	for o := int64(1); o <= 1_000_000; o++ {
		tr.add(o).finish()
	}
	if got := tr.span(); got != 1_000_001 {
		t.Fatalf("span = %d, want 1000001", got)
	}
	if got := tr.commitPoint(); got != 0 {
		t.Fatalf("commit point = %d, want 0", got)
	}
	if words := len(tr.words); words > 1_000_001/64+2 {
		t.Fatalf("%d words for a span of 1000001", words)
	}
	stuck.finish()
	if got := tr.commitPoint(); got != 1_000_001 {
		t.Fatalf("commit point after the stuck offset finished = %d, want 1000001", got)
	}
	if tr.span() != 0 {
		t.Fatalf("span = %d, want 0", tr.span())
	}
	tr.add(5_000_000) // a jump (compaction gap) with nothing unfinished costs nothing
	if len(tr.words) > 1 {
		t.Fatalf("%d words after a jump with nothing unfinished", len(tr.words))
	}
}

// The commit metadata lists exactly the offsets finished beyond the commit point; decoded by a
// new owner it names which offsets to pass over, and everything else is redone.
func TestCommitMetadataRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for _, tc := range []struct {
		name     string
		n        int
		finished float64
		gaps     bool
	}{
		{"mostly finished", 2000, 0.95, false},
		{"half finished", 2000, 0.5, false},
		{"few finished", 500, 0.05, true},
		{"alternating", 3000, -1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := newTracker(1000)
			var slots []slot
			off := int64(1000)
			for i := 0; i < tc.n; i++ {
				slots = append(slots, tr.add(off))
				off++
				if tc.gaps && i%7 == 0 {
					off += 3
				}
			}
			done := map[int64]bool{}
			for i, s := range slots {
				fin := rng.Float64() < tc.finished
				if tc.finished < 0 {
					fin = i%2 == 1
				}
				if i == 0 {
					fin = false // the commit point stays at the first
				}
				if fin {
					s.finish()
					done[s.offset] = true
				}
			}
			cp, meta := tr.state(defaultMetaBudget)
			if cp != 1000 {
				t.Fatalf("commit point %d, want 1000", cp)
			}
			if len(meta) > defaultMetaBudget {
				t.Fatalf("metadata of %d bytes, budget %d", len(meta), defaultMetaBudget)
			}
			fs, err := decodeFinished(cp, meta)
			if err != nil {
				t.Fatal(err)
			}
			covered := 0
			for _, s := range slots {
				if s.offset >= fs.end {
					continue
				}
				covered++
				if got := fs.contains(s.offset); got != done[s.offset] {
					t.Fatalf("offset %d: restored finished = %v, want %v", s.offset, got, done[s.offset])
				}
			}
			if tc.finished != -1 && covered != len(slots) {
				t.Fatalf("the metadata covers %d of %d offsets within %d bytes", covered, len(slots), defaultMetaBudget)
			}
			if tc.finished == -1 && covered < 3000 {
				t.Fatalf("alternating offsets: only %d covered within %d bytes", covered, defaultMetaBudget)
			}
		})
	}
}

// When the finished offsets do not fit, the metadata covers a prefix: offsets past it count as
// unfinished (redone), never as finished.
func TestCommitMetadataDegradesToAPrefix(t *testing.T) {
	tr := newTracker(0)
	var slots []slot
	for o := int64(0); o < 200_000; o++ {
		slots = append(slots, tr.add(o))
	}
	for i, s := range slots {
		if i%3 != 0 {
			s.finish()
		}
	}
	_, meta := tr.state(400)
	if len(meta) > 400 || meta == "" {
		t.Fatalf("metadata of %d bytes, want 1..400", len(meta))
	}
	fs, err := decodeFinished(0, meta)
	if err != nil {
		t.Fatal(err)
	}
	if fs.end <= 0 || fs.end >= 200_000 {
		t.Fatalf("covers up to %d", fs.end)
	}
	for o := int64(0); o < 200_000; o++ {
		if fs.contains(o) != (o < fs.end && o%3 != 0) {
			t.Fatalf("offset %d: finished = %v", o, fs.contains(o))
		}
	}
}

// A restored set carries over into the next commits until its offsets are fetched again, so a
// second restart before they are reached still skips them.
func TestRestoredFinishedCarriesOver(t *testing.T) {
	tr := newTracker(0)
	for o := int64(0); o < 100; o++ {
		if s := tr.add(o); o >= 10 && o%2 == 0 {
			s.finish()
		}
	}
	_, meta := tr.state(defaultMetaBudget)
	fs, err := decodeFinished(0, meta)
	if err != nil {
		t.Fatal(err)
	}

	next := newTracker(0)
	next.restore(fs)
	next.add(0) // re-fetched, in flight again
	for o := int64(1); o < 20; o++ {
		if next.restoredFinished(o) {
			next.pass(o)
		} else {
			next.add(o)
		}
	}
	_, meta2 := next.state(defaultMetaBudget)
	fs2, err := decodeFinished(0, meta2)
	if err != nil {
		t.Fatal(err)
	}
	for o := int64(0); o < 100; o++ {
		if want := o >= 10 && o%2 == 0; fs2.contains(o) != want {
			t.Fatalf("offset %d: finished = %v after the second restart, want %v", o, fs2.contains(o), want)
		}
	}
}

// Metadata committed with another offset, or ours but damaged, is refused with an error saying
// why, and restores nothing (everything is redone); metadata not ours (another tool's) is
// ignored without an error. Ours, intact, restores exactly its finished offsets.
func TestDecodeFinishedRefusesForeignOrMismatched(t *testing.T) {
	tr := newTracker(7)
	tr.add(7)
	tr.add(8).finish()
	_, meta := tr.state(defaultMetaBudget)
	// ours builds metadata of kind from uvarints and raw bytes.
	ours := func(kind byte, raw []byte, vals ...uint64) string {
		var b []byte
		for _, v := range vals {
			b = binary.AppendUvarint(b, v)
		}
		return metaPrefix + string(kind) + ":" + base64.RawURLEncoding.EncodeToString(append(b, raw...))
	}
	for _, tc := range []struct {
		committed int64
		meta      string
		wantErr   string
		finished  []int64 // restored as finished; every other offset is redone
	}{
		{7, meta, "", []int64{8}},
		{7, ours('b', []byte{0b10}, 7, 2), "", []int64{8}},
		{8, meta, "commit metadata describes offset 7, but 8 is committed", nil},
		{7, "", "", nil},              // nothing recorded
		{7, "kcat was here", "", nil}, // someone else's metadata: ignored
		{7, "wxn1r:!!!", "commit metadata: illegal base64 data at input byte 0", nil},
		{7, ours('r', nil), "commit metadata: bad offset", nil},
		{7, ours('r', nil, 7), "commit metadata: bad length", nil},
		{7, ours('r', nil, 7, 1<<41), "commit metadata: bad length", nil},
		{7, ours('r', nil, 7, 2, 5), "commit metadata: bad run", nil},
		{7, ours('r', nil, 7, 4, 1, 1), "commit metadata: runs do not cover their length", nil},
		{7, ours('b', []byte{0xff}, 7, 16), "commit metadata: bitset shorter than its length", nil},
		{7, ours('x', nil, 7, 1), "commit metadata: unknown kind 'x'", nil},
	} {
		fs, err := decodeFinished(tc.committed, tc.meta)
		if gotErr := fmt.Sprint(err); (err != nil || tc.wantErr != "") && gotErr != tc.wantErr {
			t.Errorf("decode(%d, %q): err %v, want %q", tc.committed, tc.meta, err, tc.wantErr)
		}
		if err != nil && len(fs.ranges) != 0 {
			t.Errorf("decode(%d, %q) restored %v with an error", tc.committed, tc.meta, fs.ranges)
		}
		for o := tc.committed; o < tc.committed+20; o++ {
			if want := slices.Contains(tc.finished, o); fs.contains(o) != want {
				t.Errorf("decode(%d, %q): offset %d finished = %v, want %v", tc.committed, tc.meta, o, fs.contains(o), want)
			}
		}
	}
}
