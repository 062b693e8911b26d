package app

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/cmd/internal/procs"
	"github.com/wxnotify/wxnotify/kafkaio"
	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
)

// Options are what a caller of Run may supply instead of building it from the config.
type Options struct {
	// Registry receives every metric; nil = a fresh registry with Go and process collectors.
	Registry *prometheus.Registry
	// Log is the logger; nil = built from cfg.Log, writing to stderr.
	Log *logrus.Logger
	// Rules is a rule set already loaded (the demo's embedded rules); nil = load cfg.Rules.Path.
	Rules *rules.Set
	// Listener serves the ops endpoints instead of listening on cfg.HTTP.Addr.
	Listener net.Listener
	// Started is called once everything is wired, with the address of the ops server ("" if off).
	Started func(opsAddr string)
	// Reload asks for the rules to be reloaded from cfg.Rules.Path (`wxnotify run` sends on it
	// on SIGHUP). Rule files are also watched and reloaded on change. Neither applies when Rules
	// is set.
	Reload <-chan struct{}
	// Now is the processor's clock (expire_after, quiet_hours, dedupe and throttle windows);
	// nil = time.Now. For tests.
	Now func() time.Time
	// Build identifies the binary in wxnotify_build_info; zero = ReadBuild("", "").
	Build Build
	// Reloaded, if set, is called after a reload installed a new rule set (not for the first
	// load), on the reload goroutine.
	Reloaded func(*rules.Set)
}

// NewLogger builds the logger the config asks for.
func NewLogger(c LogConfig) (*logrus.Logger, error) {
	lvl, err := parseLevel(c.Level)
	if err != nil {
		return nil, err
	}
	l := logrus.New()
	l.SetOutput(os.Stderr)
	l.SetLevel(lvl)
	if c.Format == "text" {
		l.SetFormatter(&logrus.TextFormatter{FullTimestamp: true})
	} else {
		l.SetFormatter(&logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano})
	}
	return l, nil
}

func parseLevel(s string) (logrus.Level, error) {
	switch s {
	case "debug", "info", "warn", "error":
		return logrus.ParseLevel(s)
	}
	return 0, fmt.Errorf("%q is not debug, info, warn or error", s)
}

// ruleHolder hands the processor the current rule set; a reload (reload.go) swaps it atomically.
type ruleHolder struct{ p atomic.Pointer[rules.Set] }

func (h *ruleHolder) Current() *rules.Set { return h.p.Load() }

// LoadRules loads the rule set cfg names, checking accounts against the config.
func LoadRules(cfg *Config) (*rules.Set, error) {
	zone, err := time.LoadLocation(cfg.Rules.Zone)
	if err != nil {
		return nil, fmt.Errorf("rules.zone: %w", err)
	}
	return rules.Load(cfg.Rules.Path, rules.Options{Zone: zone, Accounts: sortedKeys(cfg.WeChat.Accounts)})
}

