package main

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"
)

// The world's topics, as the processor's config defaults name them, and their partitions.
const (
	eventsTopic = "events"
	outcomes    = "wxnotify.outcomes"
	deadLetters = "wxnotify.dlq"
	delayed     = "wxnotify.delayed"

	eventPartitions   = 8
	outcomePartitions = 8
	dlqPartitions     = 1
)

// The chaos process's own Kafka clients mark their requests, so broker faults aimed at the
// processor spare them: the outcome reader's fetches wait readerMaxWait, the producer's produce
// requests carry producerTimeout.
const (
	readerMaxWait   = 777 * time.Millisecond
	producerTimeout = 7777 * time.Millisecond
)

// kafkaUser is the SASL user of every client of the chaos world's broker.
const kafkaUser = "wxchaos"

// sasl is what the chaos process's own clients authenticate with.
func (b *broker) sasl() kgo.Opt {
	return kgo.SASL(scram.Auth{User: kafkaUser, Pass: b.password}.AsSha512Mechanism())
}

// broker is the in-process Kafka broker (kfake), persistent (DataDir) on a fixed port so a
// restart keeps records, topics and committed offsets and clients find it where it was.
type broker struct {
	opts  []kfake.Opt
	addr  string
	hooks func(*kfake.Cluster) // installed on every start; nil = none
	// password is the SCRAM-SHA-512 password of kafkaUser, the only user the broker takes: a
	// sentinel, like the app secrets.
	password string

	mu sync.Mutex
	c  *kfake.Cluster // nil while down
}

func startBroker(dataDir, password string) (*broker, error) {
	addr, err := freeAddr()
	if err != nil {
		return nil, err
	}
	_, portText, _ := net.SplitHostPort(addr)
	port, _ := strconv.Atoi(portText)
	b := &broker{addr: addr, password: password, opts: []kfake.Opt{
		kfake.NumBrokers(1), kfake.Ports(port), kfake.DataDir(dataDir),
		kfake.SeedTopics(eventPartitions, eventsTopic), kfake.SeedTopics(outcomePartitions, outcomes),
		kfake.SeedTopics(dlqPartitions, deadLetters), kfake.SeedTopics(2, delayed),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond),
		kfake.EnableSASL(), kfake.Superuser("SCRAM-SHA-512", kafkaUser, password),
	}}
	if err := b.up(); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *broker) up() error {
	c, err := kfake.NewCluster(b.opts...)
	if err != nil {
		return fmt.Errorf("start kafka broker: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.hooks != nil {
		b.hooks(c)
	}
	b.c = c
	return nil
}

// setHooks installs fn on the running broker and on every restart.
func (b *broker) setHooks(fn func(*kfake.Cluster)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hooks = fn
	if b.c != nil {
		fn(b.c)
	}
}

// restart closes the broker (its clients see their connections closed, then refused), keeps it
// down for down (less if ctx ends) and starts it again. It returns when the broker is back.
func (b *broker) restart(ctx context.Context, down time.Duration) error {
	b.mu.Lock()
	c := b.c
	b.c = nil
	b.mu.Unlock()
	c.Close()
	t := time.NewTimer(down)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return b.up()
}

// groupState describes the processor's consumer group as the broker sees it, for a run that
// stalled: state, generation, and each member's assigned partitions.
func (b *broker) groupState(group string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c == nil {
		return "broker down"
	}
	gi := b.c.GroupInfo(group)
	if gi == nil {
		return "no group " + group
	}
	s := fmt.Sprintf("group %s %s, generation %d, %d members:", group, gi.State, gi.Epoch, len(gi.Members))
	for _, m := range gi.Members {
		s += fmt.Sprintf(" %s (%d partitions)", m.MemberID, m.NumAssigned())
	}
	return s
}

func (b *broker) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.c != nil {
		b.c.Close()
		b.c = nil
	}
}

// dropper answers a share of the processor's Fetch, Produce, OffsetCommit and Heartbeat requests
// by closing the connection unanswered (the request is not applied). Once armed for the first
// time, the first request of each kind is dropped whatever the dice say, so a short run meets
// every kind; arming again (the soak's bursts) rolls the dice alone.
type dropper struct {
	rate   float64
	onDrop func(kind string) // called on the broker's goroutine; must not block

	mu    sync.Mutex
	rng   *rand.Rand
	armed bool
	first map[kmsg.Key]bool // kinds dropped since the first arming
}

var errDropped = errors.New("wxchaos: connection dropped")

var droppedKeys = []kmsg.Key{kmsg.Fetch, kmsg.Produce, kmsg.OffsetCommit, kmsg.Heartbeat}

func newDropper(rate float64, seed uint64, onDrop func(string)) *dropper {
	return &dropper{rate: rate, onDrop: onDrop, rng: rand.New(rand.NewPCG(seed, 0xd809)), first: make(map[kmsg.Key]bool)}
}

// arm starts dropping.
func (d *dropper) arm() {
	d.mu.Lock()
	d.armed = true
	d.mu.Unlock()
}

// disarm stops dropping.
func (d *dropper) disarm() {
	d.mu.Lock()
	d.armed = false
	d.mu.Unlock()
}

// install adds the control hooks to c.
func (d *dropper) install(c *kfake.Cluster) {
	for _, k := range droppedKeys {
		c.ControlKey(int16(k), func(req kmsg.Request) (kmsg.Response, error, bool) {
			c.KeepControl()
			if ownRequest(req) || !d.roll(k) {
				return nil, nil, false
			}
			d.onDrop(k.Name())
			return nil, errDropped, true
		})
	}
}

func (d *dropper) roll(k kmsg.Key) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.armed {
		return false
	}
	if !d.first[k] {
		d.first[k] = true
		return true
	}
	return d.rng.Float64() < d.rate
}

// ownRequest reports whether req comes from the chaos process's own reader or producer.
func ownRequest(req kmsg.Request) bool {
	switch r := req.(type) {
	case *kmsg.FetchRequest:
		return r.MaxWaitMillis == int32(readerMaxWait/time.Millisecond)
	case *kmsg.ProduceRequest:
		return r.TimeoutMillis == int32(producerTimeout/time.Millisecond)
	}
	return false
}
