// Command wechatsim runs the WeChat server simulator (package sink/wechatsim) as a standalone
// server for demos, benchmarks and staging: it answers the WeChat token and send APIs and serves
// JSON admin endpoints under /admin/.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func main() { os.Exit(run()) }

func run() int {
	fs := flag.NewFlagSet("wechatsim", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:8090", "listen address")
	cfgPath := fs.String("config", "", "YAML config file (accounts, templates, openids, quotas, faults)")
	latency := fs.Duration("latency", -1, "latency added to every send call (overrides the config file)")
	level := fs.String("log-level", "info", "log level: debug, info, warn, error")
	check := fs.Bool("check", false, "validate the config file and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}

	log := logrus.New()
	lvl, err := logrus.ParseLevel(*level)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wechatsim: %v\n", err)
		return 2
	}
	log.SetLevel(lvl)

	cfg, err := loadConfig(*cfgPath)
	if err != nil {
		log.WithError(err).Error("bad config")
		return 1
	}
	if *check {
		fmt.Println("config ok")
		return 0
	}
	if *latency >= 0 {
		cfg.Latency = *latency
	}
	cfg.Logger = log
	if len(cfg.Accounts) == 0 {
		log.Warn("no accounts configured: token endpoints will answer 40013 for every appid")
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	sim, err := wechatsim.StartAt(*addr, cfg)
	if err != nil {
		log.WithError(err).Error("start")
		return 1
	}
	fmt.Println(sim.URL())
	log.WithFields(logrus.Fields{"url": sim.URL(), "accounts": len(cfg.Accounts), "latency": cfg.Latency.String()}).Info("ready")

	<-ctx.Done()
	stop() // a second signal kills the process the default way
	log.Info("shutting down")
	t0 := time.Now()
	if err := sim.Close(); err != nil {
		log.WithError(err).Error("shutdown")
		return 1
	}
	log.WithField("took", time.Since(t0).String()).Info("stopped")
	return 0
}