// Run runs wxnotify until ctx is cancelled, then shuts down in order: the processor stops
// fetching, finishes or abandons in-flight work within processor.drain_timeout and commits; the
// Kafka writer flushes; the ops server closes.
func Run(ctx context.Context, cfg *Config, opts Options) error {
	log := opts.Log
	if log == nil {
		var err error
		if log, err = NewLogger(cfg.Log); err != nil {
			return fmt.Errorf("log.level: %w", err)
		}
	}
	reg := opts.Registry
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	build := opts.Build
	if build == (Build{}) {
		build = ReadBuild("", "")
	}
	if err := registerBuildInfo(reg, build); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}

	holder := &ruleHolder{}
	reloads := newReloader(cfg, holder, reg, log)
	defer reloads.close()
	set := opts.Rules
	if set == nil {
		reloads.watchRules()
		var err error
		if set, err = LoadRules(cfg); err != nil {
			return err
		}
	}
	reloads.install(set)
	log.WithFields(logrus.Fields{"rules": len(set.Rules), "version": set.Version, "files": len(set.Files)}).Info("rules loaded")

	client, err := wechat.New(wechatConfig(cfg), reg, log)
	if err != nil {
		return fmt.Errorf("wechat: %w", err)
	}
	defer client.Close()

	kc, err := newKafkaClient(cfg, reg, log)
	if err != nil {
		return err
	}
	defer kc.Close()

	var proc atomic.Pointer[processor.Processor]
	tokensErr := atomic.Pointer[string]{}
	ops, opsAddr, err := serveOps(cfg, opts.Listener, reg, func() readiness {
		cur := holder.Current() // never nil: a set was installed above
		p := proc.Load()
		r := readiness{GroupJoined: p != nil && p.Joined(), RulesVersion: cur.Version, RulesLoadedAt: cur.LoadedAt.UTC().Format(time.RFC3339),
			TokensReady: client.Ready(cur.Accounts()...)}
		if e := tokensErr.Load(); e != nil && !r.TokensReady {
			r.Problems = append(r.Problems, *e)
		}
		if !r.GroupJoined {
			r.Problems = append(r.Problems, "consumer group not joined yet")
		}
		if p != nil {
			r.WeChatHeld = p.Held()
		}
		r.RulesReloadError = reloads.lastFailure()
		r.Ready = r.GroupJoined && r.TokensReady
		return r
	}, log)
	if err != nil {
		return err
	}
	defer func() {
		if ops != nil {
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			_ = ops.Shutdown(sctx)
			cancel()
		}
	}()

	// Kafka: first contact (a wrong password or CA stops here, named by its key), the topics,
	// the writer.
	if err := kc.Check(ctx); err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for the brokers: nothing was started
		}
		return err
	}
	if err := ensureTopics(ctx, kc, cfg, log); err != nil {
		return err
	}
	writer, err := kc.NewWriter(ctx, kafkaio.WriterConfig{
		Topics: []string{cfg.Kafka.OutcomesTopic, cfg.Kafka.DeadLetterTopic, cfg.Kafka.DelayTopic},
		Linger: max(linger(cfg.Kafka.ProduceLinger), 0),
	})
	if err != nil {
		return fmt.Errorf("kafka writer: %w", err)
	}
	pcfg := processorConfig(cfg)
	pcfg.Now = opts.Now
	p, err := processor.New(pcfg, holder, client, writer, kc, reg, log)
	if err != nil {
		_ = writer.Close(time.Second)
		return err
	}
	proc.Store(p)
	reloads.installed = func(set *rules.Set) {
		p.RulesChanged(set)
		if opts.Reloaded != nil {
			opts.Reloaded(set)
		}
	}

	stopTokens := goJoined(ctx, func(ctx context.Context) { obtainTokens(ctx, client, holder, &tokensErr, log) })
	defer stopTokens() // joined before the client closes, on every return path

	mode := procsMode(cfg)
	log.WithFields(logrus.Fields{
		"brokers": cfg.Kafka.Brokers, "group_id": cfg.Kafka.GroupID, "events_topic": []string(cfg.Kafka.EventsTopic),
		"outcomes_topic": cfg.Kafka.OutcomesTopic, "dead_letter_topic": cfg.Kafka.DeadLetterTopic,
		"delay_topic": cfg.Kafka.DelayTopic, "kafka_tls": cfg.Kafka.TLS.Enabled, "kafka_sasl": cfg.Kafka.SASL.Mechanism,
		"wechat": cfg.WeChat.BaseURL, "accounts": sortedKeys(cfg.WeChat.Accounts), "ops": opsAddr,
		"max_in_flight": cfg.Processor.MaxInFlight, "dry_run": cfg.Processor.DryRun,
		"procs": mode, "gomaxprocs": runtime.GOMAXPROCS(0),
	}).Info("wxnotify started")
	if opts.Started != nil {
		opts.Started(opsAddr)
	}

	stopReloads := goJoined(ctx, func(ctx context.Context) { reloads.run(ctx, opts.Reload) })
	stopProcs := func() {}
	if mode == ProcsAdaptive {
		stopProcs = goJoined(ctx, func(ctx context.Context) { procs.Run(ctx, procs.Config{}, reg, log) })
	}

	runErr := p.Run(ctx)
	stopReloads()
	stopProcs()
	if err := writer.Close(writerCloseTimeout); err != nil {
		log.WithError(err).Warn("closing the kafka writer")
	}
	log.Info("wxnotify stopped")
	return runErr
}

// goJoined runs f on a goroutine with a context derived from ctx. The returned stop cancels
// that context and waits for f to return.
func goJoined(ctx context.Context, f func(context.Context)) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		f(ctx)
	}()
	return func() { cancel(); <-done }
}

// writerCloseTimeout bounds the wait for outcome records still unacknowledged at shutdown
// (Run has already waited for the in-flight work within processor.drain_timeout).
const writerCloseTimeout = 15 * time.Second

// procsMode is processor.procs as it applies: a GOMAXPROCS environment variable overrides it.
func procsMode(cfg *Config) string {
	if v := os.Getenv("GOMAXPROCS"); v != "" {
		return "GOMAXPROCS=" + v + " (environment)"
	}
	return cfg.Processor.Procs
}

