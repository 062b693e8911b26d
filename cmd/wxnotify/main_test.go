package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata")

// wxnotify runs the command line as main does and returns the exit status and output.
func wxnotify(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s (go test -update rewrites it)\ngot:\n%s\nwant:\n%s", path, got, want)
	}
}

func TestCheckReportsEveryProblem(t *testing.T) {
	code, out, errOut := wxnotify(t, "check", "-config", "testdata/check.yaml")
	if code != 1 || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing", code, errOut)
	}
	golden(t, "check.golden", out)
}

func TestCheckReportsConfigAndRuleProblems(t *testing.T) {
	// The config is invalid (as in CI without secrets): its problems name their keys, and the
	// rules are still checked, against the accounts the config lists.
	code, out, _ := wxnotify(t, "check", "-config", "testdata/badconfig.yaml")
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	golden(t, "badconfig.golden", out)
}

// check -config needs no secrets: it lists what run will need (unset variables, with the keys
// that name them, and secret files that are not there) and exits 0; -strict makes them problems.
func TestCheckListsWhatRunWillNeed(t *testing.T) {
	code, out, errOut := wxnotify(t, "check", "-config", "testdata/needs.yaml")
	if code != 0 || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 0 and nothing", code, errOut)
	}
	golden(t, "needs.golden", regexp.MustCompile(`version [0-9a-f]{12}`).ReplaceAllString(out, "version V"))
	code, out, _ = wxnotify(t, "check", "-strict", "-config", "testdata/needs.yaml")
	if code != 1 {
		t.Errorf("-strict: exit %d, want 1", code)
	}
	golden(t, "needs-strict.golden", out)
}

func TestCheckOK(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-rules", "../../configs/rules"}, `^ok: 4 rules in 2 files, version [0-9a-f]{12} \(accounts not checked\)\n$`},
		{[]string{"-config", "testdata/good.yaml"}, `^ok: 4 rules in 2 files, version [0-9a-f]{12} \(accounts checked against testdata/good.yaml\)\n$`},
		{[]string{"-rules", "../../configs/rules/orders.yaml"}, `^ok: 2 rules in 1 files, version [0-9a-f]{12} \(accounts not checked\)\n$`},
	} {
		code, out, errOut := wxnotify(t, append([]string{"check"}, tc.args...)...)
		if code != 0 || !regexp.MustCompile(tc.want).MatchString(out) || errOut != "" {
			t.Errorf("check %v: exit %d\nstdout %q\nstderr %q\nwant stdout matching %s", tc.args, code, out, errOut, tc.want)
		}
	}
}

func TestRenderSamples(t *testing.T) {
	// e-000004's shop has no address: order-paid is rejected, so the exit status is 1.
	code, out, errOut := wxnotify(t, "render", "-rules", "../../configs/rules", "-event", "../../configs/samples/events.jsonl")
	if code != 1 || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing", code, errOut)
	}
	golden(t, "render.golden", out)
}

func TestRenderPrintsTheExactBody(t *testing.T) {
	// rules/testdata/order-paid.golden is the rules package's own golden body: render must
	// print those bytes, unchanged, on the line after the rule's.
	code, out, errOut := wxnotify(t, "render", "-rules", "../../rules/testdata/example.yaml", "-event", "../../rules/testdata/order-paid.json")
	if code != 0 {
		t.Fatalf("exit %d: %s%s", code, out, errOut)
	}
	want, err := os.ReadFile("../../rules/testdata/order-paid.golden")
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(out, "\n")
	if len(lines) != 4 || lines[1] != "order-paid: templateMessage.send POST /cgi-bin/message/wxopen/template/send (account weapp)" ||
		lines[2] != strings.TrimSuffix(string(want), "\n") {
		t.Errorf("render output:\n%s\nwant the rule line, then exactly:\n%s", out, want)
	}
}

func TestRenderExplainFromStdin(t *testing.T) {
	stdin = strings.NewReader(`{"event_id":"e-1","type":"order.refunded","order":{"id":"1"}}`)
	defer func() { stdin = os.Stdin }()
	code, out, errOut := wxnotify(t, "render", "-rules", "../../configs/rules", "-event", "-", "-explain")
	want := `== event e-1 (stdin:1)
order-paid: no match: when is false: event.type == "order.paid" (event.type = "order.refunded")
order-paid-subscribe: no match: when is false: event.type == "order.paid" (event.type = "order.refunded")
shipment-sent: no match: when is false: event.type == "shipment.sent" (event.type = "order.refunded")
shipment-sent-oa: no match: when is false: event.type == "shipment.sent" (event.type = "order.refunded")
`
	if code != 0 || out != want || errOut != "" {
		t.Errorf("exit %d\nstdout:\n%s\nstderr: %s\nwant exit 0 and:\n%s", code, out, errOut, want)
	}
}

func TestRenderPretty(t *testing.T) {
	code, out, _ := wxnotify(t, "render", "-rules", "../../rules/testdata/example.yaml", "-event", "../../rules/testdata/order-paid.json", "-pretty")
	if code != 0 || !strings.Contains(out, "\n{\n  \"touser\": \"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o\",\n") || !strings.Contains(out, `"广州市海珠区新港中路397号"`) {
		t.Errorf("exit %d, output:\n%s", code, out)
	}
}

