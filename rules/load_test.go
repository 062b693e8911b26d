package rules

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// validRule is a correct subscribeMessage.send rule, indented as a list item.
const validRule = `
  - name: ok
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL
      data:
        thing1: {value: "${event.shop.name}"}
`

func TestLoadProblems(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		opts Options
		want string // LoadError.Error(), exactly
	}{
		{
			name: "bad when expression points at the column",
			yaml: `rules:
  - name: r1
    when: event.type == "x" && evnt.flag
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:3:32: rule "r1": when: unknown name evnt`,
		},
		{
			name: "when must be boolean",
			yaml: `rules:
  - name: r1
    when: '"yes"'
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:3:12: rule "r1": when: expected bool, but got string`,
		},
		{
			name: "bad embedded expression points into the string",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: T
      url: "https://x/${event.order.id +}"
      data: {}
`,
			want: `r.yaml:9:40: rule "r1": message.url: unexpected token EOF`,
		},
		{
			name: "unterminated ${",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message:
      touser: ${event.user.openid
      template_id: T
      data: {}
`,
			want: `r.yaml:7:15: rule "r1": message.touser: unterminated ${ (no closing })`,
		},
		{
			name: "expression giving an object where a string is wanted",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message:
      touser: '${ {"a": 1} }'
      template_id: T
      data: {}
`,
			want: `r.yaml:7:15: rule "r1": message.touser: ${ {"a": 1} } gives map[string]interface {}, want a string`,
		},
		{
			name: "missing required rule fields",
			yaml: `rules:
  - description: nothing else
`,
			want: `r.yaml:2:5: name: missing
r.yaml:2:5: when: missing
r.yaml:2:5: account: missing
r.yaml:2:5: api: missing
r.yaml:2:5: message: missing`,
		},
		{
			name: "unknown rule key",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    colour: red
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:6:5: rule "r1": colour: unknown field (known: name, description, when, account, api, message, retry_on_timeout, truncate, dry_run, expire_after, dedupe, throttle, quiet_hours, on_daily_quota)`,
		},
		{
			name: "unknown top-level key and duplicate rule key",
			yaml: `version: 2
rules:
  - name: r1
    name: r2
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:1:1: version: unknown field (want rules)
r.yaml:4:5: rule "r1": name: duplicate field (first at line 3)`,
		},
		{
			name: "unknown api lists the known ones",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: message.send
    message: {touser: a}
`,
			want: `r.yaml:5:10: rule "r1": api: unknown api "message.send" (known: subscribeMessage.send, template.send, templateMessage.send, uniformMessage.send)`,
		},
		{
			name: "unknown account",
			opts: Options{Accounts: []string{"oa", "weapp"}},
			yaml: `rules:
  - name: r1
    when: "true"
    account: wepap
    api: template.send
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:4:14: rule "r1": account: unknown account "wepap" (have: oa, weapp)`,
		},
		{
			name: "message field the api does not have, and a missing required one",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: templateMessage.send
    message:
      touser: a
      template_id: b
      url: https://x
`,
			want: `r.yaml:7:7: rule "r1": message.form_id: missing (templateMessage.send requires it)
r.yaml:9:7: rule "r1": message.url: not a field of templateMessage.send (fields: touser, template_id, page, form_id, data, emphasis_keyword)`,
		},
		{
			name: "nested unknown field and missing nested required",
			yaml: `rules:
  - name: r1
    when: "true"
    account: oa
    api: template.send
    message:
      touser: a
      template_id: b
      miniprogram: {pagepath: p, path: q}
      data: {}
`,
			want: `r.yaml:9:20: rule "r1": message.miniprogram.appid: missing (template.send requires it)
r.yaml:9:34: rule "r1": message.miniprogram.path: not a field of template.send (fields: appid, pagepath)`,
		},
		{
			name: "data entries need value; keywords are free",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: a
      template_id: b
      data:
        anything_goes: {value: x}
        thing2: {color: "#fff"}
        thing3: {value: y, colour: red}
        thing4: plain
`,
			want: `r.yaml:11:17: rule "r1": message.data.thing2.value: missing (a data entry requires it)
r.yaml:12:28: rule "r1": message.data.thing3.colour: not a field of a data entry (fields: value, color)
r.yaml:13:17: rule "r1": message.data.thing4: want a mapping like {value: "..."}, got string "plain"`,
		},
		{
			name: "required data missing",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message: {touser: a, template_id: b}
`,
			want: `r.yaml:6:14: rule "r1": message.data: missing (subscribeMessage.send requires it)`,
		},
		{
			name: "uniformMessage.send needs one half",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: uniformMessage.send
    message: {touser: a}
`,
			want: `r.yaml:6:14: rule "r1": message: uniformMessage.send needs weapp_template_msg or mp_template_msg`,
		},
		{
			name: "non-string scalars where the api wants strings",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: a
      template_id: 12345
      data:
        number1: {value: 3980}
        thing1: {value: true}
        thing2: {value: }
`,
			want: `r.yaml:8:20: rule "r1": message.template_id: want a string, got number 12345 (quote it: "12345")
r.yaml:10:26: rule "r1": message.data.number1.value: want a string, got number 3980 (quote it: "3980")
r.yaml:11:25: rule "r1": message.data.thing1.value: want a string, got bool true (quote it: "true")
r.yaml:12:25: rule "r1": message.data.thing2.value: want a string, got null`,
		},
		{
			name: "enum and empty required",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ""
      template_id: b
      lang: fr
      data: {}
`,
			want: `r.yaml:7:15: rule "r1": message.touser: empty (subscribeMessage.send requires it)
r.yaml:9:13: rule "r1": message.lang: "fr" is not one of zh_CN, en_US, zh_HK, zh_TW`,
		},
		{
			name: "object where a string is wanted and vice versa",
			yaml: `rules:
  - name: r1
    when: "true"
    account: oa
    api: template.send
    message:
      touser: {openid: x}
      template_id: b
      miniprogram: wxapp
      data: {}
`,
			want: `r.yaml:7:15: rule "r1": message.touser: want a string, got a mapping
r.yaml:9:20: rule "r1": message.miniprogram: want a mapping, got string "wxapp"`,
		},
		{
			name: "bad durations, bools and on_daily_quota",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
    expire_after: 10 mins
    dry_run: yes
    dedupe: {key: event.order.id, window: -1h}
    throttle: {max: 0, per: 1h, burst: 3}
    on_daily_quota: retry
`,
			want: `r.yaml:7:19: rule "r1": expire_after: invalid duration "10 mins" (want a Go duration like 90s, 15m or 2h)
r.yaml:8:14: rule "r1": dry_run: want true or false, got string "yes"
r.yaml:9:43: rule "r1": dedupe.window: duration "-1h" must be positive
r.yaml:10:21: rule "r1": throttle.max: want a positive integer, got number 0 (quote it: "0")
r.yaml:10:33: rule "r1": throttle.burst: unknown field (known: max, per, key)
r.yaml:11:21: rule "r1": on_daily_quota: want fail or delay, got "retry"`,
		},
		{
			name: "dedupe needs key and window; bad key expression",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
    dedupe: {window: 1h}
    throttle: {max: 3, per: 1h, key: "event.user.("}
`,
			want: `r.yaml:7:13: rule "r1": dedupe.key: missing
r.yaml:8:50: rule "r1": throttle.key: expected name`,
		},
		{
			name: "key expression that is not text",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
    dedupe: {key: "{'a': 1}", window: 1h}
`,
			want: `r.yaml:7:19: rule "r1": dedupe.key: {'a': 1} gives map[string]interface {}, want a string`,
		},
		{
			name: "bad quiet_hours",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
    quiet_hours: {start: "25:00", end: "8:00", zone: Mars/Olympus, action: drop}
`,
			want: `r.yaml:7:26: rule "r1": quiet_hours.start: invalid time of day "25:00" (want HH:MM, 00:00 to 23:59)
r.yaml:7:40: rule "r1": quiet_hours.end: invalid time of day "8:00" (want HH:MM, 00:00 to 23:59)
r.yaml:7:54: rule "r1": quiet_hours.zone: unknown time zone "Mars/Olympus" (want an IANA name like Asia/Shanghai)
r.yaml:7:76: rule "r1": quiet_hours.action: want skip or delay, got "drop"`,
		},
		{
			name: "quiet_hours equal ends and missing action",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
    quiet_hours: {start: "22:00", end: "22:00"}
`,
			want: `r.yaml:7:18: rule "r1": quiet_hours.action: missing`,
		},
		{
			name: "duplicate name in one file",
			yaml: "rules:" + validRule + validRule,
			want: `r.yaml:12:11: rule "ok": name: duplicate rule name (first defined at line 2)`,
		},
		{
			name: "invalid YAML",
			yaml: "rules:\n  - name: a\n    when: b: c\n",
			want: `r.yaml:3:1: invalid YAML: mapping values are not allowed in this context`,
		},
		{
			name: "empty file",
			yaml: "",
			want: `r.yaml:1:1: empty file (want a rules: list)`,
		},
		{
			name: "rules not a list",
			yaml: "rules: {name: x}\n",
			want: `r.yaml:1:8: rules: want a list of rules, got a mapping`,
		},
		{
			name: "expression too big for MaxNodes",
			opts: Options{MaxNodes: 5},
			yaml: `rules:
  - name: r1
    when: event.a == 1 || event.b == 2 || event.c == 3
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {}}
`,
			want: `r.yaml:3:32: rule "r1": when: compilation failed: expression exceeds maximum allowed nodes`,
		},
		{
			name: "unknown helper",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {k: {value: "${fen2yuan(event.x)}"}}}
`,
			want: `r.yaml:6:63: rule "r1": message.data.k.value: unknown name fen2yuan`,
		},
		{
			name: "helper argument types are checked",
			yaml: `rules:
  - name: r1
    when: "true"
    account: weapp
    api: template.send
    message: {touser: a, template_id: b, data: {k: {value: "${truncate(event.x, 'ten')}"}}}
`,
			want: `r.yaml:6:81: rule "r1": message.data.k.value: cannot use string as argument (type int) to call truncate `,
		},
		{
			// yaml puts the null document on line 2, past the end of the file (found by FuzzParse).
			name: "a file of just --- is positioned inside the file",
			yaml: `---`,
			want: `r.yaml:1:4: want a mapping with a rules: list, got null`,
		},
		{
			name: "rules in a second document are not dropped",
			yaml: "rules:" + validRule + `---
rules:
  - name: lost
`,
			want: `r.yaml:11:1: a second YAML document (a rule file is one document: put every rule in its rules: list)`,
		},
		{
			name: "a second document is parsed",
			yaml: "rules:" + validRule + "---\nrules: [\n",
			want: `r.yaml:12:1: invalid YAML: did not find expected node content`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse(map[string][]byte{"r.yaml": []byte(tt.yaml)}, tt.opts)
			var le *LoadError
			if !errors.As(err, &le) {
				t.Fatalf("err = %v, want a *LoadError", err)
			}
			if got := err.Error(); got != tt.want {
				t.Errorf("problems:\n%s\nwant:\n%s", got, tt.want)
			}
		})
	}
}

// A rule file is one YAML document, with or without its markers.
func TestLoadOneDocument(t *testing.T) {
	for _, src := range []string{"---\nrules:" + validRule, "rules:" + validRule + "...\n", "%YAML 1.1\n---\nrules:" + validRule + "...\n# the end\n"} {
		if s, err := Parse(map[string][]byte{"r.yaml": []byte(src)}, Options{}); err != nil || len(s.Rules) != 1 {
			t.Errorf("Parse(%q) = %v", src, err)
		}
	}
	if _, err := Parse(map[string][]byte{"r.yaml": []byte("# nothing but a comment\n")}, Options{}); err == nil || err.Error() != "r.yaml:1:1: empty file (want a rules: list)" {
		t.Errorf("a file of comments: %v", err)
	}
}

func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestLoadDirectory(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"b.yaml":         "rules:" + strings.ReplaceAll(validRule, "name: ok", "name: b1"),
		"a.yml":          "rules:" + strings.ReplaceAll(validRule, "name: ok", "name: a1") + strings.ReplaceAll(validRule, "name: ok", "name: a2"),
		"a_test.yaml":    "this is a fixture, not a rule file: [",
		"notes.txt":      "ignored",
		"c.yaml.orig":    "ignored",
		"empty-ok.yaml":  "rules: []\n",
		"account2.yaml":  "rules:" + strings.NewReplacer("name: ok", "name: oa1", "account: weapp", "account: oa").Replace(validRule),
		"subdir_ignored": "",
	})
	if err := os.Mkdir(filepath.Join(dir, "nested.yaml"), 0o755); err != nil {
		t.Fatal(err)
	}
	s, err := Load(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, r := range s.Rules {
		names = append(names, r.Name)
	}
	if got, want := strings.Join(names, ","), "a1,a2,oa1,b1"; got != want {
		t.Errorf("rule order = %s, want %s (files sorted by name, rules in file order)", got, want)
	}
	if got, want := strings.Join(s.Accounts(), ","), "oa,weapp"; got != want {
		t.Errorf("Accounts() = %s, want %s", got, want)
	}
	if len(s.Files) != 4 || filepath.Base(s.Files[0]) != "a.yml" {
		t.Errorf("Files = %v", s.Files)
	}
	if len(s.Version) != 12 {
		t.Errorf("Version = %q, want 12 hex digits", s.Version)
	}
	if r := s.Rules[0]; r.File != filepath.Join(dir, "a.yml") || r.Line != 2 {
		t.Errorf("a1 at %s:%d", r.File, r.Line)
	}

	// The version follows content, not load time.
	s2, err := Load(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if s2.Version != s.Version {
		t.Errorf("version changed between identical loads: %s, %s", s.Version, s2.Version)
	}
	if err := os.WriteFile(filepath.Join(dir, "b.yaml"), []byte("rules: []\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s3, err := Load(dir, Options{}); err != nil || s3.Version == s.Version {
		t.Errorf("version did not change with content: %v", err)
	}
}

func TestLoadCollectsAllProblemsOfAllFiles(t *testing.T) {
	dir := writeFiles(t, map[string]string{
		"a.yaml": "rules:" + validRule,
		"b.yaml": "rules:" + validRule + `
  - name: bad
    when: event.
    account: weapp
    api: nope
    message: {}
`,
		"c.yaml": "rules:\n  - name: c\n",
	})
	_, err := Load(dir, Options{})
	want := strings.Join([]string{
		dir + `/b.yaml:2:11: rule "ok": name: duplicate rule name (first defined at ` + dir + `/a.yaml:2)`,
		dir + `/b.yaml:13:16: rule "bad": when: unexpected end of expression`,
		dir + `/b.yaml:15:10: rule "bad": api: unknown api "nope" (known: subscribeMessage.send, template.send, templateMessage.send, uniformMessage.send)`,
		dir + `/c.yaml:2:5: rule "c": when: missing`,
		dir + `/c.yaml:2:5: rule "c": account: missing`,
		dir + `/c.yaml:2:5: rule "c": api: missing`,
		dir + `/c.yaml:2:5: rule "c": message: missing`,
	}, "\n")
	if err == nil || err.Error() != want {
		t.Errorf("got:\n%v\nwant:\n%s", err, want)
	}
}

func TestLoadFileAndIOErrors(t *testing.T) {
	dir := writeFiles(t, map[string]string{"one.yaml": "rules:" + validRule})
	s, err := Load(filepath.Join(dir, "one.yaml"), Options{})
	if err != nil || len(s.Rules) != 1 {
		t.Fatalf("Load(file) = %v, %v", s, err)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"), Options{})
	if err == nil || !strings.HasPrefix(err.Error(), filepath.Join(dir, "missing.yaml")+": stat ") {
		t.Errorf("missing file: %v", err)
	}
	empty := t.TempDir()
	_, err = Load(empty, Options{})
	if err == nil || err.Error() != empty+": no rule files (*.yaml, *.yml) in directory" {
		t.Errorf("empty dir: %v", err)
	}
}

func TestRuleOptions(t *testing.T) {
	s, err := Parse(map[string][]byte{"r.yaml": []byte(`rules:
  - name: all-options
    description: every optional field
    when: "true"
    account: oa
    api: template.send
    message: {touser: "${event.user.openid}", template_id: T, data: {}}
    retry_on_timeout: true
    truncate: true
    dry_run: true
    expire_after: 30m
    dedupe: {key: "order-${event.order.id}", window: 24h}
    throttle: {max: 5, per: 1h}
    quiet_hours: {start: "22:00", end: "08:00", action: delay}
    on_daily_quota: delay
`)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	r := s.Rules[0]
	if !r.RetryOnTimeout || !r.Truncate || !r.DryRun || r.ExpireAfter != 30*time.Minute || r.Description != "every optional field" ||
		r.OnDailyQuota != DailyQuotaDelay {
		t.Errorf("flags: %+v", r)
	}
	d, err := Parse(map[string][]byte{"r.yaml": []byte("rules:" + validRule)}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Rules[0].OnDailyQuota; got != DailyQuotaFail {
		t.Errorf("on_daily_quota left out: %q, want %q", got, DailyQuotaFail)
	}
	if r.Dedupe == nil || r.Dedupe.Key != "order-${event.order.id}" || r.Dedupe.Window != 24*time.Hour {
		t.Errorf("dedupe: %+v", r.Dedupe)
	}
	if r.Throttle == nil || r.Throttle.Max != 5 || r.Throttle.Per != time.Hour || r.Throttle.Key != "" {
		t.Errorf("throttle: %+v", r.Throttle)
	}
	q := r.QuietHours
	if q == nil || q.Start != 22*time.Hour || q.End != 8*time.Hour || q.Action != QuietDelay || q.Zone.String() != "Asia/Shanghai" {
		t.Fatalf("quiet hours: %+v", q)
	}
	for _, c := range []struct {
		utc  string
		in   bool
		next string
	}{
		{"2026-11-22T13:59:00Z", false, "2026-11-23T08:00:00+08:00"}, // 21:59 Shanghai
		{"2026-11-22T14:00:00Z", true, "2026-11-23T08:00:00+08:00"},  // 22:00
		{"2026-11-22T20:00:00Z", true, "2026-11-23T08:00:00+08:00"},  // 04:00 next day
		{"2026-11-23T00:00:00Z", false, "2026-11-24T08:00:00+08:00"}, // 08:00 sharp: over
	} {
		at, _ := time.Parse(time.RFC3339, c.utc)
		if got := q.Contains(at); got != c.in {
			t.Errorf("Contains(%s) = %v, want %v", c.utc, got, c.in)
		}
		if got := q.NextEnd(at).Format(time.RFC3339); got != c.next {
			t.Errorf("NextEnd(%s) = %s, want %s", c.utc, got, c.next)
		}
	}

	// The end is a wall-clock time on daylight-saving days too.
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	dst := &QuietHours{Start: 22 * time.Hour, End: 9 * time.Hour, Zone: ny}
	for _, c := range []struct{ at, next string }{
		{"2026-03-08T03:30:00-04:00", "2026-03-08T09:00:00-04:00"}, // clocks went forward at 02:00
		{"2026-11-01T01:30:00-05:00", "2026-11-01T09:00:00-05:00"}, // clocks went back at 02:00
	} {
		at, _ := time.Parse(time.RFC3339, c.at)
		if got := dst.NextEnd(at).Format(time.RFC3339); got != c.next {
			t.Errorf("NextEnd(%s) in New York = %s, want %s", c.at, got, c.next)
		}
	}

	ev, _ := DecodeEvent([]byte(`{"user":{"openid":"o1"},"order":{"id":42}}`))
	ns := s.Evaluate(ev, Meta{EventID: "x"}, nil)
	if len(ns) != 1 || ns[0].Err != nil || ns[0].DedupeKey != "order-42" || ns[0].ThrottleKey != "o1" {
		t.Errorf("keys: %+v", ns)
	}
}

// Replicas mount the same rules at different paths; the version must only follow the content.
func TestVersionIgnoresDirectory(t *testing.T) {
	src := []byte("rules:\n  - name: r\n    when: \"true\"\n    account: a\n    api: subscribeMessage.send\n    message: {touser: o, template_id: T, data: {k: {value: v}}}\n")
	a, err := Parse(map[string][]byte{"/etc/wxnotify/rules/x.yaml": src}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	b, err := Parse(map[string][]byte{"x.yaml": src}, Options{})
	if err != nil {
		t.Fatal(err)
	}
	c, _ := Parse(map[string][]byte{"y.yaml": src}, Options{})
	if a.Version != b.Version || a.Version == c.Version {
		t.Fatalf("versions %s %s %s: want the first two equal (same name and content) and the third different (renamed)", a.Version, b.Version, c.Version)
	}
}
