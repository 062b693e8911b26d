package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/kafka-go"
	"github.com/sirupsen/logrus"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/wxnotify/wxnotify/configs"
	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// DemoOptions configures Demo.
type DemoOptions struct {
	Out       io.Writer      // where outcome lines and the summary go
	Log       *logrus.Logger // the processor's log (quiet by default)
	Keep      bool           // keep everything running after the samples, until ctx ends
	KafkaPort int            // 0 = a free port
	HTTPAddr  string         // ops server; "" = 127.0.0.1:9464, falling back to a free port if taken
	Timeout   time.Duration  // how long to wait for the samples' outcomes; default 60s
	// RulesPath, if set, is a rule file or directory to run instead of the shipped rules: it is
	// watched and reloaded as `wxnotify run` does, the samples are written again after each
	// reload, and Demo keeps running until ctx ends (Keep is implied).
	RulesPath string
	Build     Build // identifies the binary in wxnotify_build_info; zero = ReadBuild("", "")
}

// Demo identities: the simulator knows these accounts and nothing else.
const (
	demoEventsTopic = "events"
	demoWeappAppID  = "wxdemoweapp0000001"
	demoMPAppID     = "wxdemomp000000001"
	// demoNoConsentOpenID has used up its subscribe consent: the simulator answers 43101 for it,
	// so the demo shows a permanent failure next to the successes.
	demoNoConsentOpenID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS6r"
)

// Demo runs the whole pipeline in one process: an in-process Kafka-protocol broker (kfake) on a
// real TCP port, the WeChat simulator, and the processor through Run, the same path as
// `wxnotify run`. It writes the shipped sample events, prints each outcome as it lands on the
// outcomes topic, then a summary. It returns nil once every sample has all its outcomes (with
// Keep or RulesPath, once ctx ends after that).
func Demo(ctx context.Context, o DemoOptions) error {
	start := time.Now()
	if o.Timeout <= 0 {
		o.Timeout = 60 * time.Second
	}
	if o.Log == nil {
		o.Log = logrus.New()
		o.Log.SetLevel(logrus.ErrorLevel)
	}
	// With Keep, outcome lines and reload notices are printed from two goroutines.
	o.Out = &lockedWriter{w: o.Out}

	// Rules and samples, from the files shipped in configs/ (or the caller's rules).
	set, err := demoRules(o.RulesPath)
	if err != nil {
		return err
	}
	samples, expected, err := demoSamples(set)
	if err != nil {
		return err
	}

	// Broker.
	cfg := &Config{}
	kopts := []kfake.Opt{
		kfake.NumBrokers(1),
		kfake.SeedTopics(8, demoEventsTopic),
		kfake.SeedTopics(8, "wxnotify.outcomes"),
		kfake.SeedTopics(1, "wxnotify.dlq"),
		kfake.SeedTopics(2, "wxnotify.delayed"),
		kfake.GroupMinSessionTimeout(500 * time.Millisecond),
	}
	if o.KafkaPort != 0 {
		kopts = append(kopts, kfake.Ports(o.KafkaPort))
	}
	cluster, err := kfake.NewCluster(kopts...)
	if err != nil {
		return fmt.Errorf("start kafka broker: %w", err)
	}
	defer cluster.Close()
	broker := cluster.ListenAddrs()[0]

	// WeChat simulator with fresh demo credentials.
	weappSecret, mpSecret := randomHex(16), randomHex(16)
	sim, err := wechatsim.Start(wechatsim.Config{
		Accounts: map[string]string{demoWeappAppID: weappSecret, demoMPAppID: mpSecret},
		Faults: []wechatsim.Fault{{
			ID: "no-consent", Kind: wechatsim.FaultErrcode, API: "subscribeMessage.send",
			OpenIDs: []string{demoNoConsentOpenID}, ErrCode: 43101, ErrMsg: "user refuse to accept the msg",
		}},
	})
	if err != nil {
		return fmt.Errorf("start wechat simulator: %w", err)
	}
	defer sim.Close()

	cfg.Kafka = KafkaConfig{Brokers: []string{broker}, GroupID: "wxnotify-demo", EventsTopic: StringList{demoEventsTopic},
		SessionTimeout: 6 * time.Second, HeartbeatInterval: time.Second}
	cfg.WeChat = WeChatConfig{BaseURL: sim.URL(), Accounts: map[string]AccountConfig{
		"weapp": {AppID: demoWeappAppID, Secret: weappSecret},
		"mp":    {AppID: demoMPAppID, Secret: mpSecret},
	}}
	cfg.Processor.CommitInterval = 100 * time.Millisecond
	cfg.Processor.DrainTimeout = 5 * time.Second
	// The broker and the simulator share this process: the processor's CPU does not measure
	// its load, so GOMAXPROCS stays Go's default.
	cfg.Processor.Procs = ProcsAll
	cfg.Rules.Path = o.RulesPath
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("demo config: %w", err)
	}
	ln, err := demoListener(o.HTTPAddr)
	if err != nil {
		return err
	}

	fmt.Fprintf(o.Out, "kafka broker (in-process kfake) on %s   try: kcat -b %s -L\n", broker, broker)
	fmt.Fprintf(o.Out, "wechat simulator on %s   deliveries: curl %s/admin/deliveries?summary=1\n", sim.URL(), sim.URL())
	fmt.Fprintf(o.Out, "metrics on http://%s/metrics   readiness: http://%s/readyz\n", ln.Addr(), ln.Addr())

	runOpts := Options{Log: o.Log, Rules: set, Listener: ln, Build: o.Build}
	reloaded := make(chan *rules.Set, 1)
	if o.RulesPath != "" {
		// Run loads rules.path itself and watches it; the set above only counted the outcomes.
		runOpts.Rules = nil
		runOpts.Reloaded = func(s *rules.Set) {
			select {
			case <-reloaded: // not printed yet: the newer set replaces it
			default:
			}
			reloaded <- s
		}
		o.Keep = true
		fmt.Fprintf(o.Out, "rules from %s (version %s): edit them and they reload, then the samples are written again\n", o.RulesPath, set.Version)
	}
	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	runErr := make(chan error, 1)
	go func() { runErr <- Run(runCtx, cfg, runOpts) }()

	outcomes := make(chan processor.Outcome, 64)
	var readers sync.WaitGroup
	if err := readOutcomes(runCtx, broker, cfg.Kafka.OutcomesTopic, outcomes, &readers); err != nil {
		return err
	}
	if err := produce(ctx, broker, samples); err != nil {
		return err
	}
	fmt.Fprintf(o.Out, "wrote %d sample events to %q; waiting for %d outcomes\n\n", len(samples), demoEventsTopic, expected)

	fmt.Fprintf(o.Out, demoRow, "EVENT", "RULE", "API", "STATUS", "ERRCODE", "LATENCY", "DETAIL")
	got := map[string]int{}
	byAPI := map[string]map[string]int{}
	seen := 0
	timeout := time.After(o.Timeout)