func TestRenderBadEvents(t *testing.T) {
	for _, tc := range []struct{ input, want string }{
		{"{\"type\":\"order.paid\"}\n{\"type\": oops}\n", "wxnotify render: stdin:2: invalid character 'o' looking for beginning of value\n"},
		{"{\"type\":\"order.paid\"}\n[1]\n", "wxnotify render: stdin:2: decode event: json: cannot unmarshal array into Go value of type map[string]interface {}\n"},
		{"  \n", "wxnotify render: stdin:1: no events\n"},
	} {
		stdin = strings.NewReader(tc.input)
		code, _, errOut := wxnotify(t, "render", "-rules", "../../configs/rules", "-event", "-")
		if code != 1 || errOut != tc.want {
			t.Errorf("input %q: exit %d, stderr %q; want 1, %q", tc.input, code, errOut, tc.want)
		}
	}
	stdin = os.Stdin
}

func TestTestShippedFixturesPass(t *testing.T) {
	code, out, errOut := wxnotify(t, "test", "-rules", "../../configs/rules")
	if code != 0 || errOut != "" || !strings.HasSuffix(out, " passed, 0 failed\n") || strings.Contains(out, "FAIL") {
		t.Errorf("exit %d\n%s%s", code, out, errOut)
	}
	// One rule file runs its sibling fixture only; -run filters cases by name.
	code, out, _ = wxnotify(t, "test", "-rules", "../../configs/rules/orders.yaml", "-run", "yuan")
	if want := "PASS ../../configs/rules/orders_test.yaml: paid order notifies on both APIs with the amount in yuan and the local time\n" +
		"PASS ../../configs/rules/orders_test.yaml: amounts under a yuan keep their fen\n2 passed, 0 failed\n"; code != 0 || out != want {
		t.Errorf("exit %d\n%s\nwant:\n%s", code, out, want)
	}
}

func TestTestReportsFailures(t *testing.T) {
	code, out, errOut := wxnotify(t, "test", "-rules", "testdata/failing")
	if code != 1 || errOut != "" {
		t.Errorf("exit %d, stderr %q; want 1 and nothing", code, errOut)
	}
	golden(t, "test.golden", out)
}

func TestExitStatus(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want int
	}{
		{nil, 2},
		{[]string{"frobnicate"}, 2},
		{[]string{"help"}, 0},
		{[]string{"check"}, 2},
		{[]string{"check", "-h"}, 0},
		{[]string{"check", "-bogus"}, 2},
		{[]string{"check", "-rules", "../../configs/rules", "extra"}, 2},
		{[]string{"check", "-rules", "testdata/nonexistent"}, 1},
		{[]string{"check", "-config", "testdata/nonexistent.yaml"}, 1},
		{[]string{"render", "-rules", "../../configs/rules"}, 2},
		{[]string{"render", "-event", "x.json"}, 2},
		{[]string{"render", "-rules", "../../configs/rules", "-event", "testdata/nonexistent.json"}, 1},
		{[]string{"render", "-rules", "testdata/broken", "-event", "../../rules/testdata/order-paid.json"}, 1},
		{[]string{"render", "-rules", "../../rules/testdata/example.yaml", "-event", "../../rules/testdata/order-paid.json"}, 0},
		{[]string{"test", "-run", "("}, 2},
		{[]string{"test", "-rules", "testdata/nonexistent"}, 1},
		{[]string{"test", "-rules", "testdata/broken"}, 1}, // no fixtures
		{[]string{"test", "-rules", "../../configs/rules"}, 0},
		{[]string{"schema", "extra"}, 2},
		{[]string{"version", "extra"}, 2},
		{[]string{"run", "-h"}, 0},
		{[]string{"run", "extra"}, 2},
		{[]string{"run", "-config", "testdata/nonexistent.yaml"}, 1},
		{[]string{"demo", "-h"}, 0},
		{[]string{"demo", "-bogus"}, 2},
		{[]string{"demo", "-rules", "testdata/broken"}, 1},
	} {
		if code, out, errOut := wxnotify(t, tc.args...); code != tc.want {
			t.Errorf("wxnotify %s: exit %d, want %d\n%s%s", strings.Join(tc.args, " "), code, tc.want, out, errOut)
		}
	}
}

func TestSchemasAreGenerated(t *testing.T) {
	for _, tc := range []struct {
		args []string
		file string
	}{
		{[]string{"schema"}, "../../configs/rules.schema.json"},
		{[]string{"schema", "-fixtures"}, "../../configs/ruletest.schema.json"},
	} {
		code, out, errOut := wxnotify(t, tc.args...)
		if code != 0 {
			t.Fatalf("%v: exit %d: %s", tc.args, code, errOut)
		}
		committed, err := os.ReadFile(tc.file)
		if err != nil {
			t.Fatal(err)
		}
		if out != string(committed) {
			t.Errorf("%s is stale: run go generate ./cmd/wxnotify", tc.file)
		}
	}
}

