package app

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

const minimalConfig = `
kafka:
  brokers: ["${WXNOTIFY_BROKERS:-localhost:9092}"]
  events_topic: events
wechat:
  accounts:
    weapp: {appid: "${APPID}", secret: "${SECRET}"}
`

func TestParseConfigDefaultsAndExpansion(t *testing.T) {
	cfg, err := ParseConfig([]byte(minimalConfig), env(map[string]string{"APPID": "wx1", "SECRET": "s3cret"}))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ name, got, want string }{
		{"brokers", strings.Join(cfg.Kafka.Brokers, ","), "localhost:9092"},
		{"group_id", cfg.Kafka.GroupID, "wxnotify"},
		{"outcomes_topic", cfg.Kafka.OutcomesTopic, "wxnotify.outcomes"},
		{"dead_letter_topic", cfg.Kafka.DeadLetterTopic, "wxnotify.dlq"},
		{"delay_topic", cfg.Kafka.DelayTopic, "wxnotify.delayed"},
		{"base_url", cfg.WeChat.BaseURL, "https://api.weixin.qq.com"},
		{"appid", cfg.WeChat.Accounts["weapp"].AppID, "wx1"},
		{"secret", cfg.WeChat.Accounts["weapp"].Secret, "s3cret"},
		{"token_source", cfg.WeChat.Accounts["weapp"].TokenSource, "stable"},
		{"rules.path", cfg.Rules.Path, "rules"},
		{"rules.zone", cfg.Rules.Zone, "Asia/Shanghai"},
		{"http.addr", cfg.HTTP.Addr, ":9464"},
		{"processor.procs", cfg.Processor.Procs, "all"},
	} {
		if c.got != c.want {
			t.Errorf("%s = %q, want %q", c.name, c.got, c.want)
		}
	}
	if cfg.Processor.MaxInFlight != 1024 || cfg.WeChat.MaxConns != 1024 {
		t.Errorf("max_in_flight/max_conns = %d/%d, want 1024/1024", cfg.Processor.MaxInFlight, cfg.WeChat.MaxConns)
	}
	cfg, err = ParseConfig([]byte(minimalConfig), env(map[string]string{"APPID": "wx1", "SECRET": "s", "WXNOTIFY_BROKERS": "k1:9092"}))
	if err != nil || cfg.Kafka.Brokers[0] != "k1:9092" {
		t.Fatalf("env override of default: %v %v", cfg, err)
	}
}

