// Package app wires wxnotify together from its config: the rule set, the WeChat client, the
// Kafka writer, the processor and the ops HTTP server. `wxnotify run`, `wxnotify demo` and the
// benchmark harness all start the processor through Run, so they exercise one code path.
package app

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// Config is the wxnotify config file. Field comments give the defaults.
type Config struct {
	Kafka     KafkaConfig     `yaml:"kafka"`
	WeChat    WeChatConfig    `yaml:"wechat"`
	Rules     RulesConfig     `yaml:"rules"`
	HTTP      HTTPConfig      `yaml:"http"`
	Processor ProcessorConfig `yaml:"processor"`
	Log       LogConfig       `yaml:"log"`

	// dir is the directory of the config file; relative paths resolve against it.
	dir string
}

// KafkaConfig is the `kafka:` section.
type KafkaConfig struct {
	Brokers           []string      `yaml:"brokers"`            // required
	GroupID           string        `yaml:"group_id"`           // default wxnotify
	EventsTopic       StringList    `yaml:"events_topic"`       // one topic or a list; required
	OutcomesTopic     string        `yaml:"outcomes_topic"`     // default wxnotify.outcomes
	DeadLetterTopic   string        `yaml:"dead_letter_topic"`  // default wxnotify.dlq
	DelayTopic        string        `yaml:"delay_topic"`        // default wxnotify.delayed; quiet_hours (action delay) holds notifications there
	StartOffset       string        `yaml:"start_offset"`       // first (default) or last, for partitions with no committed offset
	SessionTimeout    time.Duration `yaml:"session_timeout"`    // default 10s
	HeartbeatInterval time.Duration `yaml:"heartbeat_interval"` // default 3s
	RebalanceTimeout  time.Duration `yaml:"rebalance_timeout"`  // default 30s
	// FetchLinger and ProduceLinger trade latency for CPU: how long the broker may gather events
	// for a fetch while events keep arriving, and how long outcome records wait to share a
	// produce request. Defaults 4ms and 0s (chosen with wxbench: see cmd/wxbench/README.md); 0s
	// turns them off. Neither affects correctness or commits.
	FetchLinger   *time.Duration  `yaml:"fetch_linger"`
	ProduceLinger *time.Duration  `yaml:"produce_linger"`
	ClientID      string          `yaml:"client_id"` // default wxnotify
	TLS           KafkaTLSConfig  `yaml:"tls"`
	SASL          KafkaSASLConfig `yaml:"sasl"`
	// CreateTopics creates missing outcome, dead-letter and delay topics at start (for local and
	// test setups; default false: a missing topic is a startup error). Events topics are never
	// created.
	CreateTopics bool `yaml:"create_topics"`
}

// KafkaTLSConfig is `kafka.tls:`. Every Kafka connection uses it.
type KafkaTLSConfig struct {
	Enabled            bool   `yaml:"enabled"`
	CAFile             string `yaml:"ca_file"`              // PEM; the system roots when empty
	CertFile           string `yaml:"cert_file"`            // client certificate for mutual TLS, with key_file
	KeyFile            string `yaml:"key_file"`             //
	ServerName         string `yaml:"server_name"`          // default: the broker's host
	InsecureSkipVerify bool   `yaml:"insecure_skip_verify"` // true logs a warning at start
}

// KafkaSASLConfig is `kafka.sasl:`. Every Kafka connection uses it.
type KafkaSASLConfig struct {
	Mechanism    string `yaml:"mechanism"` // PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; empty: no SASL
	Username     string `yaml:"username"`
	Password     string `yaml:"password"`      // ${ENV_VAR} only: a literal is refused
	PasswordFile string `yaml:"password_file"` // or a file holding it
}

// WeChatConfig is the `wechat:` section.
type WeChatConfig struct {
	BaseURL         string                   `yaml:"base_url"`  // default https://api.weixin.qq.com
	Accounts        map[string]AccountConfig `yaml:"accounts"`  // name -> credentials; rules pick one by name
	Timeout         time.Duration            `yaml:"timeout"`   // per HTTP attempt, default 5s
	MaxConns        int                      `yaml:"max_conns"` // default: processor.max_in_flight
	Retry           RetryConfig              `yaml:"retry"`
	RateLimits      map[string]float64       `yaml:"rate_limits"`      // "account/api" or "account/*" -> sends per second
	BreakerCooldown time.Duration            `yaml:"breaker_cooldown"` // default 1m
	// MaxHold ends a notification held through an outage of its account and API (WeChat failing
	// transiently) as failed after this long. Default 1h.
	MaxHold time.Duration `yaml:"max_hold"`
}

