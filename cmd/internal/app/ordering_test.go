package app

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// userWatch sits in front of the simulator and watches every send: the events each user receives,
// in arrival order, and whether two sends to one user were ever in flight together.
type userWatch struct {
	next       http.Handler
	hold       time.Duration
	mu         sync.Mutex
	inFlight   map[string]int
	overlaps   int
	orderPerTo map[string][]string // touser -> order ids (page query), arrival order
	sends      int
}

func (u *userWatch) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if !strings.HasPrefix(r.URL.Path, "/cgi-bin/message/") {
		u.next.ServeHTTP(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	r.Body = io.NopCloser(bytes.NewReader(body))
	var b struct {
		ToUser string `json:"touser"`
		Page   string `json:"page"`
	}
	_ = json.Unmarshal(body, &b)
	lane := r.URL.Path + " " + b.ToUser // one send at a time per user and API
	u.mu.Lock()
	u.sends++
	u.inFlight[lane]++
	if u.inFlight[lane] > 1 {
		u.overlaps++
	}
	if r.URL.Path == "/cgi-bin/message/wxopen/template/send" { // one per event: the order to check
		u.orderPerTo[b.ToUser] = append(u.orderPerTo[b.ToUser], strings.TrimPrefix(b.Page, "pages/order/detail?id="))
	}
	u.mu.Unlock()
	time.Sleep(u.hold) // widen the window in which a second send to the same user would overlap
	u.next.ServeHTTP(w, r)
	u.mu.Lock()
	u.inFlight[lane]--
	u.mu.Unlock()
}

// Under load, through the real pipeline: events with one Kafka key reach WeChat in offset order
// through each API, and two sends to one user through one API are never in flight together.
func TestOrderingAndExclusionUnderLoad(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	watch := &userWatch{next: h.sim, hold: time.Millisecond, inFlight: map[string]int{}, orderPerTo: map[string][]string{}}
	front := httptest.NewServer(watch)
	defer front.Close()
	h.cfg.WeChat.BaseURL = front.URL
	h.cfg.Processor.MaxInFlight = 256

	const events, users = 1500, 40
	var msgs []kafka.Message
	want := map[string][]string{}
	for i := 0; i < events; i++ {
		user := fmt.Sprintf("user%02d", i%users)
		m := event(fmt.Sprintf("e-%05d", i), "order.paid", user) // key = user
		msgs = append(msgs, m)
		want[user] = append(want[user], fmt.Sprintf("9%05d", i))
	}
	h.start()

	h.produce("events", msgs...)
	h.outcomes(2*events, 60*time.Second)
	waitFor(t, 20*time.Second, "all offsets committed", func() bool { return sum(h.committed()) == events })
	watch.mu.Lock()
	defer watch.mu.Unlock()
	if watch.overlaps != 0 {
		t.Errorf("%d sends overlapped another send to the same user", watch.overlaps)
	}
	if watch.sends != 2*events {
		t.Errorf("%d sends, want %d", watch.sends, 2*events)
	}
	for user, ids := range want {
		if got := watch.orderPerTo[user]; fmt.Sprint(got) != fmt.Sprint(ids) {
			t.Errorf("%s received %v, want offset order %v", user, watch.orderPerTo[user], ids)
		}
	}
	if n := h.sim.Calls("", 43108); n != 0 {
		t.Errorf("simulator answered 43108 (concurrent sends to one user) %d times", n)
	}
}

// Under load, through the real pipeline, a committed offset never passes an event whose outcomes
// are not yet on the outcome topic.
func TestCommitsNeverPassUnfinishedWorkUnderLoad(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	const events = 300
	var msgs []kafka.Message
	for i := 0; i < events; i++ {
		msgs = append(msgs, event(fmt.Sprintf("e-%05d", i), "order.paid", fmt.Sprintf("user%02d", i%40)))
	}
	h.start()
	// Outcome writes take 50 ms at the broker, so a commit that ran ahead of its outcomes would
	// stay visible for that long. Every poll takes the committed offsets, then the outcome topic's
	// end offsets, and checks that each committed event's outcomes are below those ends.
	h.cluster.ControlKey(int16(kmsg.Produce), func(req kmsg.Request) (kmsg.Response, error, bool) {
		h.cluster.KeepControl()
		for _, tp := range req.(*kmsg.ProduceRequest).Topics {
			if tp.Topic == h.cfg.Kafka.OutcomesTopic {
				h.cluster.SleepControl(func() { time.Sleep(50 * time.Millisecond) })
				break
			}
		}
		return nil, nil, false
	})
	stop := make(chan struct{})
	violations := make(chan string, 10)
	var polls sync.WaitGroup
	polls.Add(1)
	go func() {
		defer polls.Done()
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			committed := h.committed()
			have := map[[2]int64]int{}
			for _, m := range h.readUpTo(h.cfg.Kafka.OutcomesTopic, h.endOffsets(h.cfg.Kafka.OutcomesTopic)) {
				var o struct {
					Source struct {
						Partition int   `json:"partition"`
						Offset    int64 `json:"offset"`
					} `json:"source"`
				}
				_ = json.Unmarshal(m.Value, &o)
				have[[2]int64{int64(o.Source.Partition), o.Source.Offset}]++
			}
			for p, c := range committed {
				for off := int64(0); off < c; off++ {
					if n := have[[2]int64{int64(p), off}]; n < 2 {
						select {
						case violations <- fmt.Sprintf("partition %d committed %d but offset %d has %d of its 2 outcomes", p, c, off, n):
						default:
						}
						return
					}
				}
			}
		}
	}()
	h.produce("events", msgs...)
	h.outcomes(2*events, 60*time.Second)
	waitFor(t, 20*time.Second, "all offsets committed", func() bool { return sum(h.committed()) == events })
	close(stop)
	polls.Wait()
	close(violations)
	for v := range violations {
		t.Error(v)
	}
}

