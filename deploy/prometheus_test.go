package deploy_test

import (
	"bytes"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

var (
	rulesPath     = filepath.Join("prometheus", "wxnotify.rules.yml")
	rulesTestPath = filepath.Join("prometheus", "wxnotify.rules.test.yml")
)

// ruleFile is a Prometheus rule file, as much as the checks read.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []rule `yaml:"rules"`
	} `yaml:"groups"`
}

type rule struct {
	Record      string            `yaml:"record"`
	Alert       string            `yaml:"alert"`
	Expr        string            `yaml:"expr"`
	For         string            `yaml:"for"`
	Labels      map[string]string `yaml:"labels"`
	Annotations map[string]string `yaml:"annotations"`
}

func readRules(t *testing.T) (alerts, records []rule) {
	t.Helper()
	var f ruleFile
	if err := yaml.Unmarshal(readFile(t, rulesPath), &f); err != nil {
		t.Fatal(err)
	}
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Alert != "" {
				alerts = append(alerts, r)
			} else {
				records = append(records, r)
			}
		}
	}
	return alerts, records
}

func TestPromtoolCheckRules(t *testing.T) {
	promtool := requireTool(t, "promtool")
	out, err := runCmd(t, ".", nil, promtool, "check", "rules", rulesPath)
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool check rules: %v\n%s", err, out)
	}
}

// labelTemplateRE is the one template form alert annotations may use.
var labelTemplateRE = regexp.MustCompile(`\{\{ \$labels\.([a-z_]+) \}\}`)

func TestAlertsHaveRunbooks(t *testing.T) {
	alerts, _ := readRules(t)
	want := []string{
		"WxnotifyDown", "WxnotifyConsumerLagGrowing", "WxnotifyNoEventsConsumed", "WxnotifyOutcomeWritesFailing",
		"WxnotifyWeChatHeld", "WxnotifyBreakerOpen", "WxnotifyDailyQuotaStopped", "WxnotifyTokenFetchFailing",
		"WxnotifyRuleReloadRejected",
	}
	var got []string
	for _, a := range alerts {
		got = append(got, a.Alert)
		if s := a.Labels["severity"]; s != "warning" && s != "critical" {
			t.Errorf("%s: severity %q: want warning or critical", a.Alert, s)
		}
		for _, k := range []string{"summary", "description", "runbook"} {
			if strings.TrimSpace(a.Annotations[k]) == "" {
				t.Errorf("%s: no %s annotation", a.Alert, k)
			}
		}
		// The runbook: what it means, what to check, what to do.
		lines := strings.Split(strings.TrimSpace(a.Annotations["runbook"]), "\n")
		if len(lines) != 3 || !strings.HasPrefix(lines[0], "Means: ") || !strings.HasPrefix(lines[1], "Check: ") || !strings.HasPrefix(lines[2], "Do: ") {
			t.Errorf("%s: runbook must be three lines, Means: / Check: / Do:, got %q", a.Alert, lines)
		}
		for k, v := range a.Annotations {
			if strings.Contains(labelTemplateRE.ReplaceAllString(v, ""), "{{") {
				t.Errorf("%s: annotation %s: only {{ $labels.NAME }} templates (the unit tests render them)", a.Alert, k)
			}
		}
	}
	if !slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want))) {
		t.Errorf("alerts %q, want %q", got, want)
	}
}

// TestPromtoolTestRules runs the rule unit tests with promtool, after checking that every alert
// has a case that fires it and one that does not, and that the exp_annotations are what the
// rules render (-update writes them).
func TestPromtoolTestRules(t *testing.T) {
	alerts, _ := readRules(t)
	byName := map[string]rule{}
	for _, a := range alerts {
		byName[a.Alert] = a
	}

	var doc yaml.Node
	if err := yaml.Unmarshal(readFile(t, rulesTestPath), &doc); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, test := range mapValue(&doc, "tests").Content {
		art := mapValue(test, "alert_rule_test")
		if art == nil {
			continue
		}
		for _, c := range art.Content {
			name := mapValue(c, "alertname").Value
			a, ok := byName[name]
			if !ok {
				t.Errorf("a test of alert %q, which the rules do not have", name)
				continue
			}
			exp := mapValue(c, "exp_alerts")
			if exp == nil || len(exp.Content) == 0 {
				quiet[name] = true
				continue
			}
			fires[name] = true
			for _, e := range exp.Content {
				labels := map[string]string{}
				if l := mapValue(e, "exp_labels"); l != nil {
					if err := l.Decode(&labels); err != nil {
						t.Fatal(err)
					}
				}
				annotations, err := renderAnnotations(a.Annotations, labels)
				if err != nil {
					t.Errorf("%s: %v", name, err)
					continue
				}
				setMapValue(e, "exp_annotations", annotations)
			}
		}
	}
	for _, a := range alerts {
		if !fires[a.Alert] {
			t.Errorf("%s: no unit test fires it", a.Alert)
		}
		if !quiet[a.Alert] {
			t.Errorf("%s: no unit test shows it quiet (exp_alerts: [])", a.Alert)
		}
	}

	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(&doc); err != nil {
		t.Fatal(err)
	}
	if *update {
		if err := os.WriteFile(rulesTestPath, buf.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	} else if !bytes.Equal(buf.Bytes(), readFile(t, rulesTestPath)) {
		t.Fatalf("%s: exp_annotations out of step with the rules: go test -run TestPromtoolTestRules -update", rulesTestPath)
	}

	promtool := requireTool(t, "promtool")
	out, err := runCmd(t, "prometheus", nil, promtool, "test", "rules", filepath.Base(rulesTestPath))
	if err != nil || !strings.Contains(out, "SUCCESS") {
		t.Errorf("promtool test rules: %v\n%s", err, out)
	}
}

// renderAnnotations renders {{ $labels.NAME }} as Prometheus does, for the labels an alert has.
func renderAnnotations(annotations, labels map[string]string) (map[string]string, error) {
	out := map[string]string{}
	for k, v := range annotations {
		var missing []string
		out[k] = labelTemplateRE.ReplaceAllStringFunc(v, func(m string) string {
			name := labelTemplateRE.FindStringSubmatch(m)[1]
			val, ok := labels[name]
			if !ok {
				missing = append(missing, name)
			}
			return val
		})
		if len(missing) > 0 {
			return nil, fmt.Errorf("annotation %s uses labels %q the alert does not have", k, missing)
		}
	}
	return out, nil
}

// mapValue returns the value of key in a YAML mapping (or a document holding one), or nil.
func mapValue(n *yaml.Node, key string) *yaml.Node {
	if n.Kind == yaml.DocumentNode {
		n = n.Content[0]
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			return n.Content[i+1]
		}
	}
	return nil
}

// setMapValue sets key of a YAML mapping to a mapping of strings, in sorted key order,
// multi-line values as literal blocks.
func setMapValue(n *yaml.Node, key string, m map[string]string) {
	val := &yaml.Node{Kind: yaml.MappingNode}
	for _, k := range slices.Sorted(maps.Keys(m)) {
		v := &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: m[k]}
		if strings.Contains(m[k], "\n") {
			v.Style = yaml.LiteralStyle
		}
		val.Content = append(val.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: k}, v)
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		if n.Content[i].Value == key {
			n.Content[i+1] = val
			return
		}
	}
	n.Content = append(n.Content, &yaml.Node{Kind: yaml.ScalarNode, Value: key}, val)
}