// AccountConfig is one WeChat account. The secret comes from the environment (${VAR}) or a
// file (secret_file, e.g. a mounted Kubernetes secret), never from the config file itself.
type AccountConfig struct {
	AppID       string `yaml:"appid"`
	Secret      string `yaml:"secret"`
	SecretFile  string `yaml:"secret_file"`
	TokenSource string `yaml:"token_source"` // stable (default), classic, url, none
	TokenURL    string `yaml:"token_url"`    // for token_source: url
}

// RetryConfig is `wechat.retry:`.
type RetryConfig struct {
	MaxAttempts int           `yaml:"max_attempts"` // default 4
	BaseDelay   time.Duration `yaml:"base_delay"`   // default 100ms
	MaxDelay    time.Duration `yaml:"max_delay"`    // default 5s
	Deadline    time.Duration `yaml:"deadline"`     // default 30s
}

// RulesConfig is the `rules:` section.
type RulesConfig struct {
	Path string `yaml:"path"` // a file or a directory of *.yaml, relative to the config file; default rules
	Zone string `yaml:"zone"` // time zone of the time helpers; default Asia/Shanghai
}

// HTTPConfig is the `http:` section.
type HTTPConfig struct {
	Addr string `yaml:"addr"` // /metrics, /healthz, /readyz; default :9464; "off" disables
	// PProf serves Go's profiling endpoints under /debug/pprof/ on addr; default false. They
	// show the process's internals and a CPU profile or trace costs CPU while it runs: keep
	// the ops port private.
	PProf bool `yaml:"pprof"`
}

// ProcessorConfig is the `processor:` section.
type ProcessorConfig struct {
	MaxInFlight    int           `yaml:"max_in_flight"`    // events in flight across partitions, default 1024
	CommitInterval time.Duration `yaml:"commit_interval"`  // default 200ms
	DrainTimeout   time.Duration `yaml:"drain_timeout"`    // default 15s
	DryRun         bool          `yaml:"dry_run"`          // everything but the WeChat call
	MaxDelayed     int           `yaml:"max_delayed"`      // delayed notifications held in memory until their time, default 10000
	ControlMaxKeys int           `yaml:"control_max_keys"` // dedupe keys, and throttle keys, kept per rule, default 1000000
	MaxHeld        int           `yaml:"max_held"`         // events held through a WeChat outage beyond max_in_flight, default 20000
	// Procs: all (default) keeps Go's own GOMAXPROCS (container-aware); adaptive (opt-in) runs
	// the Go scheduler on one P while the process uses under 0.3 cores and on Go's default over
	// 0.6. A GOMAXPROCS environment variable overrides both.
	Procs string `yaml:"procs"`
}

// Values of processor.procs.
const (
	ProcsAdaptive = "adaptive"
	ProcsAll      = "all"
)

// LogConfig is the `log:` section.
type LogConfig struct {
	Level  string `yaml:"level"`  // debug, info (default), warn, error
	Format string `yaml:"format"` // json (default) or text
}

// StringList is a YAML scalar or sequence of strings.
type StringList []string

// UnmarshalYAML accepts `x` and `[x, y]`.
func (s *StringList) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind == yaml.ScalarNode {
		*s = StringList{n.Value}
		return nil
	}
	var l []string
	if err := n.Decode(&l); err != nil {
		return err
	}
	*s = l
	return nil
}

// LoadConfig reads, expands and validates a config file.
func LoadConfig(path string) (*Config, error) {
	cfg, _, err := loadConfig(path, false)
	return cfg, err
}

// LoadConfigForCheck loads a config file as LoadConfig does, except that what only the machine
// that runs wxnotify provides may be missing: an unset environment variable (with no default)
// is left as written, ${NAME}, and a secret or certificate file that does not exist is not
// read. Both are returned as Needs instead of failing the load; everything else is validated
// as LoadConfig validates it. The config is for checking only: its secrets may be placeholders.
// `wxnotify check` uses it, so that CI can check a config without the production secrets.
func LoadConfigForCheck(path string) (*Config, []Need, error) {
	return loadConfig(path, true)
}

