package processor

import (
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// pending returns how many keys have a lane.
func (s *scheduler) pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.lanes)
}

// jobFunc adapts a function to job.
type jobFunc func(*task)

func (f jobFunc) runTask(t *task) { f(t) }

// newTask builds a task over the non-empty keys given.
func newTask(run func(*task), keys ...string) *task {
	t := &task{job: jobFunc(run)}
	t.setKeys(keys...)
	return t
}

// TestSchedulerKeyOrderAndExclusion submits many tasks over few keys from several submitters and
// checks what the processor relies on: per key, tasks run one at a time and in submission order,
// unrelated keys run concurrently, and every task runs.
func TestSchedulerKeyOrderAndExclusion(t *testing.T) {
	s := newScheduler()
	const tasks = 5000
	var (
		mu        sync.Mutex
		running   = map[string]int{}
		lastSeq   = map[string]int{}
		violation atomic.Value
		maxConc   atomic.Int64
		conc      atomic.Int64
		wg        sync.WaitGroup
	)
	rng := rand.New(rand.NewPCG(1, 2))
	wg.Add(tasks)
	for i := 0; i < tasks; i++ {
		seq := i
		k1 := fmt.Sprintf("k:%d", rng.IntN(40))
		k2 := fmt.Sprintf("u:%d", rng.IntN(25))
		pause := time.Duration(rng.IntN(50)) * time.Microsecond
		run := func(tk *task) {
			defer wg.Done()
			c := conc.Add(1)
			for {
				m := maxConc.Load()
				if c <= m || maxConc.CompareAndSwap(m, c) {
					break
				}
			}
			mu.Lock()
			for j := 0; j < tk.nkeys; j++ {
				k := tk.keys[j]
				if running[k] > 0 {
					violation.Store(fmt.Sprintf("key %s ran twice at once", k))
				}
				if last, ok := lastSeq[k]; ok && last > seq {
					violation.Store(fmt.Sprintf("key %s ran %d after %d", k, seq, last))
				}
				running[k]++
				lastSeq[k] = seq
			}
			mu.Unlock()
			time.Sleep(pause)
			mu.Lock()
			for j := 0; j < tk.nkeys; j++ {
				running[tk.keys[j]]--
			}
			mu.Unlock()
			conc.Add(-1)
			s.done(tk)
		}
		s.submit(newTask(run, k1, k2))
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatalf("tasks did not all run: scheduler stalled with %d lanes", s.pending())
	}
	if v := violation.Load(); v != nil {
		t.Fatal(v)
	}
	if s.pending() != 0 {
		t.Fatalf("lanes left behind: %d", s.pending())
	}
	if maxConc.Load() < 2 {
		t.Fatalf("unrelated keys never ran concurrently (max %d)", maxConc.Load())
	}
}

func TestNewTaskSkipsEmptyAndDuplicateKeys(t *testing.T) {
	for _, tc := range []struct {
		keys []string
		want int
	}{
		{[]string{"", "u:1"}, 1},
		{[]string{"k:1", ""}, 1},
		{[]string{"k:1", "k:1"}, 1},
		{[]string{"k:1", "u:1"}, 2},
		{[]string{"", ""}, 0},
		{[]string{"k:1", "u:1", "d:1"}, 3},
		{[]string{"k:1", "u:1", "k:1"}, 2},
		{[]string{"", "u:1", "d:1"}, 2},
	} {
		if got := newTask(nil, tc.keys...).nkeys; got != tc.want {
			t.Errorf("newTask(%q).nkeys = %d, want %d", tc.keys, got, tc.want)
		}
	}
}

// A task with no key runs at once and leaves nothing behind.
func TestSchedulerKeylessTask(t *testing.T) {
	s := newScheduler()
	ran := make(chan struct{})
	s.submit(newTask(func(tk *task) { s.done(tk); close(ran) }))
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("keyless task never ran")
	}
	if s.pending() != 0 {
		t.Fatalf("lanes = %d, want 0", s.pending())
	}
}

func BenchmarkScheduler(b *testing.B) {
	s := newScheduler()
	var wg sync.WaitGroup
	run := func(tk *task) { s.done(tk); wg.Done() }
	keys := make([]string, 512)
	for i := range keys {
		keys[i] = fmt.Sprintf("u:%d", i)
	}
	b.ReportAllocs()
	wg.Add(b.N)
	for i := 0; i < b.N; i++ {
		s.submit(newTask(run, keys[i%len(keys)], keys[(i*7)%len(keys)]))
	}
	wg.Wait()
}

// BenchmarkSchedulerDeepStack runs tasks that, like a WeChat send, need a deep stack: a
// goroutine per task grows its stack every time; a reused worker keeps it grown.
func BenchmarkSchedulerDeepStack(b *testing.B) {
	s := newScheduler()
	defer s.close()
	var wg sync.WaitGroup
	run := func(tk *task) { deepStack(64); s.done(tk); wg.Done() }
	keys := make([]string, 512)
	for i := range keys {
		keys[i] = fmt.Sprintf("u:%d", i)
	}
	b.ReportAllocs()
	wg.Add(b.N)
	for i := 0; i < b.N; i++ {
		s.submit(newTask(run, keys[i%len(keys)], keys[(i*7)%len(keys)]))
	}
	wg.Wait()
}

// deepStack uses about 300 bytes of stack per level.
//
//go:noinline
func deepStack(n int) byte {
	var buf [256]byte
	buf[n%len(buf)] = byte(n)
	if n == 0 {
		return buf[0]
	}
	return deepStack(n-1) + buf[n%len(buf)]
}

// TestSchedulerWorkersExitWhenIdle: a worker exits once it has had no task for its idle time,
// counted from its last task (not from when it started), and not before.
func TestSchedulerWorkersExitWhenIdle(t *testing.T) {
	s := newScheduler()
	s.idle = time.Second
	ran := make(chan struct{}, 2)
	run := func(tk *task) {
		s.done(tk)
		ran <- struct{}{}
	}
	start := time.Now()
	s.submit(newTask(run, "k"))
	<-ran
	time.Sleep(500 * time.Millisecond)
	s.submit(newTask(run, "k")) // the idle worker takes it: its idle time starts again
	<-ran
	exited := make(chan struct{})
	go func() {
		s.wait()
		close(exited)
	}()
	select {
	case <-exited:
		t.Fatalf("the worker exited %s after it started, though its last task ended at 0.5s", time.Since(start))
	case <-time.After(time.Until(start.Add(1250 * time.Millisecond))):
	}
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the worker was still running 5s after its last task")
	}
}
