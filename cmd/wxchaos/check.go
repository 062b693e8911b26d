package main

import (
	"bytes"
	"cmp"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/wxnotify/wxnotify/cmd/internal/eventgen"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// result is the checker's verdict on one scenario run: one row of the table.
type result struct {
	Scenario string
	Seed     uint64
	Command  string
	Elapsed  time.Duration
	TimedOut bool
	Stall    string // at a timeout: the consumer group as the broker saw it

	Events    int // records produced, malformed ones included
	Malformed int
	Expected  int // notifications the rules make of the well-formed events

	Lost        int // expected notifications with neither a delivery nor an outcome
	NoOutcome   int // expected notifications without an outcome
	Undelivered int // expected notifications the simulator never delivered (failed ones included)

	Resent        int // deliveries beyond the first, summed over notifications
	ResentNotifs  int // notifications delivered more than once
	TemplateTwice int // template.send deliveries beyond the first (WeChat dedup by client_msg_id applied)
	Deduplicated  int64
	PerFault      []faultResends // faults that re-sent anything, in time order
	Unattributed  int            // re-sends before any fault
	Faults        map[string]int // faults injected, by kind

	DupOutcomes     int // outcome records beyond the first, summed
	OrderViolations int // notifications first delivered before an earlier event of their key, account and API
	FailedTransient int // notifications with a failed outcome of class transient
	FailedOther     int // notifications with a failed outcome of another class

	DeadLettered  int // malformed records with a dead letter
	ForeignDLQ    int // dead letters of well-formed events or of records not ours
	MalformedSent int // malformed records delivered or given an outcome
	LateTemplate  int // subscribe outage: template.send notifications not delivered before it ended

	Recovery      time.Duration // the longest time from a fault's end to the next new outcome
	RecoveryNever int           // faults after which no new outcome came though some were missing
	Drain         time.Duration // from the last fault's end to the last new outcome (0: done before it)
	// Pauses are, for the faults that measure one (a member joining a group that is working),
	// the longest gap between consecutive first outcomes within pauseWindow of the fault: how long
	// consumption stopped for the rebalance.
	Pauses []time.Duration

	Secrets           map[string]int // source -> sentinel occurrences
	Races             int            // "WARNING: DATA RACE" in member logs (race-built children)
	Unclean           []string       // members that did not stop cleanly on SIGTERM
	ForeignOutcomes   int
	ForeignDeliveries int

	Misses    []string
	malformed bool
}

// faultResends is what one fault re-sent.
type faultResends struct {
	Kind   string
	At     string // since the members started
	Resent int
	// Finished is the part of Resent whose notification already had an outcome before the
	// fault: finished but not yet committed (the rest were in flight when it struck).
	Finished int
}

func (r *result) secretsTotal() int {
	n := 0
	for _, c := range r.Secrets {
		n += c
	}
	return n
}

func (r *result) secretsText() string {
	var parts []string
	for _, s := range slices.Sorted(maps.Keys(r.Secrets)) {
		parts = append(parts, fmt.Sprintf("%s %d", s, r.Secrets[s]))
	}
	return strings.Join(parts, ", ")
}

// check computes the result from the ledger (outcomes and dead letters read back), the
// simulator's deliveries and the faults injected; t0 is when the members started.
func check(led *ledger, dels []wechatsim.Delivery, faults []fault, t0 time.Time) *result {
	res := &result{Events: len(led.evs), Expected: len(led.notifs), Faults: make(map[string]int), Secrets: make(map[string]int)}
	led.mu.Lock()
	defer led.mu.Unlock()
	for k, v := range led.secrets {
		res.Secrets[k] = v
	}
	res.ForeignOutcomes = led.foreignOutcomes + led.undecodable
	res.ForeignDLQ = led.foreignDLQ
	malformedSent := make(map[int32]bool)
	for i, e := range led.evs {
		if e.malformed == "" {
			res.ForeignDLQ += int(led.deadLettered[i])
			continue
		}
		res.Malformed++
		if led.deadLettered[i] > 0 {
			res.DeadLettered++
		}
		if led.malformedOutcomes[int32(i)] {
			malformedSent[int32(i)] = true
		}
	}

	// Deliveries, per notification, in arrival order.
	delivs := make([][]int, len(led.notifs))
	for k, d := range dels {
		id, rule := marker(d.Body)
		n := led.find(id, rule)
		if n < 0 {
			if i := eventgen.Index(id); i >= 0 && i < len(led.evs) && led.evs[i].malformed != "" {
				malformedSent[int32(i)] = true
			} else {
				res.ForeignDeliveries++
			}
			continue
		}
		delivs[n] = append(delivs[n], k)
	}
	res.MalformedSent = len(malformedSent)

	for _, f := range faults {
		res.Faults[f.kind]++
	}
	perFault := make([]int, len(faults))
	perFaultFinished := make([]int, len(faults))
	var firsts []time.Time
	for n := range led.notifs {
		nt := &led.notifs[n]
		if nt.outcomes == 0 {
			res.NoOutcome++
		} else {
			res.DupOutcomes += int(nt.outcomes - 1)
			firsts = append(firsts, nt.first)
		}
		if nt.failedTransient > 0 {
			res.FailedTransient++
		}
		if nt.failedOther > 0 {
			res.FailedOther++
		}
		ds := delivs[n]
		if len(ds) == 0 {
			res.Undelivered++
			if nt.outcomes == 0 {
				res.Lost++
			}
			continue
		}
		if extra := len(ds) - 1; extra > 0 {
			res.Resent += extra
			res.ResentNotifs++
			if nt.rule.api == "template.send" {
				res.TemplateTwice += extra
			}
			for _, k := range ds[1:] {
				if f := lastFaultBefore(faults, dels[k].At); f >= 0 {
					perFault[f]++
					if nt.outcomes > 0 && nt.first.Before(faults[f].start) {
						perFaultFinished[f]++
					}
				} else {
					res.Unattributed++
				}
			}
		}
	}
	for i, c := range perFault {
		if c > 0 {
			res.PerFault = append(res.PerFault, faultResends{Kind: faults[i].kind, At: since(t0, faults[i].start), Resent: c, Finished: perFaultFinished[i]})
		}
	}
	res.OrderViolations = orderViolations(led, delivs)
	res.LateTemplate = lateTemplate(led, delivs, dels, faults)

	slices.SortFunc(firsts, func(a, b time.Time) int { return a.Compare(b) })
	var lastEnd time.Time
	for _, f := range faults {
		if !f.recovery {
			continue
		}
		lastEnd = maxTime(lastEnd, f.end)
		i := sort.Search(len(firsts), func(i int) bool { return firsts[i].After(f.end) })
		switch {
		case i < len(firsts):
			res.Recovery = max(res.Recovery, firsts[i].Sub(f.end))
		case res.NoOutcome > 0:
			res.RecoveryNever++
		}
	}
	if len(firsts) > 0 && !lastEnd.IsZero() && firsts[len(firsts)-1].After(lastEnd) {
		res.Drain = firsts[len(firsts)-1].Sub(lastEnd)
	}
	for _, f := range faults {
		if f.pause {
			res.Pauses = append(res.Pauses, longestGap(firsts, f.start, f.start.Add(pauseWindow)))
		}
	}
	return res
}

// pauseWindow is how long after a join its rebalance pause is looked for.
const pauseWindow = 15 * time.Second

// longestGap returns the longest time between consecutive times of sorted within [from, to]
// (from itself counts as the first).
func longestGap(sorted []time.Time, from, to time.Time) time.Duration {
	i := sort.Search(len(sorted), func(i int) bool { return sorted[i].After(from) })
	var gap time.Duration
	prev := from
	for ; i < len(sorted) && !sorted[i].After(to); i++ {
		gap = max(gap, sorted[i].Sub(prev))
		prev = sorted[i]
	}
	return gap
}

// marker finds "chaos=<event id>~<rule>", which every chaos rule puts in its body.
func marker(body []byte) (id, rule string) {
	i := bytes.Index(body, []byte("chaos="))
	if i < 0 {
		return "", ""
	}
	b := body[i+len("chaos="):]
	end := bytes.IndexFunc(b, func(r rune) bool {
		return !(r == '-' || r == '~' || r == '_' || r == '.' || ('0' <= r && r <= '9') || ('a' <= r && r <= 'z') || ('A' <= r && r <= 'Z'))
	})
	if end >= 0 {
		b = b[:end]
	}
	id, rule, _ = strings.Cut(string(b), "~")
	return id, rule
}

func lastFaultBefore(faults []fault, at time.Time) int {
	best := -1
	for i, f := range faults {
		if !f.start.After(at) && (best < 0 || f.start.After(faults[best].start)) {
			best = i
		}
	}
	return best
}

// orderViolations counts notifications whose first delivery came before the first delivery of a
// notification of an earlier event (by offset) with the same Kafka key, account and API.
func orderViolations(led *ledger, delivs [][]int) int {
	lanes := make(map[string][]int)
	for n := range led.notifs {
		nt := &led.notifs[n]
		lane := string(led.evs[nt.ev].key) + "\x00" + nt.rule.account + "\x00" + nt.rule.api
		lanes[lane] = append(lanes[lane], n)
	}
	bad := 0
	for _, ns := range lanes {
		slices.SortFunc(ns, func(a, b int) int {
			ea, eb := &led.evs[led.notifs[a].ev], &led.evs[led.notifs[b].ev]
			return cmp.Or(cmp.Compare(ea.partition, eb.partition), cmp.Compare(ea.offset, eb.offset))
		})
		latest := -1 // the latest first delivery so far, as an index into the deliveries
		for _, n := range ns {
			if len(delivs[n]) == 0 {
				continue
			}
			if first := delivs[n][0]; first < latest {
				bad++
			} else {
				latest = first
			}
		}
	}
	return bad
}

// lateTemplate counts, when the run had a subscribeMessage.send outage, the template.send
// notifications not delivered before it ended.
func lateTemplate(led *ledger, delivs [][]int, dels []wechatsim.Delivery, faults []fault) int {
	var end time.Time
	for _, f := range faults {
		if f.kind == "subscribeMessage.send outage" {
			end = f.end
		}
	}
	if end.IsZero() {
		return 0
	}
	late := 0
	for n := range led.notifs {
		if led.notifs[n].rule.api != "template.send" {
			continue
		}
		if len(delivs[n]) == 0 || !dels[delivs[n][0]].At.Before(end) {
			late++
		}
	}
	return late
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

func since(t0, t time.Time) string {
	return fmt.Sprintf("%.1fs", t.Sub(t0).Seconds())
}
