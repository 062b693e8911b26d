package deploy_test

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"maps"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/compose-spec/compose-go/v2/cli"
	"github.com/compose-spec/compose-go/v2/types"
	"go.yaml.in/yaml/v3"
)

// loadCompose loads a compose file with compose-go, the library `docker compose` itself uses:
// it validates against the Compose schema, interpolates, and resolves paths. The environment is
// empty, so what the file says is what is checked, not this machine's variables.
func loadCompose(t *testing.T, path string) (*types.Project, error) {
	t.Helper()
	opts, err := cli.NewProjectOptions([]string{path},
		cli.WithWorkingDirectory(filepath.Dir(path)),
		cli.WithEnv([]string{}),
		cli.WithResolvedPaths(true),
	)
	if err != nil {
		t.Fatal(err)
	}
	return opts.LoadProject(context.Background())
}

// wxnotifyConfig is the part of a wxnotify config file the deployment checks read.
type wxnotifyConfig struct {
	Kafka struct {
		GroupID         string `yaml:"group_id"`
		EventsTopic     string `yaml:"events_topic"`
		OutcomesTopic   string `yaml:"outcomes_topic"`
		DeadLetterTopic string `yaml:"dead_letter_topic"`
		DelayTopic      string `yaml:"delay_topic"`
		StartOffset     string `yaml:"start_offset"`
		SASL            struct {
			Mechanism string `yaml:"mechanism"`
		} `yaml:"sasl"`
		TLS struct {
			Enabled bool `yaml:"enabled"`
		} `yaml:"tls"`
	} `yaml:"kafka"`
	Rules struct {
		Path string `yaml:"path"`
	} `yaml:"rules"`
	HTTP struct {
		Addr string `yaml:"addr"`
	} `yaml:"http"`
	Processor struct {
		DrainTimeout time.Duration `yaml:"drain_timeout"`
	} `yaml:"processor"`
}

// readWxnotifyConfig reads the fields above, with wxnotify's defaults where the file is silent.
func readWxnotifyConfig(t *testing.T, b []byte) wxnotifyConfig {
	t.Helper()
	var c wxnotifyConfig
	if err := yaml.Unmarshal(b, &c); err != nil {
		t.Fatalf("wxnotify config: %v", err)
	}
	if c.Processor.DrainTimeout == 0 {
		c.Processor.DrainTimeout = 15 * time.Second
	}
	if c.HTTP.Addr == "" {
		c.HTTP.Addr = ":9464"
	}
	if c.Kafka.GroupID == "" {
		c.Kafka.GroupID = "wxnotify"
	}
	return c
}