func TestParseConfigErrorsNameTheKey(t *testing.T) {
	for _, tc := range []struct {
		name, text string
		env        map[string]string
		want       []string
	}{
		{"missing secret names key and variable", minimalConfig, map[string]string{"APPID": "wx1"},
			[]string{"wechat.accounts.weapp.secret: empty", "environment variables not set: SECRET"}},
		{"literal secret refused", strings.Replace(minimalConfig, `"${SECRET}"`, `"plaintext"`, 1), map[string]string{"APPID": "wx1"},
			[]string{"line 7: wechat.accounts.weapp.secret: a literal secret is not allowed"}},
		{"unknown key", minimalConfig + "  bogus: 1\n", map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"line 8: field bogus not found under wechat"}},
		{"no brokers", strings.Replace(minimalConfig, `["${WXNOTIFY_BROKERS:-localhost:9092}"]`, `[]`, 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.brokers: at least one broker is required"}},
		{"bad token source", strings.Replace(minimalConfig, `secret: "${SECRET}"}`, `secret: "${SECRET}", token_source: magic}`, 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`wechat.accounts.weapp.token_source: "magic": want stable, classic, url or none`}},
		{"the client's own checks run at load", minimalConfig + "  timeout: -1s\n  rate_limits: {\"nope/*\": 1}\n", map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"wechat.timeout: negative", `wechat.rate_limits."nope/*": unknown account "nope"`}},
		{"events topic reused as outcomes", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  outcomes_topic: events", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`kafka.events_topic: "events" is also the outcomes or dead-letter topic`}},
		{"delay topic reused as events", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  delay_topic: events", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`kafka.events_topic: "events" is also the delay topic`}},
		{"delay topic reused as dead letters", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  delay_topic: wxnotify.dlq", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`kafka.delay_topic: "wxnotify.dlq" is also the outcomes or dead-letter topic`}},
		{"drain longer than the group waits", minimalConfig + "processor: {drain_timeout: 45s}\n", map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"processor.drain_timeout: 45s must be below kafka.rebalance_timeout (30s)"}},
		{"linger out of range", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  fetch_linger: 2s\n  produce_linger: -1ms", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.fetch_linger: 2s is outside 0s to 1s", "kafka.produce_linger: -1ms is outside 0s to 1s"}},
		{"bad zone", minimalConfig + "rules: {zone: Mars/Olympus}\n", map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"rules.zone:"}},
		{"unknown procs mode", minimalConfig + "processor: {procs: 4}\n", map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`processor.procs: "4" is not adaptive or all`}},
		{"literal kafka password refused", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  sasl: {mechanism: PLAIN, username: u, password: plaintext}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"line 5: kafka.sasl.password: a literal password is not allowed in the config file; write ${ENV_VAR} or use password_file"}},
		{"kafka sasl incomplete", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  sasl: {mechanism: SCRAM-SHA-1, password: \"${KPASS}\"}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{`kafka.sasl.mechanism: "SCRAM-SHA-1" is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512`, "kafka.sasl.username: empty", "kafka.sasl.password: empty (set the environment variable it names, or password_file)", "environment variables not set: KPASS"}},
		{"kafka password without mechanism", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  sasl: {username: u}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.sasl.mechanism: required with a username or password"}},
		{"kafka tls files without tls", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  tls: {ca_file: ca.pem}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.tls.ca_file: set, but kafka.tls.enabled is false"}},
		{"kafka client certificate without key", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  tls: {enabled: true, cert_file: c.pem}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.tls.cert_file: cert_file and key_file go together"}},
		{"kafka key without client certificate", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  tls: {enabled: true, key_file: k.pem}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.tls.cert_file: cert_file and key_file go together"}},
		{"kafka insecure_skip_verify without tls", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  tls: {insecure_skip_verify: true}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"kafka.tls.insecure_skip_verify: set, but kafka.tls.enabled is false"}},
		{"kafka password and password_file", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  sasl: {mechanism: PLAIN, username: u, password: \"${KPASS}\", password_file: p}", 1), map[string]string{"APPID": "a", "SECRET": "b", "KPASS": "k"},
			[]string{"kafka.sasl.password: password and password_file are exclusive"}},
		{"wechat secret and secret_file", strings.Replace(minimalConfig, `secret: "${SECRET}"}`, `secret: "${SECRET}", secret_file: s}`, 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"wechat.accounts.weapp: secret and secret_file are exclusive"}},
		{"unknown kafka tls key", strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  tls: {enable: true}", 1), map[string]string{"APPID": "a", "SECRET": "b"},
			[]string{"field enable not found under kafka.tls"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(tc.text), env(tc.env))
			if err == nil {
				t.Fatal("no error")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "plaintext") {
				t.Errorf("error leaks the secret: %q", err)
			}
		})
	}
}

func TestLoadConfigResolvesRelativeToFileAndReadsSecretFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "myrules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "secret.txt"), []byte("from-file\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	text := `
kafka: {brokers: [b:9092], events_topic: [a, b], session_timeout: 7s}
wechat:
  accounts:
    mp: {appid: wx2, secret_file: secret.txt}
rules: {path: myrules}
`
	path := filepath.Join(dir, "c.yaml")
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := LoadConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Rules.Path != filepath.Join(dir, "myrules") {
		t.Errorf("rules.path = %q", cfg.Rules.Path)
	}
	if cfg.WeChat.Accounts["mp"].Secret != "from-file" {
		t.Errorf("secret from file = %q", cfg.WeChat.Accounts["mp"].Secret)
	}
	if len(cfg.Kafka.EventsTopic) != 2 || cfg.Kafka.SessionTimeout != 7*time.Second {
		t.Errorf("events_topic %v session_timeout %v", cfg.Kafka.EventsTopic, cfg.Kafka.SessionTimeout)
	}
	_ = os.RemoveAll(filepath.Join(dir, "myrules"))
	if _, err := LoadConfig(path); err == nil || !strings.Contains(err.Error(), "rules.path") {
		t.Errorf("missing rules path: err = %v, want it to name rules.path", err)
	}
}

// The shipped production config parses with only the documented variables set.
func TestShippedConfigParses(t *testing.T) {
	raw, err := os.ReadFile("../../../configs/wxnotify.yaml")
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{"WXNOTIFY_WEAPP_APPID": "a", "WXNOTIFY_WEAPP_SECRET": "b", "WXNOTIFY_MP_APPID": "c", "WXNOTIFY_MP_SECRET": "d"}
	if _, err := ParseConfig(raw, env(vars)); err != nil {
		t.Fatal(err)
	}
	// README quotes it as the reference: the quote must not drift from the file.
	readme, err := os.ReadFile("../../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	body := string(raw[strings.Index(string(raw), "kafka:\n"):])
	if !strings.Contains(string(readme), "```yaml\n"+body+"```") {
		t.Error("README's config block differs from configs/wxnotify.yaml")
	}
}

func TestExpandEnv(t *testing.T) {
	raw := "a: ${A}\nb: ${B:-dflt}\nc: ${C:-}\nd: ${D}\n# comment ${E}\ne: x # ${F}\nf: ${B}${B}\n"
	lookup := env(map[string]string{"A": "1", "C": ""})
	out, unset := expand([]byte(raw), lookup, false)
	want := "a: 1\nb: dflt\nc: \nd: \n# comment \ne: x # \nf: \n"
	if string(out) != want {
		t.Errorf("expanded:\n%s\nwant:\n%s", out, want)
	}
	if strings.Join(unset, ",") != "B,D" {
		t.Errorf("unset = %v, want [B D] (comments ignored, each name once)", unset)
	}
	// keep (LoadConfigForCheck) leaves the unset references as written.
	out, unset = expand([]byte(raw), lookup, true)
	want = "a: 1\nb: dflt\nc: \nd: ${D}\n# comment ${E}\ne: x # ${F}\nf: ${B}${B}\n"
	if string(out) != want || strings.Join(unset, ",") != "B,D" {
		t.Errorf("kept:\n%s\nwant:\n%s\nunset = %v, want [B D]", out, want, unset)
	}
}

// kafka.fetch_linger / produce_linger: unset takes the Kafka side's default, an explicit 0s
// turns lingering off, anything else is passed on.
func TestLingerKeys(t *testing.T) {
	zero, ten := time.Duration(0), 10*time.Millisecond
	for _, tc := range []struct {
		in   *time.Duration
		want time.Duration
	}{{nil, 0}, {&zero, -1}, {&ten, ten}} {
		if got := linger(tc.in); got != tc.want {
			t.Errorf("linger(%v) = %v, want %v", tc.in, got, tc.want)
		}
	}
	cfg, err := ParseConfig([]byte(strings.Replace(minimalConfig, "events_topic: events", "events_topic: events\n  fetch_linger: 0s", 1)), env(map[string]string{"APPID": "a", "SECRET": "b"}))
	if err != nil {
		t.Fatal(err)
	}
	if got := processorConfig(cfg).FetchLinger; got >= 0 {
		t.Errorf("fetch_linger: 0s gave processor FetchLinger %v, want negative (off)", got)
	}
}

// Kafka TLS files and the SASL password file are read at load, relative to the config file,
// and a missing or wrong one is named by its key.
func TestLoadConfigKafkaSecurityFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rules"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, text string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("kafka-password", "s3cret\n")
	write("not-a-cert.pem", "hello\n")
	base := strings.Replace(minimalConfig, `"${APPID}", secret: "${SECRET}"`, `"wx1", secret_file: secret`, 1)
	write("secret", "x")
	write("blank", " \n")
	for _, tc := range []struct {
		name, kafka, want string
	}{
		{"password file read", "  sasl: {mechanism: SCRAM-SHA-512, username: u, password_file: kafka-password}\n", ""},
		{"password file missing", "  sasl: {mechanism: PLAIN, username: u, password_file: nope}\n", "kafka.sasl.password_file: open "},
		{"password file empty", "  sasl: {mechanism: PLAIN, username: u, password_file: blank}\n", "kafka.sasl.password_file: file is empty"},
		{"ca file missing", "  tls: {enabled: true, ca_file: missing.pem}\n", "kafka.tls.ca_file: open "},
		{"ca file not PEM", "  tls: {enabled: true, ca_file: not-a-cert.pem}\n", "kafka.tls.ca_file: " + filepath.Join(dir, "not-a-cert.pem") + " holds no PEM certificate"},
		{"client certificate unreadable", "  tls: {enabled: true, cert_file: not-a-cert.pem, key_file: not-a-cert.pem}\n", "kafka.tls.cert_file: tls: failed to find any PEM data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			write("c.yaml", strings.Replace(base, "events_topic: events\n", "events_topic: events\n"+tc.kafka, 1))
			cfg, err := LoadConfig(filepath.Join(dir, "c.yaml"))
			switch {
			case tc.want == "" && err != nil:
				t.Fatal(err)
			case tc.want == "":
				if cfg.Kafka.SASL.Password != "s3cret" {
					t.Fatalf("password %q", cfg.Kafka.SASL.Password)
				}
			case err == nil || !strings.Contains(err.Error(), tc.want):
				t.Fatalf("LoadConfig = %v, want %q", err, tc.want)
			}
		})
	}
}