wait:
	for seen < expected {
		select {
		case oc := <-outcomes:
			seen++
			got[oc.Status]++
			if byAPI[oc.API] == nil {
				byAPI[oc.API] = map[string]int{}
			}
			byAPI[oc.API][oc.Status]++
			printOutcome(o.Out, oc)
		case err := <-runErr:
			return fmt.Errorf("processor stopped early: %w", err)
		case <-timeout:
			break wait
		case <-ctx.Done():
			break wait
		}
	}

	fmt.Fprintf(o.Out, "\nsummary: %d events, %d outcomes of %d expected in %s\n", len(samples), seen, expected, time.Since(start).Round(time.Millisecond))
	for _, api := range sortedKeys(byAPI) {
		fmt.Fprintf(o.Out, "  %-22s %s\n", api, formatCounts(byAPI[api]))
	}
	fmt.Fprintf(o.Out, "  %-22s %s\n", "all", formatCounts(got))
	fmt.Fprintf(o.Out, "  simulator delivered %d messages\n", len(sim.Deliveries()))

	var result error
	if seen < expected {
		result = fmt.Errorf("only %d of %d outcomes arrived within %s", seen, expected, o.Timeout)
		if o.RulesPath != "" {
			// A playground goes on: the missing ones may be delayed (quiet_hours) or held.
			fmt.Fprintf(o.Out, "  %v\n", result)
			result = nil
		}
	}
	if o.Keep && result == nil {
		fmt.Fprintf(o.Out, "\nstill running (Ctrl-C to stop). Produce your own events, e.g.:\n")
		fmt.Fprintf(o.Out, "  kcat -b %s -t %s -P -K'|' <<< 'oUser1|{\"event_id\":\"e-9\",\"type\":\"order.paid\",...}'\n", broker, demoEventsTopic)
		fmt.Fprintf(o.Out, "  kcat -b %s -t %s -C -o beginning\n", broker, cfg.Kafka.OutcomesTopic)
		go func() {
			for oc := range outcomes {
				printOutcome(o.Out, oc)
			}
		}()
	keep:
		for {
			select {
			case <-ctx.Done():
				break keep
			case err := <-runErr:
				return fmt.Errorf("processor stopped: %w", err)
			case s := <-reloaded:
				fmt.Fprintf(o.Out, "\nrules reloaded (version %s): writing the %d samples again\n", s.Version, len(samples))
				if err := produce(ctx, broker, samples); err != nil && ctx.Err() == nil {
					fmt.Fprintf(o.Out, "  %v\n", err)
				}
			}
		}
	}
	stop()
	if err := <-runErr; err != nil && result == nil {
		result = fmt.Errorf("processor: %w", err)
	}
	readers.Wait()
	close(outcomes) // ends the printer of -keep
	return result
}

// demoRow has fixed widths, not a tabwriter's: each line is printed the moment its outcome lands.
const demoRow = "%-10s  %-22s  %-22s  %-8s  %7v  %8s  %s\n"

