package processor

import (
	"slices"
	"sync"
	"time"
)

// scheduler runs tasks concurrently while keeping, for every key a task names, the tasks of that
// key one at a time and in submission order. A task names up to three keys: its Kafka key (so
// events with one key are sent in offset order), its recipient (so no two sends to one user
// are in flight together: WeChat answers 43108 to that) and, for rules with dedupe, its
// (rule, dedupe key) (so a repeat is decided only once the first send's outcome is known).
//
// Each key has a FIFO lane; a task starts when it heads every lane it is in. Because a task joins
// all its lanes in one atomic step, and submissions are totally ordered, a task only ever waits
// for tasks submitted before it, so there is no deadlock. This is the key-level ordering of
// Confluent's parallel-consumer, with the recipient as a second key.
//
// The scheduler does not bound work: the processor's in-flight budget does.
//
// Ready tasks run on worker goroutines that are kept for workerIdle after their last task
// rather than on a goroutine each: a send goes deep (HTTP client, JSON), and a fresh goroutine
// would grow its stack through that path every time, where a worker keeps its grown stack
// (until the GC shrinks an idle one).
// A ready task is handed to an idle worker if one is waiting and starts a new worker otherwise,
// so there are never more workers than tasks running at once, which the in-flight budget
// bounds, and a ready task never waits behind busy workers.
type scheduler struct {
	mu    sync.Mutex
	lanes map[string]*lane
	free  []*lane

	ready   chan *task    // unbuffered: a send succeeds only when an idle worker is receiving
	idle    time.Duration // workerIdle; shorter in tests
	quit    chan struct{}
	stop    sync.Once
	workers sync.WaitGroup
}

// workerIdle is how long a worker waits for its next task before it exits.
const workerIdle = 2 * time.Second

type lane struct {
	tasks []*task
	head  int
}

// task is one unit of keyed work. job runs on a worker goroutine and must call
// scheduler.done(t) exactly once when the work no longer needs its keys.
type task struct {
	keys    [3]string
	nkeys   int
	blocked int // lanes in which the task is not yet at the head
	job     job
}

// job is the work of a task. The processor's jobs (sendJob, laneOutcome) embed their task, so
// a notification's task, closure and copy of the notification are one allocation.
type job interface{ runTask(t *task) }

func newScheduler() *scheduler {
	return &scheduler{lanes: make(map[string]*lane), ready: make(chan *task), idle: workerIdle, quit: make(chan struct{})}
}

// close lets idle workers exit at once, and busy ones after their task, instead of after
// workerIdle. Tasks submitted later still run.
func (s *scheduler) close() {
	s.stop.Do(func() { close(s.quit) })
}

// wait returns once every worker has exited; call it after close.
func (s *scheduler) wait() { s.workers.Wait() }

// start runs a ready task on an idle worker, or on a new one.
func (s *scheduler) start(t *task) {
	select {
	case s.ready <- t:
	default:
		s.workers.Add(1)
		go s.work(t)
	}
}

// work runs t, then whatever tasks are handed to it, until it has been idle for workerIdle.
func (s *scheduler) work(t *task) {
	defer s.workers.Done()
	idle := time.NewTimer(s.idle)
	defer idle.Stop()
	for ok := true; ok; t, ok = s.next(idle, time.Now()) {
		t.job.runTask(t)
	}
}

// next waits for the worker's next task: false once the worker has been idle for s.idle since
// its last task ended, or the scheduler closed. The idle timer is not reset after every
// task (a timer update per event): when it fires early, next waits out the rest.
func (s *scheduler) next(idle *time.Timer, since time.Time) (*task, bool) {
	for {
		select {
		case t := <-s.ready:
			return t, true
		case <-idle.C:
			rest := s.idle - time.Since(since)
			if rest <= 0 {
				return nil, false
			}
			idle.Reset(rest)
		case <-s.quit:
			return nil, false
		}
	}
}

// submit queues t behind earlier tasks sharing a key and starts it if none is ahead. Empty keys
// are ignored.
func (s *scheduler) submit(t *task) {
	s.mu.Lock()
	for i := 0; i < t.nkeys; i++ {
		k := t.keys[i]
		l := s.lanes[k]
		if l == nil {
			l = s.newLane()
			s.lanes[k] = l
		}
		l.tasks = append(l.tasks, t)
		if len(l.tasks)-l.head > 1 {
			t.blocked++
		}
	}
	ready := t.blocked == 0
	s.mu.Unlock()
	if ready {
		s.start(t)
	}
}

// done releases t's keys and starts the tasks that were waiting only for it.
func (s *scheduler) done(t *task) {
	var ready [3]*task
	n := 0
	s.mu.Lock()
	for i := 0; i < t.nkeys; i++ {
		k := t.keys[i]
		l := s.lanes[k]
		l.tasks[l.head] = nil
		l.head++
		if l.head == len(l.tasks) {
			delete(s.lanes, k)
			s.freeLane(l)
			continue
		}
		next := l.tasks[l.head]
		next.blocked--
		if next.blocked == 0 {
			ready[n] = next
			n++
		}
	}
	s.mu.Unlock()
	for _, r := range ready[:n] {
		s.start(r)
	}
}

func (s *scheduler) newLane() *lane {
	if n := len(s.free); n > 0 {
		l := s.free[n-1]
		s.free = s.free[:n-1]
		return l
	}
	return &lane{}
}

func (s *scheduler) freeLane(l *lane) {
	if cap(l.tasks) > 64 || len(s.free) >= 4096 {
		return // let a lane that grew large be collected
	}
	l.tasks, l.head = l.tasks[:0], 0
	s.free = append(s.free, l)
}

// setKeys sets the task's keys: the non-empty ones given, each once.
func (t *task) setKeys(keys ...string) {
	for _, k := range keys {
		if k != "" && t.nkeys < len(t.keys) && !slices.Contains(t.keys[:t.nkeys], k) {
			t.keys[t.nkeys] = k
			t.nkeys++
		}
	}
}