// TestSchemaCoversTheCatalog reads the committed schema as an editor would, independently of
// the generator: every wxapi API is in the api enum and has a message definition listing every
// body field at its path, with the required ones required.
func TestSchemaCoversTheCatalog(t *testing.T) {
	raw, err := os.ReadFile("../../configs/rules.schema.json")
	if err != nil {
		t.Fatal(err)
	}
	var schema map[string]any
	if err := json.Unmarshal(raw, &schema); err != nil {
		t.Fatal(err)
	}
	defs := schema["definitions"].(map[string]any)
	rule := defs["rule"].(map[string]any)
	props := rule["properties"].(map[string]any)
	var enum []string
	for _, v := range props["api"].(map[string]any)["enum"].([]any) {
		enum = append(enum, v.(string))
	}
	if !slices.Equal(enum, wxapi.Names()) {
		t.Errorf("api enum %v, want %v", enum, wxapi.Names())
	}
	for _, k := range []string{"name", "description", "when", "account", "api", "message", "retry_on_timeout",
		"truncate", "dry_run", "expire_after", "dedupe", "throttle", "quiet_hours"} {
		if props[k] == nil {
			t.Errorf("rule property %s missing", k)
		}
	}
	var walk func(path string, f *wxapi.Field, s map[string]any)
	walk = func(path string, f *wxapi.Field, s map[string]any) {
		if anyOf, ok := s["anyOf"].([]any); ok && s["properties"] == nil {
			s = anyOf[0].(map[string]any) // an object field, or a ${...} standing for it
		}
		fields, _ := s["properties"].(map[string]any)
		var required []string
		for _, r := range s["required"].([]any) {
			required = append(required, r.(string))
		}
		for i := range f.Fields {
			c := &f.Fields[i]
			cs, ok := fields[c.Name].(map[string]any)
			if !ok {
				t.Errorf("%s.%s: not in the schema", path, c.Name)
				continue
			}
			if c.Required != slices.Contains(required, c.Name) {
				t.Errorf("%s.%s: required is %v in wxapi, not in the schema", path, c.Name, c.Required)
			}
			if c.Kind == wxapi.Object {
				walk(path+"."+c.Name, c, cs)
			}
		}
		if len(fields) != len(f.Fields) {
			t.Errorf("%s: schema has %d fields, wxapi %d", path, len(fields), len(f.Fields))
		}
	}
	for _, name := range wxapi.Names() {
		api, _ := wxapi.Lookup(name)
		def, ok := defs[name].(map[string]any)
		if !ok {
			t.Errorf("no definition for %s", name)
			continue
		}
		walk(name, &api.Body, def)
		if !strings.Contains(string(raw), `"const": "`+name+`"`) {
			t.Errorf("no if/then selecting the %s message by api", name)
		}
	}
}

func TestShippedFilesReferenceTheirSchema(t *testing.T) {
	files, _ := filepath.Glob("../../configs/rules/*.yaml")
	if len(files) == 0 {
		t.Fatal("no shipped rule files")
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		want := "# yaml-language-server: $schema=../rules.schema.json\n"
		if strings.HasSuffix(f, "_test.yaml") {
			want = "# yaml-language-server: $schema=../ruletest.schema.json\n"
		}
		if !bytes.HasPrefix(b, []byte(want)) {
			t.Errorf("%s: first line is not %q", f, want)
		}
	}
}

// wxnotify version, -version and --version print the version, the revision and the Go version
// (deploy's TestDockerfileBuild checks the stamped ones).
func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "-version", "--version"} {
		code, out, errOut := wxnotify(t, arg)
		want := regexp.MustCompile(`^wxnotify devel \(revision [^,]+, ` + regexp.QuoteMeta(runtime.Version()) + ` [a-z0-9]+/[a-z0-9]+\)\n$`)
		if code != 0 || !want.MatchString(out) || errOut != "" {
			t.Errorf("wxnotify %s: exit %d, stdout %q, stderr %q; want 0 and a line matching %s", arg, code, out, errOut, want)
		}
	}
}

// run -h and demo -h say what the command does, what it needs and how it ends, and list its
// flags, as check -h does.
func TestHelp(t *testing.T) {
	for _, tc := range []struct {
		cmd  string
		want []string
	}{
		{"run", []string{"usage: wxnotify run [-config FILE]", "wxnotify check -config FILE", "SIGHUP reloads the rules", "processor.drain_timeout", "Exit status:", "-config file"}},
		{"demo", []string{"usage: wxnotify demo [-rules DIR]", "playground for rule authors", "accounts weapp", "Exit status:", "-rules DIR", "-keep", "-kafka-port port", "-http address"}},
		{"check", []string{"usage: wxnotify check -config FILE", "-strict", "will need"}},
	} {
		code, out, errOut := wxnotify(t, tc.cmd, "-h")
		if code != 0 || out != "" {
			t.Errorf("%s -h: exit %d, stdout %q", tc.cmd, code, out)
		}
		for _, w := range tc.want {
			if !strings.Contains(errOut, w) {
				t.Errorf("%s -h lacks %q:\n%s", tc.cmd, w, errOut)
			}
		}
	}
}
