// Command wxchaos runs wxnotify's processor through faults and checks its delivery promise
// (README, "Delivery guarantees"; issue 12). Each scenario starts a persistent in-process Kafka
// broker (kfake, DataDir on a fixed port) and the WeChat simulator, produces sample-shaped events
// keyed by recipient, runs the processor as child processes (this binary re-executed, built
// from YAML through app.ParseConfig and run with app.Run, as `wxnotify run` does), injects the
// scenario's faults, and ends when every expected notification has an outcome or the timeout
// passes. A set-based checker then compares what the rules expect with what the simulator
// delivered and the outcome and dead-letter topics hold. See cmd/wxchaos/README.md.
//
//	wxchaos                                  every scenario at full size, random seed
//	wxchaos -scenario kill9,sigterm -seed 7  two scenarios, seeded
//	wxchaos -soak 60m -rate 1000             a steady run with faults, memory and goroutines sampled
//
// Exit status: 0 when every scenario meets its targets, 1 when one does not (or a run failed), 2
// for usage errors.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

func main() {
	if os.Getenv(roleEnv) == roleProcessor {
		os.Exit(childMain())
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("wxchaos", flag.ContinueOnError)
	fs.SetOutput(stderr)
	p := fullParams()
	p.flags(fs)
	names := fs.String("scenario", "all", "scenarios to run, comma-separated, or all")
	seed := fs.Uint64("seed", 0, "seed of events and fault plans (0 = random, printed)")
	dir := fs.String("dir", "", "keep broker data and member logs under DIR/SCENARIO (DIR/soak for -soak), emptied first (default: a temporary directory, removed)")
	list := fs.Bool("list", false, "list the scenarios and exit")
	var so soakOptions
	so.flags(fs)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *list {
		for _, s := range scenarios {
			fmt.Fprintf(stdout, "%-18s %s\n", s.name, s.about)
		}
		return 0
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(stderr, "wxchaos: unexpected arguments %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	if err := p.Validate(); err != nil {
		fmt.Fprintf(stderr, "wxchaos: %v\n", err)
		return 2
	}
	var run []*scenario
	if *names == "all" {
		run = scenarios
	} else {
		for _, n := range strings.Split(*names, ",") {
			s := scenarioNamed(strings.TrimSpace(n))
			if s == nil {
				fmt.Fprintf(stderr, "wxchaos: unknown scenario %q (wxchaos -list)\n", n)
				return 2
			}
			run = append(run, s)
		}
	}
	if *seed == 0 {
		*seed = uint64(time.Now().UnixNano())
	}
	fmt.Fprintf(stdout, "wxchaos: seed %d\n", *seed)

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	base := *dir
	if base == "" {
		tmp, err := os.MkdirTemp("", "wxchaos-")
		if err != nil {
			fmt.Fprintf(stderr, "wxchaos: %v\n", err)
			return 1
		}
		defer os.RemoveAll(tmp)
		base = tmp
	}
	if so.duration > 0 {
		sdir := filepath.Join(base, "soak")
		if err := os.RemoveAll(sdir); err != nil { // a previous soak's broker data would be read back
			fmt.Fprintf(stderr, "wxchaos: %v\n", err)
			return 1
		}
		return soak(ctx, p, so, *seed, sdir, stdout, stderr)
	}

	var results []*result
	failed := false
	for _, s := range run {
		sp := resolve(s, p)
		fmt.Fprintf(stdout, "%s: %s (%s)\n", s.name, s.about, sp.command(s.name, *seed))
		sdir := filepath.Join(base, s.name)
		if err := os.RemoveAll(sdir); err != nil { // a previous run's broker data would be read back
			fmt.Fprintf(stderr, "wxchaos: %v\n", err)
			return 1
		}
		res, err := runScenario(ctx, s, p, *seed, sdir, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "wxchaos: %s: %v\n", s.name, err)
			failed = true
			if ctx.Err() != nil {
				break
			}
			continue
		}
		fmt.Fprintf(stdout, "%s: %s in %s, logs in %s\n", s.name, res.verdict(), res.Elapsed.Round(100*time.Millisecond), filepath.Join(sdir, "logs"))
		results = append(results, res)
		failed = failed || len(res.Misses) > 0
	}
	fmt.Fprintln(stdout)
	printTable(stdout, results)
	if failed {
		return 1
	}
	return 0
}
