package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/wxnotify/wxnotify/cmd/internal/app"
)

// The processor runs as a child process: this binary re-executed with roleEnv set. It gets its
// config as YAML text in configEnv and its secrets as separate environment variables the YAML
// names by ${VAR}, as `wxnotify run` gets them.
const (
	roleEnv       = "WXCHAOS_ROLE"
	roleProcessor = "processor"
	configEnv     = "WXCHAOS_CONFIG"
	weappSecret   = "WXCHAOS_WEAPP_SECRET"
	mpSecret      = "WXCHAOS_MP_SECRET"
	kafkaPassword = "WXCHAOS_KAFKA_PASSWORD"
)

// groupID is the processor members' consumer group.
const groupID = "wxchaos"

// The world's WeChat accounts (simulator fixtures).
const (
	weappAppID = "wxchaosweapp00001"
	mpAppID    = "wxchaosmp00000001"
)

// childMain is the processor child: `wxnotify run` on the config in the environment. SIGTERM (or
// SIGINT) stops it gracefully; it exits 0 after a clean stop, 1 if it could not start or failed.
func childMain() int {
	cfg, err := app.ParseConfig([]byte(os.Getenv(configEnv)), os.LookupEnv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "wxchaos processor: config: %v\n", err)
		return 1
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := app.Run(ctx, cfg, app.Options{}); err != nil {
		fmt.Fprintf(os.Stderr, "wxchaos processor: %v\n", err)
		return 1
	}
	return 0
}

// processorYAML is a member's config, as an operator would write it: secrets only as ${VAR}
// references to the member's environment.
func processorYAML(p params, broker, simURL, rulesPath, opsAddr string) string {
	return fmt.Sprintf(`kafka:
  brokers: [%q]
  group_id: %s
  events_topic: %s
  session_timeout: %s
  heartbeat_interval: %s
  rebalance_timeout: %s
  sasl: {mechanism: SCRAM-SHA-512, username: %s, password: "${%s}"}
wechat:
  base_url: %q
  accounts:
    weapp: {appid: %s, secret: "${%s}"}
    mp:    {appid: %s, secret: "${%s}"}
rules:
  path: %q
http:
  addr: %q
processor:
  max_in_flight: %d
  commit_interval: %s
  drain_timeout: %s
  procs: all
log:
  level: info
  format: json
`, broker, groupID, eventsTopic, p.SessionTimeout, p.HeartbeatInterval, p.RebalanceTimeout, kafkaUser, kafkaPassword,
		simURL, weappAppID, weappSecret, mpAppID, mpSecret, rulesPath, opsAddr,
		p.MaxInFlight, p.CommitInterval, p.DrainTimeout)
}