func printOutcome(w io.Writer, oc processor.Outcome) {
	detail := oc.ErrMsg
	if oc.MsgID != 0 {
		detail = fmt.Sprintf("msgid=%d", oc.MsgID)
	}
	fmt.Fprintf(w, demoRow, oc.EventID, oc.Rule, oc.API, oc.Status, oc.ErrCode, fmt.Sprintf("%.1fms", oc.LatencyMS), truncateRunes(detail, 70))
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// demoRules loads the rules the demo runs: the shipped ones, or those at path with the demo's
// accounts (the simulator knows weapp and mp).
func demoRules(path string) (*rules.Set, error) {
	opts := rules.Options{Accounts: []string{"mp", "weapp"}}
	if path != "" {
		set, err := rules.Load(path, opts)
		if err != nil {
			return nil, fmt.Errorf("-rules %s:\n%w", path, err)
		}
		return set, nil
	}
	ruleFiles, err := configs.Rules()
	if err != nil {
		return nil, err
	}
	set, err := rules.Parse(ruleFiles, opts)
	if err != nil {
		return nil, fmt.Errorf("shipped rules: %w", err)
	}
	return set, nil
}

// demoSamples reads the shipped samples and counts the outcomes they should produce.
func demoSamples(set *rules.Set) ([]kafka.Message, int, error) {
	files, err := configs.Samples()
	if err != nil {
		return nil, 0, err
	}
	var msgs []kafka.Message
	expected := 0
	for _, name := range sortedKeys(files) {
		sc := bufio.NewScanner(bytes.NewReader(files[name]))
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for line := 1; sc.Scan(); line++ {
			raw := bytes.TrimSpace(sc.Bytes())
			if len(raw) == 0 {
				continue
			}
			ev, err := rules.DecodeEvent(raw)
			if err != nil {
				return nil, 0, fmt.Errorf("configs/samples/%s:%d: %w", name, line, err)
			}
			for _, n := range set.Evaluate(ev, rules.Meta{EventID: ev.ID()}, nil) {
				if !n.WhenErr {
					expected++
				}
			}
			var key struct {
				User struct {
					OpenID string `json:"openid"`
				} `json:"user"`
			}
			_ = json.Unmarshal(raw, &key)
			msgs = append(msgs, kafka.Message{Key: []byte(key.User.OpenID), Value: append([]byte(nil), raw...)})
		}
	}
	return msgs, expected, nil
}

func produce(ctx context.Context, broker string, msgs []kafka.Message) error {
	w := &kafka.Writer{
		Addr: kafka.TCP(broker), Topic: demoEventsTopic, Balancer: &kafka.Hash{},
		RequiredAcks: kafka.RequireAll, BatchTimeout: 5 * time.Millisecond, Transport: &kafka.Transport{},
	}
	defer w.Close()
	if err := w.WriteMessages(ctx, msgs...); err != nil {
		return fmt.Errorf("write samples: %w", err)
	}
	return nil
}

// readOutcomes follows every partition of the outcomes topic from the beginning.
func readOutcomes(ctx context.Context, broker, topic string, out chan<- processor.Outcome, wg *sync.WaitGroup) error {
	parts, err := TopicPartitions(ctx, broker, topic)
	if err != nil {
		return fmt.Errorf("outcomes topic: %w", err)
	}
	for _, p := range parts {
		r := kafka.NewReader(kafka.ReaderConfig{Brokers: []string{broker}, Topic: topic, Partition: p.ID, MaxWait: 100 * time.Millisecond})
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer r.Close()
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return
				}
				var oc processor.Outcome
				if json.Unmarshal(m.Value, &oc) != nil {
					continue
				}
				select {
				case out <- oc:
				case <-ctx.Done():
					return
				}
			}
		}()
	}
	return nil
}

func demoListener(addr string) (net.Listener, error) {
	if addr != "" {
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("-http: %w", err)
		}
		return ln, nil
	}
	if ln, err := net.Listen("tcp", "127.0.0.1:9464"); err == nil {
		return ln, nil
	}
	return net.Listen("tcp", "127.0.0.1:0") // 9464 is taken (another wxnotify?): any port will do
}

func formatCounts(m map[string]int) string {
	keys := sortedKeys(m)
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s=%d", k, m[k])
	}
	return strings.Join(parts, " ")
}

func truncateRunes(s string, n int) string {
	r := []rune(s)
	if len(r) <= n {
		return s
	}
	return string(r[:n-1]) + "…"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// TopicPartitions returns the partitions of topic, asking the broker at addr.
func TopicPartitions(ctx context.Context, addr, topic string) ([]kafka.Partition, error) {
	conn, err := kafka.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial kafka: %w", err)
	}
	defer conn.Close()
	parts, err := conn.ReadPartitions(topic)
	if err != nil {
		return nil, fmt.Errorf("partitions of %s: %w", topic, err)
	}
	return parts, nil
}