// Need is something a config names that is not there where it was loaded: an environment
// variable that is unset and has no default, or a secret or certificate file that does not
// exist. `wxnotify run` fails on it; `wxnotify check` lists it as what run will need.
type Need struct {
	Env  string   // the variable's name; "" for a file
	File string   // the file's path (as resolved against the config's directory)
	Keys []string // the config keys that name it, e.g. wechat.accounts.weapp.secret
}

func (n Need) String() string {
	what := "file " + n.File + " does not exist"
	if n.Env != "" {
		what = "environment variable " + n.Env + " is not set"
	}
	return strings.Join(n.Keys, ", ") + ": " + what
}

func loadConfig(path string, lenient bool) (*Config, []Need, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, fmt.Errorf("config: %w", err)
	}
	cfg, needs, err := parseConfig(raw, os.LookupEnv, lenient)
	if err != nil {
		return nil, needs, fmt.Errorf("%s: %w", path, err)
	}
	abs, err := filepath.Abs(filepath.Dir(path))
	if err != nil {
		return nil, needs, fmt.Errorf("config: %w", err)
	}
	cfg.dir = abs
	files, err := cfg.resolveFiles(lenient)
	needs = append(needs, files...)
	if err != nil {
		return nil, needs, fmt.Errorf("%s: %w", path, err)
	}
	return cfg, needs, nil
}

// ParseConfig parses config text: expands ${VAR} and ${VAR:-default} from lookup, rejects
// unknown keys and secrets written in the text, applies defaults and validates. Relative paths
// resolve against the working directory unless LoadConfig set the file's directory.
func ParseConfig(raw []byte, lookup func(string) (string, bool)) (*Config, error) {
	cfg, _, err := parseConfig(raw, lookup, false)
	return cfg, err
}

// parseConfig is ParseConfig; lenient leaves unset variables as written and returns them as
// needs (see LoadConfigForCheck) instead of naming them in the error.
func parseConfig(raw []byte, lookup func(string) (string, bool), lenient bool) (*Config, []Need, error) {
	if err := checkSecretsAreReferences(raw); err != nil {
		return nil, nil, err
	}
	expanded, unset := expand(raw, lookup, lenient)
	var needs []Need
	if lenient && len(unset) > 0 {
		keys := envKeys(raw)
		for _, name := range unset {
			needs = append(needs, Need{Env: name, Keys: keys[name]})
		}
	}
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(expanded))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		return nil, needs, fmt.Errorf("parse: %s", yamlKeyNames.Replace(err.Error()))
	}
	cfg.applyDefaults()
	if err := cfg.Validate(); err != nil {
		if len(unset) > 0 && !lenient {
			return nil, nil, fmt.Errorf("%w (environment variables not set: %s)", err, strings.Join(unset, ", "))
		}
		return nil, needs, err
	}
	return &cfg, needs, nil
}

// envKeys maps each variable the config's values reference without a default to the keys of
// those values (kafka.brokers[0], wechat.accounts.weapp.secret).
func envKeys(raw []byte) map[string][]string {
	var root yaml.Node
	if yaml.Unmarshal(raw, &root) != nil {
		return nil
	}
	out := map[string][]string{}
	var walk func(n *yaml.Node, key string)
	walk = func(n *yaml.Node, key string) {
		switch n.Kind {
		case yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c, key)
			}
		case yaml.MappingNode:
			for i := 0; i+1 < len(n.Content); i += 2 {
				k := n.Content[i].Value
				if key != "" {
					k = key + "." + k
				}
				walk(n.Content[i+1], k)
			}
		case yaml.SequenceNode:
			for i, c := range n.Content {
				walk(c, fmt.Sprintf("%s[%d]", key, i))
			}
		case yaml.ScalarNode:
			for _, m := range envRef.FindAllStringSubmatchIndex(n.Value, -1) {
				if m[4] < 0 { // no default
					name := n.Value[m[2]:m[3]]
					if !slices.Contains(out[name], key) {
						out[name] = append(out[name], key)
					}
				}
			}
		}
	}
	walk(&root, "")
	return out
}