// obtainTokens keeps a token fetched for every account the current rules use, so a
// misconfigured account shows on /readyz and in the log at startup (and after a reload that
// brings in a new account) rather than on the first event. It retries failures with backoff
// until ctx ends.
func obtainTokens(ctx context.Context, c *wechat.Client, rules *ruleHolder, lastErr *atomic.Pointer[string], log logrus.FieldLogger) {
	delay := time.Second
	for {
		wait := 5 * time.Second // re-check for accounts a reload brought in
		if accounts := rules.Current().Accounts(); !c.Ready(accounts...) {
			cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			err := c.CheckTokens(cctx, accounts)
			cancel()
			if err == nil {
				lastErr.Store(nil)
				delay = time.Second
			} else {
				msg := err.Error()
				lastErr.Store(&msg)
				log.WithError(err).Error("cannot obtain a WeChat access token; notifications for the account will fail until it can")
				wait, delay = delay, min(delay*2, time.Minute)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

func wechatConfig(cfg *Config) wechat.Config {
	accounts := make(map[string]wechat.Account, len(cfg.WeChat.Accounts))
	for name, a := range cfg.WeChat.Accounts {
		accounts[name] = wechat.Account{AppID: a.AppID, Secret: a.Secret, TokenSource: a.TokenSource, TokenURL: a.TokenURL}
	}
	return wechat.Config{
		BaseURL:  cfg.WeChat.BaseURL,
		Accounts: accounts,
		Timeout:  cfg.WeChat.Timeout,
		MaxConns: cfg.WeChat.MaxConns,
		Retry: wechat.RetryPolicy{
			MaxAttempts: cfg.WeChat.Retry.MaxAttempts, BaseDelay: cfg.WeChat.Retry.BaseDelay,
			MaxDelay: cfg.WeChat.Retry.MaxDelay, Deadline: cfg.WeChat.Retry.Deadline,
		},
		RateLimits:      cfg.WeChat.RateLimits,
		BreakerCooldown: cfg.WeChat.BreakerCooldown,
	}
}

func processorConfig(cfg *Config) processor.Config {
	start := int64(kafkaio.FirstOffset)
	if cfg.Kafka.StartOffset == "last" {
		start = kafkaio.LastOffset
	}
	return processor.Config{
		GroupID:           cfg.Kafka.GroupID,
		Topics:            cfg.Kafka.EventsTopic,
		OutcomesTopic:     cfg.Kafka.OutcomesTopic,
		DeadLetterTopic:   cfg.Kafka.DeadLetterTopic,
		DelayTopic:        cfg.Kafka.DelayTopic,
		MaxInFlight:       cfg.Processor.MaxInFlight,
		CommitInterval:    cfg.Processor.CommitInterval,
		DrainTimeout:      cfg.Processor.DrainTimeout,
		SessionTimeout:    cfg.Kafka.SessionTimeout,
		HeartbeatInterval: cfg.Kafka.HeartbeatInterval,
		RebalanceTimeout:  cfg.Kafka.RebalanceTimeout,
		StartOffset:       start,
		DryRun:            cfg.Processor.DryRun,
		MaxDelayed:        cfg.Processor.MaxDelayed,
		ControlMaxKeys:    cfg.Processor.ControlMaxKeys,
		MaxHeld:           cfg.Processor.MaxHeld,
		MaxHold:           cfg.WeChat.MaxHold,
		FetchLinger:       linger(cfg.Kafka.FetchLinger),
	}
}

// linger maps a linger key to the Kafka side's convention: unset is 0 (the default), an
// explicit 0s is negative (off).
func linger(d *time.Duration) time.Duration {
	switch {
	case d == nil:
		return 0
	case *d == 0:
		return -1
	}
	return *d
}

type readiness struct {
	Ready         bool     `json:"ready"`
	GroupJoined   bool     `json:"group_joined"`
	TokensReady   bool     `json:"tokens_ready"`
	RulesVersion  string   `json:"rules_version"`
	RulesLoadedAt string   `json:"rules_loaded_at"`
	Problems      []string `json:"problems,omitempty"`
	// WeChatHeld lists the (account, API)s whose notifications are held because WeChat keeps
	// failing: held notifications are waiting, not lost, and the process stays ready.
	WeChatHeld []processor.HeldAPI `json:"wechat_held,omitempty"`
	// RulesReloadError is the last rules reload that was rejected, until a reload succeeds: the
	// rules of rules_version stay in force, and the process stays ready.
	RulesReloadError *reloadFailure `json:"rules_reload_error,omitempty"`
}

// serveOps starts /metrics, /healthz, /readyz and, with http.pprof, Go's profiling endpoints
// under /debug/pprof/. It returns a nil server when http.addr is off.
func serveOps(cfg *Config, ln net.Listener, reg *prometheus.Registry, ready func() readiness, log logrus.FieldLogger) (*http.Server, string, error) {
	if ln == nil {
		if cfg.HTTP.Addr == "off" {
			return nil, "", nil
		}
		var err error
		if ln, err = net.Listen("tcp", cfg.HTTP.Addr); err != nil {
			return nil, "", fmt.Errorf("http.addr: %w", err)
		}
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		r := ready()
		w.Header().Set("Content-Type", "application/json")
		if !r.Ready {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_ = json.NewEncoder(w).Encode(r)
	})
	if cfg.HTTP.PProf {
		// Registered on this mux only: importing net/http/pprof also adds them to
		// http.DefaultServeMux, which nothing here serves.
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.WithError(err).Error("ops server stopped")
		}
	}()
	return srv, ln.Addr().String(), nil
}