func TestCompose(t *testing.T) {
	root := repoRoot(t)
	project, err := loadCompose(t, "compose.yaml")
	if err != nil {
		t.Fatalf("compose-go: %v", err)
	}
	stages, _ := parseDockerfile(t, "Dockerfile")
	cfgPath := filepath.Join(root, "configs", "wxnotify.yaml")
	cfg := readWxnotifyConfig(t, readFile(t, cfgPath))

	for _, want := range []string{"kafka", "kafka-init", "wechatsim", "wxnotify", "prometheus", "grafana"} {
		if _, ok := project.Services[want]; !ok {
			t.Errorf("no service %q", want)
		}
	}

	t.Run("images pinned or built from deploy/Dockerfile", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(project.Services)) {
			svc := project.Services[name]
			if svc.Build != nil {
				if svc.Build.Context != root || svc.Build.Dockerfile != "deploy/Dockerfile" {
					t.Errorf("%s: build %s with %s: want the repository root with deploy/Dockerfile", name, svc.Build.Context, svc.Build.Dockerfile)
				}
				if stageByName(stages, svc.Build.Target) == nil {
					t.Errorf("%s: build target %q is not a stage of deploy/Dockerfile", name, svc.Build.Target)
				}
				continue
			}
			if !pinnedImageRE.MatchString(svc.Image) || strings.Contains(svc.Image, ":latest@") {
				t.Errorf("%s: image %q: want IMAGE:TAG@sha256:DIGEST", name, svc.Image)
			}
		}
	})

	t.Run("ports published on loopback, one service each", func(t *testing.T) {
		want := map[string]uint32{"kafka": 29092, "wechatsim": 8090, "wxnotify": listenPort(t, cfg.HTTP.Addr), "prometheus": 9090, "grafana": 3000}
		seen := map[string]string{}
		for _, name := range slices.Sorted(maps.Keys(project.Services)) {
			for _, p := range project.Services[name].Ports {
				if p.HostIP != "127.0.0.1" {
					t.Errorf("%s: port %d published on %q: want 127.0.0.1 (the simulator's admin API has no authentication)", name, p.Target, p.HostIP)
				}
				if other, dup := seen[p.Published]; dup {
					t.Errorf("%s and %s both publish port %s", other, name, p.Published)
				}
				seen[p.Published] = name
				if want[name] != 0 && p.Target != want[name] {
					t.Errorf("%s: publishes container port %d, but it listens on %d", name, p.Target, want[name])
				}
			}
		}
		for name, port := range want {
			if len(project.Services[name].Ports) == 0 {
				t.Errorf("%s: port %d not published", name, port)
			}
		}
	})

	t.Run("health checks and start order", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(project.Services)) {
			svc := project.Services[name]
			if isOneShot(project, name) {
				if svc.Restart != "no" {
					t.Errorf("%s: a one-shot service with restart %q", name, svc.Restart)
				}
				continue
			}
			hc := svc.HealthCheck
			if hc == nil || hc.Disable || len(hc.Test) < 2 {
				t.Errorf("%s: no health check", name)
				continue
			}
			// The exec form: the wxnotify and wechatsim images have no shell for CMD-SHELL.
			if hc.Test[0] != "CMD" {
				t.Errorf("%s: health check %q: want the exec form [\"CMD\", ...]", name, hc.Test)
			}
			if svc.Build != nil && hc.Test[1] != "/usr/local/bin/httpprobe" {
				t.Errorf("%s: health check runs %s, which the image lacks (it has /usr/local/bin/httpprobe)", name, hc.Test[1])
			}
			if hc.Interval == nil || hc.Timeout == nil || hc.Retries == nil {
				t.Errorf("%s: health check without interval, timeout and retries", name)
			}
			for _, port := range svc.Ports {
				if !strings.Contains(strings.Join(hc.Test, " "), "localhost") && !strings.Contains(strings.Join(hc.Test, " "), "127.0.0.1:"+itoa(port.Target)) {
					t.Errorf("%s: health check %q does not probe its own port %d", name, hc.Test, port.Target)
				}
			}
		}
		for _, name := range slices.Sorted(maps.Keys(project.Services)) {
			for dep, d := range project.Services[name].DependsOn {
				switch d.Condition {
				case types.ServiceConditionHealthy:
					if project.Services[dep].HealthCheck == nil {
						t.Errorf("%s waits for %s to be healthy, which has no health check", name, dep)
					}
				case types.ServiceConditionCompletedSuccessfully:
					if !isOneShot(project, dep) {
						t.Errorf("%s waits for %s to complete, which is not a one-shot", name, dep)
					}
				}
			}
		}
		wx := project.Services["wxnotify"]
		if wx.DependsOn["kafka-init"].Condition != types.ServiceConditionCompletedSuccessfully ||
			wx.DependsOn["wechatsim"].Condition != types.ServiceConditionHealthy {
			t.Errorf("wxnotify must start after kafka-init created the topics and the simulator is healthy: %+v", wx.DependsOn)
		}
	})

	t.Run("wxnotify gets every variable its config uses", func(t *testing.T) {
		env := project.Services["wxnotify"].Environment
		for _, v := range slices.Sorted(maps.Keys(configVars(t, cfgPath))) {
			// Variables with a default too: the defaults point at localhost and the real WeChat.
			if val, ok := env[v]; !ok || val == nil || *val == "" {
				t.Errorf("configs/wxnotify.yaml uses ${%s}; the wxnotify service does not set it", v)
			}
		}
		grace := project.Services["wxnotify"].StopGracePeriod
		if grace == nil || time.Duration(*grace) <= cfg.Processor.DrainTimeout {
			t.Errorf("wxnotify stop_grace_period %v: want more than processor.drain_timeout %s", grace, cfg.Processor.DrainTimeout)
		}
	})

	t.Run("wxnotify check accepts the config with the compose environment", func(t *testing.T) {
		bin := filepath.Join(productBinaries(t), "wxnotify")
		env := []string{"PATH=" + os.Getenv("PATH")}
		for k, v := range project.Services["wxnotify"].Environment {
			if v != nil {
				env = append(env, k+"="+*v)
			}
		}
		if out, err := runCmd(t, root, env, bin, "check", "-config", cfgPath); err != nil {
			t.Errorf("wxnotify check -config configs/wxnotify.yaml: %v\n%s", err, out)
		}
	})

	t.Run("the simulator knows wxnotify's accounts", func(t *testing.T) {
		var sim struct {
			Accounts map[string]string `yaml:"accounts"`
		}
		simPath := filepath.Join("compose", "wechatsim.yaml")
		if err := yaml.Unmarshal(readFile(t, simPath), &sim); err != nil {
			t.Fatal(err)
		}
		env := project.Services["wxnotify"].Environment
		for _, acct := range []string{"WEAPP", "MP"} {
			appid, secret := env["WXNOTIFY_"+acct+"_APPID"], env["WXNOTIFY_"+acct+"_SECRET"]
			if appid == nil || secret == nil || sim.Accounts[*appid] != *secret {
				t.Errorf("account %s: wxnotify's appid and secret are not an account of compose/wechatsim.yaml", acct)
			}
		}
		bin := filepath.Join(productBinaries(t), "wechatsim")
		if out, err := runCmd(t, ".", nil, bin, "-check", "-config", simPath); err != nil {
			t.Errorf("wechatsim -check: %v\n%s", err, out)
		}
	})

	t.Run("kafka: one KRaft node, and kafka-init creates every topic the config uses", func(t *testing.T) {
		env := project.Services["kafka"].Environment
		get := func(k string) string {
			if v := env[k]; v != nil {
				return *v
			}
			return ""
		}
		if roles := get("KAFKA_PROCESS_ROLES"); roles != "broker,controller" {
			t.Errorf("KAFKA_PROCESS_ROLES %q: want broker,controller (one KRaft node)", roles)
		}
		if id, err := base64.RawURLEncoding.DecodeString(get("CLUSTER_ID")); err != nil || len(id) != 16 {
			t.Errorf("CLUSTER_ID %q: Kafka wants a base64 UUID (16 bytes): %v", get("CLUSTER_ID"), err)
		}
		for k := range env {
			if strings.Contains(k, "ZOOKEEPER") {
				t.Errorf("%s: KRaft needs no ZooKeeper", k)
			}
		}
		script := strings.Join(project.Services["kafka-init"].Command, " ")
		m := regexp.MustCompile(`for spec in ([^;]+);`).FindStringSubmatch(script)
		if m == nil {
			t.Fatalf("kafka-init: no `for spec in TOPIC:PARTITIONS...;` in %q", script)
		}
		created := map[string]bool{}
		for _, spec := range strings.Fields(m[1]) {
			created[strings.SplitN(spec, ":", 2)[0]] = true
		}
		for _, topic := range []string{cfg.Kafka.EventsTopic, cfg.Kafka.OutcomesTopic, cfg.Kafka.DeadLetterTopic, cfg.Kafka.DelayTopic} {
			if !created[topic] {
				t.Errorf("kafka-init does not create %q (auto-creation is off)", topic)
			}
		}
		if !strings.Contains(script, "/samples/events.jsonl") || !strings.Contains(script, "--topic "+cfg.Kafka.EventsTopic) {
			t.Errorf("kafka-init does not write the samples to %s", cfg.Kafka.EventsTopic)
		}
	})

	t.Run("kafka-init's script creates the topics and keys the samples by user", func(t *testing.T) {
		runKafkaInit(t, project, filepath.Join(root, "configs", "samples", "events.jsonl"))
	})

	t.Run("mounted files exist", func(t *testing.T) {
		for _, name := range slices.Sorted(maps.Keys(project.Services)) {
			for _, v := range project.Services[name].Volumes {
				if v.Type != types.VolumeTypeBind {
					continue
				}
				if _, err := os.Stat(v.Source); err != nil {
					t.Errorf("%s: mount %s: %v", name, v.Source, err)
				}
			}
		}
		wantMount(t, project, "wxnotify", filepath.Join(root, "configs", "rules"), "/etc/wxnotify/rules")
		wantMount(t, project, "prometheus", filepath.Join(root, "deploy", "prometheus", "wxnotify.rules.yml"), "/etc/prometheus/rules/wxnotify.rules.yml")
		wantMount(t, project, "grafana", filepath.Join(root, "deploy", "grafana"), "/var/lib/grafana/dashboards/wxnotify")
	})

	t.Run("promtool checks the compose Prometheus config", func(t *testing.T) {
		promtool := requireTool(t, "promtool")
		// The same file with the rule file at its place in this checkout.
		b := strings.ReplaceAll(string(readFile(t, filepath.Join("compose", "prometheus.yml"))),
			"/etc/prometheus/rules/wxnotify.rules.yml", filepath.Join(root, "deploy", "prometheus", "wxnotify.rules.yml"))
		path := filepath.Join(t.TempDir(), "prometheus.yml")
		if err := os.WriteFile(path, []byte(b), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := runCmd(t, ".", nil, promtool, "check", "config", path); err != nil {
			t.Errorf("promtool check config: %v\n%s", err, out)
		}
		if !strings.Contains(b, `targets: ["wxnotify:`+itoa(listenPort(t, cfg.HTTP.Addr))+`"]`) {
			t.Errorf("compose/prometheus.yml does not scrape wxnotify:%d", listenPort(t, cfg.HTTP.Addr))
		}
	})

	t.Run("Grafana provisions the dashboard from its mount", func(t *testing.T) {
		prov := string(readFile(t, filepath.Join("compose", "grafana", "provisioning", "dashboards", "wxnotify.yaml")))
		if !strings.Contains(prov, "path: /var/lib/grafana/dashboards/wxnotify") {
			t.Errorf("the dashboard provider does not read /var/lib/grafana/dashboards/wxnotify")
		}
		if _, err := os.Stat(filepath.Join("grafana", "wxnotify.json")); err != nil {
			t.Error(err)
		}
	})
}

