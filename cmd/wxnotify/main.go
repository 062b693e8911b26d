// Command wxnotify turns business events on Kafka into WeChat notifications.
//
//	wxnotify run    -config configs/wxnotify.yaml   the processor, against Kafka and WeChat
//	wxnotify demo   [-rules DIR] [-keep]            everything in one process, on sample events
//	wxnotify check  -config FILE | -rules PATH      load and compile every rule; print every problem
//	wxnotify render -rules PATH -event FILE         the exact bodies the rules make of events
//	wxnotify test   [-rules configs/rules]          run the rule fixtures (*_test.yaml)
//	wxnotify schema [-o FILE]                       the JSON Schema of rule files
//	wxnotify version                                version, revision and Go version
//
// check, render, test and schema are the rule authoring tools: they need no network, no
// token and no Kafka, so they run in CI and in an init container.
//
// Exit status: 0 success, 1 failure (or problems found, tests failed, a body rejected),
// 2 usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxnotify/wxnotify/cmd/internal/app"
)

func main() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) }

// version and revision are stamped by the linker, as deploy/Dockerfile does:
//
//	go build -ldflags "-X main.version=v1.4.0 -X main.revision=$(git rev-parse HEAD)" ./cmd/wxnotify
//
// Unstamped, app.ReadBuild takes what the Go toolchain recorded.
var version, revision string

const usage = `usage: wxnotify <command> [flags]

commands:
  run    -config FILE        run the processor against Kafka and WeChat
  demo   [-rules DIR] [-keep]
                             run broker, WeChat simulator and processor in one process on sample events
  check  -config FILE        check the config and every rule (or -rules PATH: rules only); no network
  render -rules PATH -event FILE [-explain]
                             print the exact request bodies the rules make of the events in FILE
  test   [-rules PATH]       run the rule fixtures (*_test.yaml) next to the rules (default configs/rules)
  schema [-o FILE]           print the JSON Schema of rule files (configs/rules.schema.json)
  version                    print the version, the revision and the Go version

"wxnotify <command> -h" shows a command's flags.
`

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "run":
		return cmdRun(ctx, args[1:], stderr)
	case "demo":
		return cmdDemo(ctx, args[1:], stdout, stderr)
	case "check":
		return cmdCheck(args[1:], stdout, stderr)
	case "render":
		return cmdRender(args[1:], stdout, stderr)
	case "test":
		return cmdTest(args[1:], stdout, stderr)
	case "schema":
		return cmdSchema(args[1:], stdout, stderr)
	case "version", "-version", "--version":
		if len(args) > 1 {
			fmt.Fprintf(stderr, "wxnotify version: unexpected argument %q\n", args[1])
			return 2
		}
		fmt.Fprintln(stdout, app.ReadBuild(version, revision))
		return 0
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "wxnotify: unknown command %q\n\n%s", args[0], usage)
	return 2
}

const runUsage = `usage: wxnotify run [-config FILE]

Runs the processor against Kafka and WeChat: it consumes the events topics in the consumer
group, evaluates the rules, sends through the WeChat APIs, and writes one outcome record per
notification to the outcomes topic. Scale out by running more processes in the same group.

It needs what the config names: the brokers and their topics (the events topics must exist;
kafka.create_topics: true creates missing outcome, dead-letter and delay topics, for local and
test setups), and the environment variables and secret files of the credentials:
"wxnotify check -config FILE" lists those that are not set. On http.addr it serves /metrics,
/healthz and /readyz (and /debug/pprof/ with http.pprof: true).

Signals: SIGTERM or Ctrl-C stops fetching, finishes in-flight work within
processor.drain_timeout, flushes the outcomes, commits and exits 0. SIGHUP reloads the rules
(a change to the rule files reloads them too); a set with a problem is rejected and the
current one keeps running.

Exit status: 0 stopped by a signal, 1 could not start (the message names the config key) or
stopped on an error (e.g. an outcome write the broker refuses for good), 2 usage.

`

func cmdRun(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, runUsage); fs.PrintDefaults() }
	path := fs.String("config", "configs/wxnotify.yaml", "config `file`")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	cfg, err := app.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify: %v\n", err)
		return 1
	}
	build := app.ReadBuild(version, revision)
	if err := app.Run(ctx, cfg, app.Options{Reload: reloadOnHangup(ctx), Build: build}); err != nil {
		fmt.Fprintf(stderr, "wxnotify: %v\n", err)
		return 1
	}
	return 0
}

// reloadOnHangup turns SIGHUP into rule reload requests until ctx ends. Requests that arrive
// while one is pending coalesce: one reload reads the files as they are then.
func reloadOnHangup(ctx context.Context) <-chan struct{} {
	reload := make(chan struct{}, 1)
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	go func() {
		defer signal.Stop(hup)
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				select {
				case reload <- struct{}{}:
				default:
				}
			}
		}
	}()
	return reload
}

const demoUsage = `usage: wxnotify demo [-rules DIR] [-keep] [-kafka-port N] [-http ADDR] [-log-level LEVEL]

Runs the whole pipeline in one process, with nothing to install: an in-process Kafka broker
(on a real TCP port, so kcat works against it), the WeChat simulator, and the processor on
the code path of "wxnotify run". It writes the sample events (configs/samples) to the events
topic, prints each outcome as it lands on the outcomes topic, then a summary, and exits 0 once
every sample has its outcomes.

-rules DIR is a playground for rule authors: the processor runs your rule files instead of the
shipped ones and keeps running. Edit a file and the rules reload; after each reload the
samples are written again, so you see what your change does to them. A set with a problem is
rejected with the messages of "wxnotify check" (on stderr) and the previous one keeps running.
Your rules may use the accounts weapp (Mini Program) and mp (Official Account): the simulator
knows those two.

Exit status: 0 every sample has its outcomes (or Ctrl-C with -keep or -rules), 1 failure,
2 usage.

`

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, demoUsage); fs.PrintDefaults() }
	rulesDir := fs.String("rules", "", "run the rule files in `DIR` (a directory, or one file) instead of the shipped ones, reload them on change, and keep running")
	keep := fs.Bool("keep", false, "keep broker, simulator and processor running after the samples, printing outcomes (Ctrl-C stops)")
	port := fs.Int("kafka-port", 0, "`port` for the in-process broker (0 = any free port)")
	httpAddr := fs.String("http", "", "`address` of /metrics, /healthz, /readyz (default 127.0.0.1:9464, or any free port if taken)")
	level := fs.String("log-level", "error", "processor log `level`: debug, info, warn, error")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	log, err := app.NewLogger(app.LogConfig{Level: *level, Format: "text"})
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify demo: -log-level: %v\n", err)
		return 2
	}
	log.SetOutput(stderr)
	err = app.Demo(ctx, app.DemoOptions{Out: stdout, Log: log, Keep: *keep, KafkaPort: *port, HTTPAddr: *httpAddr,
		RulesPath: *rulesDir, Build: app.ReadBuild(version, revision)})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "wxnotify demo: %v\n", err)
		return 1
	}
	return 0
}
