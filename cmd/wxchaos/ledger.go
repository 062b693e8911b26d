package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
)

// sentinel starts every secret of the chaos world: the app secrets, and (through the
// simulator's TokenPrefix) every access token. A scan counts its occurrences.
const sentinel = "SENTINEL"

// notif is one expected notification: an (event, rule) pair the rules make of a well-formed event.
type notif struct {
	ev   int32
	rule *ruleInfo

	outcomes        int32
	first           time.Time // processed_at of its first outcome
	sent            int32     // outcomes with status sent
	failedTransient int32     // status failed, class transient
	failedOther     int32     // status failed, any other class
}

// ledger is what the run knows about every event while it runs: the outcome and dead-letter
// records read back, fed by the reader's goroutine, waited on by the fault drivers.
type ledger struct {
	evs    []event
	notifs []notif
	byEv   [][]int32 // event index -> its notifs

	mu        sync.Mutex
	pending   int       // notifications without an outcome
	firstRead time.Time // when the first outcome was read
	lastNew   time.Time // the latest processed_at of a notification's first outcome
	changed   chan struct{}
	allDone   chan struct{}

	foreignOutcomes   int            // outcomes naming no expected notification nor a malformed event
	malformedOutcomes map[int32]bool // malformed events that got an outcome
	undecodable       int            // outcome records that are not JSON
	deadLettered      []int32        // per event: dead-letter records
	foreignDLQ        int            // dead-letter records without our event header
	secrets           map[string]int // source -> occurrences of the sentinel
}

func newLedger(evs []event, expect [][]*ruleInfo) *ledger {
	l := &ledger{
		evs: evs, byEv: make([][]int32, len(evs)), changed: make(chan struct{}), allDone: make(chan struct{}),
		malformedOutcomes: make(map[int32]bool), deadLettered: make([]int32, len(evs)), secrets: make(map[string]int),
	}
	for i, rs := range expect {
		for _, r := range rs {
			l.byEv[i] = append(l.byEv[i], int32(len(l.notifs)))
			l.notifs = append(l.notifs, notif{ev: int32(i), rule: r})
		}
	}
	l.pending = len(l.notifs)
	if l.pending == 0 {
		close(l.allDone)
	}
	return l
}

// find returns the index of the expected notification (event id, rule), or -1.
func (l *ledger) find(id, rule string) int {
	i := eventgen.Index(id)
	if i < 0 || i >= len(l.evs) {
		return -1
	}
	for _, n := range l.byEv[i] {
		if l.notifs[n].rule.name == rule {
			return int(n)
		}
	}
	return -1
}

// outcomeRecord is what the checker reads of an outcome (schema wxnotify.outcome/v1).
type outcomeRecord struct {
	EventID     string `json:"event_id"`
	Rule        string `json:"rule"`
	Status      string `json:"status"`
	Class       string `json:"class"`
	ProcessedAt string `json:"processed_at"`
}

// record takes one record of the outcome or dead-letter topic, read at at.
func (l *ledger) record(r *kgo.Record, at time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	source := "outcomes"
	if r.Topic == deadLetters {
		source = "dead letters"
	}
	if n := sentinels(r); n > 0 {
		l.secrets[source] += n
	}
	if r.Topic == deadLetters {
		l.deadLetter(r)
		return
	}
	var o outcomeRecord
	if err := json.Unmarshal(r.Value, &o); err != nil {
		l.undecodable++
		return
	}
	k := l.find(o.EventID, o.Rule)
	if k < 0 {
		if i := eventgen.Index(o.EventID); i >= 0 && i < len(l.evs) && l.evs[i].malformed != "" {
			l.malformedOutcomes[int32(i)] = true
		} else {
			l.foreignOutcomes++
		}
		return
	}
	nt := &l.notifs[k]
	nt.outcomes++
	switch {
	case o.Status == "sent":
		nt.sent++
	case o.Status == "failed" && o.Class == "transient":
		nt.failedTransient++
	case o.Status == "failed":
		nt.failedOther++
	}
	if nt.outcomes > 1 {
		return
	}
	nt.first, _ = time.Parse(time.RFC3339Nano, o.ProcessedAt)
	if l.firstRead.IsZero() {
		l.firstRead = at
	}
	l.lastNew = maxTime(l.lastNew, nt.first)
	l.pending--
	close(l.changed)
	l.changed = make(chan struct{})
	if l.pending == 0 {
		close(l.allDone)
	}
}

// sentinels counts the sentinel in r's key, value and headers.
func sentinels(r *kgo.Record) int {
	n := bytes.Count(r.Key, []byte(sentinel)) + bytes.Count(r.Value, []byte(sentinel))
	for _, h := range r.Headers {
		n += strings.Count(h.Key, sentinel) + bytes.Count(h.Value, []byte(sentinel))
	}
	return n
}

func (l *ledger) deadLetter(r *kgo.Record) {
	for _, h := range r.Headers {
		if h.Key == eventHeader {
			if i := eventgen.Index(string(h.Value)); i >= 0 && i < len(l.evs) {
				l.deadLettered[i]++
				return
			}
		}
	}
	l.foreignDLQ++
}

// errAllDone says every expected notification has its outcome: nothing is left to wait for.
var errAllDone = errors.New("every notification has its outcome")

// waitNew waits until a notification gets a first outcome processed after since (by the
// outcome's processed_at: an outcome written before a fault but read after it does not count).
func (l *ledger) waitNew(ctx context.Context, since time.Time) error {
	for {
		l.mu.Lock()
		pending, last, ch := l.pending, l.lastNew, l.changed
		l.mu.Unlock()
		switch {
		case pending == 0:
			return errAllDone
		case last.After(since):
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// waitFirst waits for the run's first outcome and returns when it was read.
func (l *ledger) waitFirst(ctx context.Context) (time.Time, error) {
	if err := l.waitNew(ctx, time.Time{}); err != nil && !errors.Is(err, errAllDone) {
		return time.Time{}, err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.firstRead, nil
}

// done reports how many notifications have an outcome, and how many are expected.
func (l *ledger) done() (int, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.notifs) - l.pending, len(l.notifs)
}
