// Command wxbench measures wxnotify end to end on one machine: it starts the in-process Kafka
// broker (kfake) and the WeChat simulator (counters only), writes sample-shaped events, runs the
// processor through app.Run (the code path of `wxnotify run`), reads every outcome back, and
// prints throughput, CPU per event, peak RSS, event -> outcome latency and delivery errors.
//
//	wxbench                                   200k-event backlog, instant simulator
//	wxbench -latency 50ms                     the same at 50ms per WeChat call
//	wxbench -mode steady -rate 1000 -duration 30s -latency 50ms
//
// By default the processor runs in a child process (this binary re-executed), so its CPU time and
// memory are measured alone while broker, simulator and bench share the machine's cores, as the
// targets assume. -inprocess runs everything in one process instead.
//
// # What the figures mean
//
//   - throughput: events whose outcomes all arrived, divided by the window. Backlog: the window runs
//     from processor start (child exec or app.Run call; group join and rule load included) to the
//     moment the bench read the last outcome back. Steady: from the first event produced (after the
//     processor holds its partitions) to the last outcome read.
//   - steady-state: events between the 10% and 90% completion marks divided by the time between
//     them: throughput without start-up and tail.
//   - CPU per event: user+system CPU time over the window divided by events. Split mode: the child's
//     (/proc/PID/stat, 10ms ticks), i.e. the processor alone, startup included for a backlog; the
//     bench process (broker, simulator, producer, outcome reader) is listed separately. -inprocess:
//     getrusage of the whole process.
//   - peak RSS: the processor's process, the largest VmRSS sampled every 100ms, and VmHWM at exit.
//     With -inprocess that includes the broker holding every event and outcome.
//   - event -> outcome: from the producer's WriteMessages call for the event's batch to the bench
//     reading the event's (last) outcome record back from the outcomes topic, both on this
//     process's monotonic clock. In a backlog run it is dominated by the wait in the backlog.
//   - deliveries: the simulator's delivery count and duplicated (api, touser, body) keys, and per
//     event the outcome count against what the rules produce (exactly one with the bench rules).
//
// Exit status: 0 when every event has exactly its outcomes and nothing was delivered twice; 1 when
// not; 2 for usage errors.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

func main() {
	if os.Getenv(roleEnv) == "processor" {
		os.Exit(childMain())
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wxbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o options
	fs.StringVar(&o.mode, "mode", "backlog", "backlog (all events written before the processor starts) or steady (written at -rate)")
	fs.IntVar(&o.events, "n", 200000, "backlog: events to write")
	fs.Float64Var(&o.rate, "rate", 1000, "steady: events per second")
	fs.DurationVar(&o.duration, "duration", 30*time.Second, "steady: how long to write events")
	fs.DurationVar(&o.latency, "latency", 0, "simulator latency added to every send call")
	fs.IntVar(&o.maxInFlight, "max-in-flight", 1024, "processor.max_in_flight")
	fs.StringVar(&o.fetchLinger, "fetch-linger", "", "kafka.fetch_linger (default: the config default)")
	fs.StringVar(&o.produceLinger, "produce-linger", "", "kafka.produce_linger (default: the config default)")
	fs.StringVar(&o.procs, "procs", "all", "processor.procs: all or adaptive (-inprocess: always all, the bench shares the process)")
	fs.IntVar(&o.partitions, "partitions", 8, "partitions of the events topic")
	fs.IntVar(&o.users, "users", 20000, "distinct recipients the events are spread over")
	fs.StringVar(&o.rulesDir, "rules", "", "rule file or directory to use instead of the embedded bench rules (one send per event)")
	fs.BoolVar(&o.inProcess, "inprocess", false, "run the processor in this process instead of a child (CPU and RSS then include broker and simulator)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write the processor's CPU profile here (with -inprocess: the whole process's)")
	fs.StringVar(&o.memProfile, "memprofile", "", "write the processor's allocation profile here at exit")
	fs.DurationVar(&o.timeout, "timeout", 2*time.Minute, "give up waiting for outcomes this long after the events are written")
	fs.StringVar(&o.logLevel, "log-level", "warn", "processor log level: debug, info, warn, error")
	fs.BoolVar(&o.progress, "progress", true, "print a progress line every second")
	fs.Uint64Var(&o.seed, "seed", 1, "seed of the event generator")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	switch {
	case fs.NArg() > 0:
		fmt.Fprintf(stderr, "wxbench: unexpected arguments %s\n", strings.Join(fs.Args(), " "))
		return 2
	case o.mode != "backlog" && o.mode != "steady":
		fmt.Fprintf(stderr, "wxbench: -mode %q is not backlog or steady\n", o.mode)
		return 2
	case o.partitions < 1 || o.maxInFlight < 1 || o.users < 1 || o.rate <= 0:
		fmt.Fprintln(stderr, "wxbench: -partitions, -max-in-flight, -users and -rate must be positive")
		return 2
	}
	if o.inProcess && o.memProfile != "" {
		fmt.Fprintln(stderr, "wxbench: -memprofile is for the processor child; profile -inprocess runs with -cpuprofile")
		return 2
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	r, err := bench(ctx, o, stdout, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "wxbench: %v\n", err)
		return 1
	}
	r.print(stdout)
	if f := r.failures(); len(f) > 0 {
		fmt.Fprintf(stderr, "wxbench: FAIL: %s\n", strings.Join(f, "; "))
		return 1
	}
	return 0
}
