// Command wxnotify turns business events on Kafka into WeChat notifications.
//
//	wxnotify run    -config configs/wxnotify.yaml   the processor, against Kafka and WeChat
//	wxnotify demo   [-keep]                         everything in one process, on sample events
//	wxnotify check  -config FILE | -rules PATH      load and compile every rule; print every problem
//	wxnotify render -rules PATH -event FILE         the exact bodies the rules make of events
//	wxnotify test   [-rules configs/rules]          run the rule fixtures (*_test.yaml)
//	wxnotify schema [-o FILE]                       the JSON Schema of rule files
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

const usage = `usage: wxnotify <command> [flags]

commands:
  run    -config FILE        run the processor against Kafka and WeChat
  demo   [-keep]             run broker, WeChat simulator and processor in one process on sample events
  check  -config FILE        check the config and every rule (or -rules PATH: rules only); no network
  render -rules PATH -event FILE [-explain]
                             print the exact request bodies the rules make of the events in FILE
  test   [-rules PATH]       run the rule fixtures (*_test.yaml) next to the rules (default configs/rules)
  schema [-o FILE]           print the JSON Schema of rule files (configs/rules.schema.json)

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
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "wxnotify: unknown command %q\n\n%s", args[0], usage)
	return 2
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "configs/wxnotify.yaml", "config file")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg, err := app.LoadConfig(*path)
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify: %v\n", err)
		return 1
	}
	if err := app.Run(ctx, cfg, app.Options{Reload: reloadOnHangup(ctx)}); err != nil {
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

func cmdDemo(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	keep := fs.Bool("keep", false, "keep broker, simulator and processor running after the samples (Ctrl-C stops)")
	port := fs.Int("kafka-port", 0, "port for the in-process broker (0 = any free port)")
	httpAddr := fs.String("http", "", "address of /metrics, /healthz, /readyz (default 127.0.0.1:9464, or any free port if taken)")
	level := fs.String("log-level", "error", "processor log level: debug, info, warn, error")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	log, err := app.NewLogger(app.LogConfig{Level: *level, Format: "text"})
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify demo: -log-level: %v\n", err)
		return 2
	}
	log.SetOutput(stderr)
	err = app.Demo(ctx, app.DemoOptions{Out: stdout, Log: log, Keep: *keep, KafkaPort: *port, HTTPAddr: *httpAddr})
	if err != nil && !errors.Is(err, context.Canceled) {
		fmt.Fprintf(stderr, "wxnotify demo: %v\n", err)
		return 1
	}
	return 0
}
