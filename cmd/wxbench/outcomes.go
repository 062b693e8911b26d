package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/wxnotify/wxnotify/cmd/internal/app"
	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
)

// tally is what the bench knows per event: when it was produced, how many outcomes came back and
// when the last one did. Times are nanoseconds since tally.start on the monotonic clock.
type tally struct {
	start    time.Time
	sent     []int64  // written by the producer before the event can have an outcome
	recv     []int64  // time of the event's last expected outcome
	count    []uint32 // outcomes seen, atomically
	expected []uint8  // outcomes the rules should produce for the event

	want     int64        // events with expected > 0
	complete atomic.Int64 // events whose outcome count reached expected
	outcomes atomic.Int64 // outcome records read
	notSent  atomic.Int64 // outcomes whose status is not "sent"
	foreign  atomic.Int64 // outcomes whose event_id is not one of ours
	first    atomic.Int64 // time of the first outcome, 0 until then
	marks    [3]atomic.Int64
	allDone  chan struct{}
}

// Completion marks: the times at which 10%, 90% and 100% of the events had all their outcomes.
const (
	mark10 = iota
	mark90
	markAll
)

func newTally(n int) *tally {
	t := &tally{
		start: time.Now(), sent: make([]int64, n), recv: make([]int64, n), count: make([]uint32, n),
		expected: make([]uint8, n), allDone: make(chan struct{}),
	}
	for i := range t.expected {
		t.expected[i] = 1
	}
	t.want = int64(n)
	return t
}

func (t *tally) now() int64 { return int64(time.Since(t.start)) }

// setExpected replaces the default of one outcome per event.
func (t *tally) setExpected(i int, n int) {
	if t.expected[i] > 0 && n == 0 {
		t.want--
	} else if t.expected[i] == 0 && n > 0 {
		t.want++
	}
	t.expected[i] = uint8(min(n, 255))
}

var (
	eventIDField = []byte(`"event_id":"`)
	statusField  = []byte(`"status":"`)
)

// observe accounts one outcome record. It only looks for two fields: decoding every outcome
// with encoding/json would cost the bench as much CPU as the processor spends encoding it.
func (t *tally) observe(value []byte, at int64) {
	t.outcomes.Add(1)
	t.first.CompareAndSwap(0, at)
	if s := field(value, statusField); string(s) != "sent" {
		t.notSent.Add(1)
	}
	id := field(value, eventIDField)
	i, err := strconv.Atoi(string(bytes.TrimPrefix(id, []byte(eventgen.IDPrefix))))
	if err != nil || !bytes.HasPrefix(id, []byte(eventgen.IDPrefix)) || i < 0 || i >= len(t.count) {
		t.foreign.Add(1)
		return
	}
	c := atomic.AddUint32(&t.count[i], 1)
	if c != uint32(t.expected[i]) {
		return
	}
	t.recv[i] = at
	done := t.complete.Add(1)
	for m, target := range [...]int64{mark10: t.want / 10, mark90: t.want * 9 / 10, markAll: t.want} {
		if done == max(target, 1) {
			t.marks[m].Store(t.now())
		}
	}
	if done == t.want {
		close(t.allDone)
	}
}

// field returns the string value of the first occurrence of name (`"x":"`) in a JSON object
// whose values need no unescaping, as the outcome's event_id and status do.
func field(b, name []byte) []byte {
	i := bytes.Index(b, name)
	if i < 0 {
		return nil
	}
	b = b[i+len(name):]
	if j := bytes.IndexByte(b, '"'); j >= 0 {
		return b[:j]
	}
	return nil
}

// readOutcomes follows every partition of topic from offset 0 until ctx ends, with one
// connection per partition and no per-record allocation (Batch.Read into a reused buffer).
func readOutcomes(ctx context.Context, broker, topic string, t *tally, wg *sync.WaitGroup) error {
	parts, err := app.TopicPartitions(ctx, broker, topic)
	if err != nil {
		return fmt.Errorf("outcomes topic: %w", err)
	}
	for _, p := range parts {
		c, err := kafka.DialLeader(ctx, "tcp", broker, topic, p.ID)
		if err != nil {
			return fmt.Errorf("outcomes partition %d: %w", p.ID, err)
		}
		if _, err := c.Seek(0, kafka.SeekAbsolute); err != nil {
			c.Close()
			return fmt.Errorf("outcomes partition %d: %w", p.ID, err)
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			<-ctx.Done()
			c.Close() // unblocks a fetch waiting for data
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			for ctx.Err() == nil {
				batch := c.ReadBatchWith(kafka.ReadBatchConfig{MinBytes: 1, MaxBytes: 4 << 20, MaxWait: 500 * time.Millisecond})
				for {
					n, err := batch.Read(buf)
					if err != nil {
						if errors.Is(err, io.ErrShortBuffer) {
							buf = make([]byte, 2*len(buf))
						}
						break
					}
					t.observe(buf[:n], t.now())
				}
				if err := batch.Close(); err != nil && ctx.Err() == nil && !errors.Is(err, io.ErrShortBuffer) {
					time.Sleep(50 * time.Millisecond) // a broker hiccup; the connection stays usable for kafka errors
				}
			}
		}()
	}
	return nil
}