// LoadConfigForCheck lists the Kafka TLS and password files that are not there as needs, without
// reading the others; a file that is there but wrong is still an error, as at run.
func TestLoadConfigForCheckKafkaFiles(t *testing.T) {
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "rules"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "not-a-cert.pem"), []byte("hello\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := strings.Replace(minimalConfig, `"${APPID}", secret: "${SECRET}"`, `wx1, secret: "${SECRET}"`, 1)
	load := func(kafka string) ([]Need, error) {
		t.Helper()
		path := filepath.Join(dir, "c.yaml")
		if err := os.WriteFile(path, []byte(strings.Replace(base, "events_topic: events\n", "events_topic: events\n"+kafka, 1)), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("SECRET", "s")
		_, needs, err := LoadConfigForCheck(path)
		return needs, err
	}
	needs, err := load("  tls: {enabled: true, ca_file: ca.pem, cert_file: not-a-cert.pem, key_file: key.pem}\n" +
		"  sasl: {mechanism: PLAIN, username: u, password_file: secrets/kafka}\n")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, n := range needs {
		got = append(got, n.String())
	}
	want := []string{
		"kafka.tls.ca_file: file " + filepath.Join(dir, "ca.pem") + " does not exist",
		"kafka.tls.key_file: file " + filepath.Join(dir, "key.pem") + " does not exist",
		"kafka.sasl.password_file: file " + filepath.Join(dir, "secrets/kafka") + " does not exist",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("needs:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if _, err := load("  tls: {enabled: true, ca_file: not-a-cert.pem}\n"); err == nil || !strings.Contains(err.Error(), "kafka.tls.ca_file: ") {
		t.Errorf("a CA file that is not PEM: %v, want the error run gives", err)
	}
}

// kafka.sasl.mechanism picks kafka-go's mechanism; one Validate would refuse is an error here
// too (a config built without Validate never connects without the SASL it names).
func TestKafkaSASLMechanism(t *testing.T) {
	for _, name := range []string{"", saslPlain, saslSCRAMSHA256, saslSCRAMSHA512} {
		m, err := KafkaSASLConfig{Mechanism: name, Username: "u", Password: "p"}.mechanism()
		switch {
		case err != nil:
			t.Errorf("%q: %v", name, err)
		case name == "" && m != nil:
			t.Errorf("no mechanism gave %v", m.Name())
		case name != "" && (m == nil || m.Name() != name):
			t.Errorf("%q gave %v", name, m)
		}
	}
	if _, err := (KafkaSASLConfig{Mechanism: "GSSAPI"}).mechanism(); err == nil || err.Error() != `kafka.sasl.mechanism: "GSSAPI" is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512` {
		t.Errorf("GSSAPI: %v", err)
	}
}