// Rebalances while sending: a second member joins while hundreds of sends are in flight, and
// later the first leaves. Revoked partitions finish their in-flight sends and commit before the
// new owner starts, so every event gets exactly one outcome per rule and WeChat exactly one
// message per notification.
func TestRebalanceWhileSending(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 50 * time.Millisecond})
	// A revoked member logs its revocation once its in-flight work has drained: with a budget
	// near the whole stream that is near the end of it, and the join would not land mid-stream.
	h.cfg.Processor.MaxInFlight = 200
	a := h.start()
	const events = 1200
	var msgs []kafka.Message
	for i := 0; i < events; i++ {
		msgs = append(msgs, event(fmt.Sprintf("e-%03d", i), "order.paid", fmt.Sprintf("user%03d", i%60)))
	}
	h.produce("events", msgs...)
	waitFor(t, 10*time.Second, "sends under way", func() bool { return len(h.sim.Deliveries()) >= 50 })
	drained := func() int {
		return strings.Count(h.logBuf.String(), "partitions revoked after finishing in-flight work")
	}
	h.start() // joins: a rebalance while a's sends are in flight
	waitFor(t, 20*time.Second, "the rebalance of the join", func() bool { return strings.Contains(h.logBuf.String(), "partitions revoked") })
	if d := len(h.sim.Deliveries()); d >= 2*events-100 {
		t.Fatalf("the join's rebalance came after %d of %d sends: not while sending", d, 2*events)
	}
	h.stop(a) // leaves while sends are in flight: the other member takes every partition
	wantOneOutcomeEach(t, h.outcomeCounts(2*events, 60*time.Second), msgs)
	if d := len(h.sim.Deliveries()); d != 2*events {
		t.Errorf("simulator delivered %d messages, want %d", d, 2*events)
	}
	waitFor(t, 20*time.Second, "all offsets committed", func() bool { return sum(h.committed()) == events })
	if n := drained(); n < 2 {
		t.Errorf("%d drained revocations logged, want at least 2 (a member joining, a member leaving)", n)
	}
}

// The heartbeats that keep a draining member in the group reach the group's coordinator, on a
// cluster where the broker the processor is configured with is not the coordinator (kafka-go's
// Client.Heartbeat sent them to that broker, which a real one answers with NOT_COORDINATOR).
func TestDrainHeartbeatsReachTheCoordinator(t *testing.T) {
	h := newHarness(t, wechatsim.Config{Latency: 100 * time.Millisecond}, kfake.NumBrokers(3))
	coordinator := h.cluster.CoordinatorFor(h.cfg.Kafka.GroupID)
	// Configure a single broker that is not the coordinator: requests not routed to the
	// coordinator land there.
	other := (coordinator + 1) % 3
	h.cfg.Kafka.Brokers = []string{h.cluster.ListenAddrs()[other]}
	var beats, misrouted atomic.Int64
	h.cluster.ControlKey(int16(kmsg.Heartbeat), func(kmsg.Request) (kmsg.Response, error, bool) {
		h.cluster.KeepControl()
		beats.Add(1)
		if n := h.cluster.CurrentNode(); n != coordinator {
			misrouted.Add(1)
		}
		return nil, nil, false
	})
	h.cfg.Processor.MaxInFlight = 100
	h.start()
	var msgs []kafka.Message
	for i := 0; i < 400; i++ {
		msgs = append(msgs, event(fmt.Sprintf("e-%03d", i), "order.paid", fmt.Sprintf("user%03d", i%40)))
	}
	h.produce("events", msgs...)
	waitFor(t, 10*time.Second, "sends under way", func() bool { return len(h.sim.Deliveries()) >= 20 })
	h.start() // joins: the first member drains its revoked partitions, heartbeating
	waitFor(t, 20*time.Second, "a drained revocation", func() bool {
		return strings.Contains(h.logBuf.String(), "partitions revoked after finishing in-flight work")
	})
	if beats.Load() == 0 {
		t.Fatal("no heartbeat reached any broker")
	}
	if n := misrouted.Load(); n != 0 {
		t.Errorf("%d of %d heartbeats went to a broker that is not the group coordinator (node %d)", n, beats.Load(), coordinator)
	}
	wantOneOutcomeEach(t, h.outcomeCounts(400, 60*time.Second), msgs)
}