// yamlKeyNames turns the decoder's Go type names into the config sections a user edits.
var yamlKeyNames = strings.NewReplacer(
	"in type app.Config", "at the top level",
	"in type app.KafkaConfig", "under kafka",
	"in type app.KafkaTLSConfig", "under kafka.tls",
	"in type app.KafkaSASLConfig", "under kafka.sasl",
	"in type app.WeChatConfig", "under wechat",
	"in type app.AccountConfig", "under wechat.accounts.<name>",
	"in type app.RetryConfig", "under wechat.retry",
	"in type app.RulesConfig", "under rules",
	"in type app.HTTPConfig", "under http",
	"in type app.ProcessorConfig", "under processor",
	"in type app.LogConfig", "under log",
)

var envRef = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}`)

// expand replaces ${VAR} and ${VAR:-default}; it returns the names of variables that were
// unset and had no default, so validation errors (or check's needs) can point at them. keep
// leaves the references to unset variables as written; without it they expand to nothing.
func expand(raw []byte, lookup func(string) (string, bool), keep bool) ([]byte, []string) {
	var unset []string
	var out []byte
	last := 0
	for _, loc := range envRef.FindAllSubmatchIndex(raw, -1) {
		out = append(out, raw[last:loc[0]]...)
		last = loc[1]
		name := string(raw[loc[2]:loc[3]])
		hasDefault := loc[4] >= 0
		if v, ok := lookup(name); ok && (v != "" || !hasDefault) {
			out = append(out, v...)
			continue
		}
		if hasDefault {
			out = append(out, raw[loc[4]:loc[5]]...)
			continue
		}
		if keep {
			out = append(out, raw[loc[0]:loc[1]]...)
		}
		// A reference in a YAML comment expands to nothing and is no reason to complain.
		if !inComment(raw, loc[0]) && !slices.Contains(unset, name) {
			unset = append(unset, name)
		}
	}
	out = append(out, raw[last:]...)
	sort.Strings(unset)
	return out, unset
}

// inComment reports whether offset i of raw lies after a YAML comment marker on its line (a #
// at the line start or after a space; quotes are not tracked, which only matters for a # inside
// a quoted value, where the worst case is a missing name in a hint).
func inComment(raw []byte, i int) bool {
	start := bytes.LastIndexByte(raw[:i], '\n') + 1
	line := raw[start:i]
	for j := 0; j < len(line); j++ {
		if line[j] == '#' && (j == 0 || line[j-1] == ' ' || line[j-1] == '\t') {
			return true
		}
	}
	return false
}

// checkSecretsAreReferences refuses a config whose wechat.accounts.*.secret or
// kafka.sasl.password is a literal: the file is committed and mounted as a ConfigMap, so a
// secret in it leaks.
func checkSecretsAreReferences(raw []byte) error {
	var root yaml.Node
	if err := yaml.Unmarshal(raw, &root); err != nil {
		return fmt.Errorf("parse: %w", err)
	}
	if s := lookupNode(&root, "kafka", "sasl", "password"); s != nil && s.Value != "" && !envRef.MatchString(s.Value) {
		return fmt.Errorf("line %d: kafka.sasl.password: a literal password is not allowed in the config file; write ${ENV_VAR} or use password_file", s.Line)
	}
	accounts := lookupNode(&root, "wechat", "accounts")
	if accounts == nil || accounts.Kind != yaml.MappingNode {
		return nil
	}
	for i := 0; i+1 < len(accounts.Content); i += 2 {
		name, acct := accounts.Content[i].Value, accounts.Content[i+1]
		if s := lookupNode(acct, "secret"); s != nil && s.Value != "" && !envRef.MatchString(s.Value) {
			return fmt.Errorf("line %d: wechat.accounts.%s.secret: a literal secret is not allowed in the config file; write ${ENV_VAR} or use secret_file", s.Line, name)
		}
	}
	return nil
}

func lookupNode(n *yaml.Node, path ...string) *yaml.Node {
	if n.Kind == yaml.DocumentNode && len(n.Content) > 0 {
		n = n.Content[0]
	}
	for _, key := range path {
		if n.Kind != yaml.MappingNode {
			return nil
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == key {
				next = n.Content[i+1]
			}
		}
		if next == nil {
			return nil
		}
		n = next
	}
	return n
}

func (c *Config) applyDefaults() {
	if c.Kafka.GroupID == "" {
		c.Kafka.GroupID = "wxnotify"
	}
	if c.Kafka.OutcomesTopic == "" {
		c.Kafka.OutcomesTopic = "wxnotify.outcomes"
	}
	if c.Kafka.DeadLetterTopic == "" {
		c.Kafka.DeadLetterTopic = "wxnotify.dlq"
	}
	if c.Kafka.DelayTopic == "" {
		c.Kafka.DelayTopic = "wxnotify.delayed"
	}
	if c.Kafka.StartOffset == "" {
		c.Kafka.StartOffset = "first"
	}
	if c.Kafka.ClientID == "" {
		c.Kafka.ClientID = "wxnotify"
	}
	if c.WeChat.BaseURL == "" {
		c.WeChat.BaseURL = "https://api.weixin.qq.com"
	}
	if c.Rules.Path == "" {
		c.Rules.Path = "rules"
	}
	if c.Rules.Zone == "" {
		c.Rules.Zone = "Asia/Shanghai"
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = ":9464"
	}
	if c.Processor.MaxInFlight == 0 {
		c.Processor.MaxInFlight = 1024
	}
	if c.Processor.MaxDelayed == 0 {
		c.Processor.MaxDelayed = 10000
	}
	if c.Processor.ControlMaxKeys == 0 {
		c.Processor.ControlMaxKeys = 1000000
	}
	if c.Processor.MaxHeld == 0 {
		c.Processor.MaxHeld = 20000
	}
	if c.WeChat.MaxHold == 0 {
		c.WeChat.MaxHold = time.Hour
	}
	if c.Processor.Procs == "" {
		c.Processor.Procs = ProcsAll
	}
	if c.WeChat.MaxConns == 0 {
		c.WeChat.MaxConns = c.Processor.MaxInFlight
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	for name, a := range c.WeChat.Accounts {
		if a.TokenSource == "" {
			a.TokenSource = "stable"
			c.WeChat.Accounts[name] = a
		}
	}
}

// Validate reports every invalid key, each named by its path in the file.
func (c *Config) Validate() error {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }
	if len(c.Kafka.Brokers) == 0 {
		bad("kafka.brokers: at least one broker is required")
	}
	for i, b := range c.Kafka.Brokers {
		if strings.TrimSpace(b) == "" {
			bad("kafka.brokers[%d]: empty", i)
		}
	}
	if len(c.Kafka.EventsTopic) == 0 {
		bad("kafka.events_topic: required")
	}
	for _, t := range c.Kafka.EventsTopic {
		if t == c.Kafka.OutcomesTopic || t == c.Kafka.DeadLetterTopic {
			bad("kafka.events_topic: %q is also the outcomes or dead-letter topic", t)
		}
		if t == c.Kafka.DelayTopic {
			bad("kafka.events_topic: %q is also the delay topic", t)
		}
	}
	if c.Kafka.DelayTopic == c.Kafka.OutcomesTopic || c.Kafka.DelayTopic == c.Kafka.DeadLetterTopic {
		bad("kafka.delay_topic: %q is also the outcomes or dead-letter topic", c.Kafka.DelayTopic)
	}
	for _, l := range []struct {
		key string
		d   *time.Duration
	}{{"kafka.fetch_linger", c.Kafka.FetchLinger}, {"kafka.produce_linger", c.Kafka.ProduceLinger}} {
		if l.d != nil && (*l.d < 0 || *l.d > time.Second) {
			bad("%s: %s is outside 0s to 1s", l.key, *l.d)
		}
	}
	if c.Kafka.StartOffset != "first" && c.Kafka.StartOffset != "last" {
		bad("kafka.start_offset: %q is not first or last", c.Kafka.StartOffset)
	}
	errs = append(errs, c.Kafka.TLS.validate()...)
	errs = append(errs, c.Kafka.SASL.validate()...)
	// The wechat section is the client's config: its Validate names the keys as the file does.
	// Only what the client never sees is checked here: where a secret comes from.
	wc := wechatConfig(c)
	for _, name := range sortedKeys(c.WeChat.Accounts) {
		a := c.WeChat.Accounts[name]
		key := "wechat.accounts." + name
		if a.Secret != "" && a.SecretFile != "" {
			bad("%s: secret and secret_file are exclusive", key)
		}
		if a.Secret == "" && (a.TokenSource == "stable" || a.TokenSource == "classic") {
			if a.SecretFile == "" {
				bad("%s.secret: empty (set the environment variable it names, or secret_file)", key)
			}
			wa := wc.Accounts[name]
			wa.Secret = "(reported above, or read from secret_file)"
			wc.Accounts[name] = wa
		}
	}
	if err := wc.Validate(); err != nil {
		errs = append(errs, err)
	}
	// The group waits at most rebalance_timeout for a revoked member to drain, commit and rejoin;
	// a longer drain gets the member dropped while its sends still run.
	drain, rebalance := orDefault(c.Processor.DrainTimeout, 15*time.Second), orDefault(c.Kafka.RebalanceTimeout, 30*time.Second)
	if drain >= rebalance {
		bad("processor.drain_timeout: %s must be below kafka.rebalance_timeout (%s): the group waits at most that long for a revoked member to finish", drain, rebalance)
	}
	if c.Processor.MaxInFlight < 1 {
		bad("processor.max_in_flight: must be at least 1")
	}
	if c.Processor.MaxDelayed < 1 {
		bad("processor.max_delayed: must be at least 1")
	}
	if c.Processor.ControlMaxKeys < 1 {
		bad("processor.control_max_keys: must be at least 1")
	}
	if c.Processor.MaxHeld < 1 {
		bad("processor.max_held: must be at least 1")
	}
	if c.WeChat.MaxHold < time.Minute {
		bad("wechat.max_hold: %s is below 1m", c.WeChat.MaxHold)
	}
	if c.Processor.Procs != ProcsAdaptive && c.Processor.Procs != ProcsAll {
		bad("processor.procs: %q is not %s or %s", c.Processor.Procs, ProcsAdaptive, ProcsAll)
	}
	if _, err := time.LoadLocation(c.Rules.Zone); err != nil {
		bad("rules.zone: %v", err)
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		bad("log.format: %q is not json or text", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		bad("log.level: %v", err)
	}
	return errors.Join(errs...)
}

// resolveFiles makes the rules path absolute, reads secret files and checks the TLS files.
// With missingOK, a secret or TLS file that does not exist is returned as a need instead (and a
// path that is an unset variable's reference is left alone: that variable is a need already).
func (c *Config) resolveFiles(missingOK bool) ([]Need, error) {
	c.Rules.Path = c.path(c.Rules.Path)
	if _, err := os.Stat(c.Rules.Path); err != nil {
		return nil, fmt.Errorf("rules.path: %w", err)
	}
	var needs []Need
	// absent reports whether a file named by key may be skipped: missingOK, and it does not exist.
	absent := func(key, path string) bool {
		if !missingOK {
			return false
		}
		if envRef.MatchString(path) {
			return true
		}
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			needs = append(needs, Need{File: path, Keys: []string{key}})
			return true
		}
		return false
	}
	t := &c.Kafka.TLS
	tlsAbsent := false
	for _, f := range []struct {
		key  string
		path *string
	}{{"kafka.tls.ca_file", &t.CAFile}, {"kafka.tls.cert_file", &t.CertFile}, {"kafka.tls.key_file", &t.KeyFile}} {
		if *f.path != "" {
			*f.path = c.path(*f.path)
			if absent(f.key, *f.path) {
				tlsAbsent = true
			}
		}
	}
	if !tlsAbsent {
		if _, err := c.Kafka.TLS.config(); err != nil {
			return needs, err
		}
	}
	if f := c.Kafka.SASL.PasswordFile; f != "" && !absent("kafka.sasl.password_file", c.path(f)) {
		var err error
		if c.Kafka.SASL.Password, err = readSecretFile("kafka.sasl.password_file", c.path(f)); err != nil {
			return needs, err
		}
	}
	for _, name := range sortedKeys(c.WeChat.Accounts) {
		a := c.WeChat.Accounts[name]
		key := "wechat.accounts." + name + ".secret_file"
		if a.SecretFile == "" || absent(key, c.path(a.SecretFile)) {
			continue
		}
		var err error
		if a.Secret, err = readSecretFile(key, c.path(a.SecretFile)); err != nil {
			return needs, err
		}
		c.WeChat.Accounts[name] = a
	}
	return needs, nil
}

// readSecretFile returns the secret held in the file at path, named by key, without the
// surrounding white space (a trailing newline); an empty file is an error.
func readSecretFile(key, path string) (string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("%s: %w", key, err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s: file is empty", key)
	}
	return s, nil
}

func (c *Config) path(p string) string {
	if filepath.IsAbs(p) || c.dir == "" {
		return p
	}
	return filepath.Join(c.dir, p)
}

func orDefault(d, def time.Duration) time.Duration {
	if d <= 0 {
		return def
	}
	return d
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
