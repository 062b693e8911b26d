package processor

import (
	"math/rand/v2"
	"sync"
	"testing"
)

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