// TestComposeSchemaCatches shows that compose-go's schema validation fails a misspelled key.
func TestComposeSchemaCatches(t *testing.T) {
	b := strings.Replace(string(readFile(t, "compose.yaml")), "    healthcheck:\n", "    helthcheck:\n", 1)
	path := filepath.Join(t.TempDir(), "compose.yaml")
	if err := os.WriteFile(path, []byte(b), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := loadCompose(t, path)
	if err == nil || !strings.Contains(err.Error(), "helthcheck") {
		t.Errorf("a misspelled key loaded: err = %v", err)
	}
}

func isOneShot(p *types.Project, name string) bool {
	for _, svc := range p.Services {
		if d, ok := svc.DependsOn[name]; ok && d.Condition == types.ServiceConditionCompletedSuccessfully {
			return true
		}
	}
	return false
}

func wantMount(t *testing.T, p *types.Project, service, source, target string) {
	t.Helper()
	for _, v := range p.Services[service].Volumes {
		if v.Source == source && v.Target == target {
			if !v.ReadOnly {
				t.Errorf("%s: %s mounted writable", service, target)
			}
			return
		}
	}
	t.Errorf("%s: %s is not mounted at %s", service, source, target)
}

func listenPort(t *testing.T, addr string) uint32 {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	n, err := strconv.ParseUint(port, 10, 16)
	if err != nil {
		t.Fatalf("listen address %q: %v", addr, err)
	}
	return uint32(n)
}

func itoa(n uint32) string { return strconv.FormatUint(uint64(n), 10) }

// runKafkaInit runs kafka-init's script, as compose hands it to bash, against stand-ins for
// Kafka's tools (a topic store in files, a producer that records what it reads), twice: the
// first run creates the topics and writes every sample keyed by its user's openid, the second
// finds the events topic and writes nothing.
func runKafkaInit(t *testing.T, project *types.Project, samples string) {
	t.Helper()
	svc := project.Services["kafka-init"]
	if !slices.Equal(svc.Entrypoint, types.ShellCommand{"/bin/bash", "-ec"}) || len(svc.Command) != 1 {
		t.Fatalf("kafka-init: entrypoint %q command %q: want /bin/bash -ec SCRIPT", svc.Entrypoint, svc.Command)
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "bin")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	stubs := map[string]string{
		// --describe --topic T fails unless T was created; --create --topic T --partitions N records it.
		"kafka-topics.sh": `#!/bin/bash
set -e
topic= parts= mode=
while [ $# -gt 0 ]; do
  case $1 in --describe) mode=describe;; --create) mode=create;; --topic) topic=$2; shift;; --partitions) parts=$2; shift;; esac
  shift
done
if [ $mode = describe ]; then test -f "` + dir + `/topics/$topic"; exit; fi
mkdir -p "` + dir + `/topics"; echo "$parts" > "` + dir + `/topics/$topic"
`,
		"kafka-console-producer.sh": "#!/bin/bash\ncat >> " + dir + "/produced\n",
	}
	for name, text := range stubs {
		if err := os.WriteFile(filepath.Join(bin, name), []byte(text), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	script := strings.NewReplacer("bin=/opt/kafka/bin", "bin="+bin, "/samples/events.jsonl", samples).Replace(svc.Command[0])
	for run := 1; run <= 2; run++ {
		if out, err := runCmd(t, dir, []string{"PATH=" + os.Getenv("PATH")}, "/bin/bash", "-ec", script); err != nil {
			t.Fatalf("kafka-init run %d: %v\n%s", run, err, out)
		}
	}
	produced := strings.Split(strings.TrimSpace(string(readFile(t, filepath.Join(dir, "produced")))), "\n")
	lines := strings.Split(strings.TrimSpace(string(readFile(t, samples))), "\n")
	if len(produced) != len(lines) {
		t.Fatalf("produced %d records over two runs, want the %d samples once", len(produced), len(lines))
	}
	for i, rec := range produced {
		var ev struct {
			User struct {
				OpenID string `json:"openid"`
			} `json:"user"`
		}
		if err := json.Unmarshal([]byte(lines[i]), &ev); err != nil {
			t.Fatal(err)
		}
		if rec != ev.User.OpenID+"|"+lines[i] {
			t.Errorf("record %d: %.60q..., want key %q then the sample", i, rec, ev.User.OpenID)
		}
	}
	if parts, err := os.ReadFile(filepath.Join(dir, "topics", "events")); err != nil || strings.TrimSpace(string(parts)) != "8" {
		t.Errorf("events topic: %q %v, want 8 partitions", parts, err)
	}
}
