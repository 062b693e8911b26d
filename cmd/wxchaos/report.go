package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// printTable writes one row per result, then each row's command, faults, re-sends per fault and
// missed targets.
func printTable(w io.Writer, results []*result) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight|tabwriter.Debug)
	fmt.Fprintln(tw, "scenario\tseed\tevents\tlost\tno outcome\tsent twice (notifs)\tworst fault\tdup outcomes\torder\tfailed transient\tundelivered\tdead-lettered\trecovery max\tdrain\tsecrets\tresult\t")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%d\t%d (%d)\t%s\t%d\t%d\t%s\t%d\t%s\t%s\t%s\t%d\t%s\t\n",
			r.Scenario, r.Seed, r.Events, r.Lost, r.NoOutcome, r.Resent, r.ResentNotifs, r.worstFault(), r.DupOutcomes,
			r.OrderViolations, r.failedText(), r.Undelivered, r.dlqText(), r.recoveryText(), durText(r.Drain), r.secretsTotal(), r.verdict())
	}
	tw.Flush()
	for _, r := range results {
		fmt.Fprintf(w, "\n%s: %s\n", r.Scenario, r.Command)
		fmt.Fprintf(w, "  %s in %s; faults: %s\n", r.sizeText(), r.Elapsed.Round(100*time.Millisecond), r.faultsText())
		if len(r.PerFault) > 0 || r.Unattributed > 0 {
			fmt.Fprintf(w, "  sent twice per fault: %s\n", r.perFaultText())
		}
		if r.Deduplicated > 0 {
			fmt.Fprintf(w, "  template.send re-sends WeChat (the simulator) dropped by client_msg_id: %d\n", r.Deduplicated)
		}
		if len(r.Pauses) > 0 {
			ps := make([]string, len(r.Pauses))
			for i, p := range r.Pauses {
				ps[i] = durText(p)
			}
			fmt.Fprintf(w, "  consumption pause of each rebalance (longest gap between new outcomes after a join): %s\n", strings.Join(ps, " / "))
		}
		if r.ForeignDeliveries > 0 {
			fmt.Fprintf(w, "  deliveries that name no notification of the run: %d\n", r.ForeignDeliveries)
		}
		if r.Stall != "" {
			fmt.Fprintf(w, "  at the timeout: %s\n", r.Stall)
		}
		for _, u := range r.Unclean {
			fmt.Fprintf(w, "  unclean stop: %s\n", u)
		}
		for _, m := range r.Misses {
			fmt.Fprintf(w, "  MISS %s\n", m)
		}
	}
}

func (r *result) verdict() string {
	switch {
	case r.TimedOut:
		return "TIMEOUT"
	case len(r.Misses) > 0:
		return fmt.Sprintf("%d missed", len(r.Misses))
	}
	return "ok"
}

func (r *result) worstFault() string {
	worst := -1
	for i, f := range r.PerFault {
		if worst < 0 || f.Resent > r.PerFault[worst].Resent {
			worst = i
		}
	}
	if worst < 0 {
		return "-"
	}
	f := r.PerFault[worst]
	return fmt.Sprintf("%d (%s @%s)", f.Resent, f.Kind, f.At)
}

func (r *result) failedText() string {
	s := fmt.Sprint(r.FailedTransient)
	if r.FailedOther > 0 {
		s += fmt.Sprintf(" (+%d other)", r.FailedOther)
	}
	return s
}

func (r *result) dlqText() string {
	if !r.malformed && r.ForeignDLQ == 0 {
		return "-"
	}
	s := fmt.Sprintf("%d/%d", r.DeadLettered, r.Malformed)
	if r.MalformedSent > 0 {
		s += fmt.Sprintf(", %d sent", r.MalformedSent)
	}
	if r.ForeignDLQ > 0 {
		s += fmt.Sprintf(", %d other", r.ForeignDLQ)
	}
	return s
}

func (r *result) recoveryText() string {
	s := durText(r.Recovery)
	if r.RecoveryNever > 0 {
		s += fmt.Sprintf(", never x%d", r.RecoveryNever)
	}
	return s
}

func durText(d time.Duration) string {
	if d <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.1fs", d.Seconds())
}

func (r *result) sizeText() string {
	return fmt.Sprintf("%d events (%d malformed), %d notifications", r.Events, r.Malformed, r.Expected)
}

func (r *result) faultsText() string {
	if len(r.Faults) == 0 {
		return "none"
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(r.Faults)) {
		parts = append(parts, fmt.Sprintf("%d %s", r.Faults[k], k))
	}
	return strings.Join(parts, ", ")
}

// perFaultText lists each fault's re-sends, or, past a dozen faults (dropped connections), each
// kind's total, fault count and worst.
func (r *result) perFaultText() string {
	var parts []string
	if len(r.PerFault) <= 12 {
		for _, f := range r.PerFault {
			parts = append(parts, fmt.Sprintf("%s @%s: %d (%d in flight, %d finished uncommitted)", f.Kind, f.At, f.Resent, f.Resent-f.Finished, f.Finished))
		}
	} else {
		type agg struct{ total, n, worst int }
		kinds := make(map[string]*agg)
		for _, f := range r.PerFault {
			a := kinds[f.Kind]
			if a == nil {
				a = &agg{}
				kinds[f.Kind] = a
			}
			a.total, a.n, a.worst = a.total+f.Resent, a.n+1, max(a.worst, f.Resent)
		}
		for _, k := range slices.Sorted(maps.Keys(kinds)) {
			a := kinds[k]
			parts = append(parts, fmt.Sprintf("%s: %d after %d of them (worst %d)", k, a.total, a.n, a.worst))
		}
	}
	if r.Unattributed > 0 {
		parts = append(parts, fmt.Sprintf("before any fault: %d", r.Unattributed))
	}
	return strings.Join(parts, "; ")
}
