// Package ruletest runs rule fixtures: YAML files that ops write next to rule files
// (orders.yaml -> orders_test.yaml) to say what the rules must make of an event, so a rule
// change is tested without writing Go. `wxnotify test` and the project's own `go test` both run
// fixtures through this package.
//
// It is pure like package rules: it reads fixture files and the files they name, evaluates
// rules with rules.Set.Evaluate and compares; it never sends anything.
//
// # Fixture files
//
//	tests:
//	  - name: paid order notifies with the amount in yuan      # required, unique in the file
//	    event: {event_id: e-1, type: order.paid, order: {amount_fen: 3980}}
//	    # or: event_file: samples/order_paid.json   (one JSON object; relative to the fixture)
//	    kafka: {topic: events, partition: 0, offset: 42, key: "k", time: "2026-11-22T10:00:00Z"}  # optional
//	    expect:
//	      matched: [order-paid, order-paid-subscribe]  # exactly the rules whose `when` is true
//	      bodies:
//	        order-paid:                                # body fields by dotted path
//	          data.keyword2.value: "39.80元"
//	          page: null                               # null: the field is absent
//	        order-paid-subscribe:
//	          body_file: golden/order-paid-subscribe.json  # the whole body (JSON whitespace ignored)
//	      rejected:
//	        some-rule: message.data.keyword4.value     # rejected, error contains this ("" = any)
//
// A rule whose `when` is true either renders a body or is rejected (a field evaluated to nil,
// see rules.FieldError). Every rejection the case does not list under `rejected` fails it, as
// does a rule under `bodies` that was rejected or did not match. `matched`, when given, lists
// rendered and rejected rules alike; leave it out to check only the rules named. Unknown keys
// are errors, reported with file:line:col.
//
// Events written in YAML become JSON before rules.DecodeEvent, so numbers follow the same
// conventions as on Kafka: write `amount_fen: 3980` for a number and `id: "339208499"` for a
// string. The event id used for template.send's client_msg_id is the event's event_id, or
// "topic/partition/offset" as the processor does when it has none.
package ruletest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wxnotify/wxnotify/rules"
)

// Fixture is one parsed fixture file.
type Fixture struct {
	File  string
	Cases []*Case
}

// Case is one test case of a fixture.
type Case struct {
	Name  string
	Line  int
	Event rules.Event
	Meta  rules.Meta
	// Matched is nil when the case does not list the matching rules.
	Matched []string
	Bodies  map[string]*BodyExpect
	// Rejected maps a rule to a substring of its rejection error.
	Rejected map[string]string
	// ruleRefs locate every rule name the case mentions, for problems about unknown rules.
	ruleRefs []ruleRef
}

type ruleRef struct {
	name string
	line int
}

// BodyExpect is what a case expects of one rule's body: field values by path, and/or the whole
// body from a file.
type BodyExpect struct {
	// Fields maps a dotted body path (data.keyword2.value) to its expected JSON value; a nil
	// value (YAML null) means the field must be absent.
	Fields []FieldExpect
	// File is the body_file as written (relative to the fixture); Want is its content,
	// compacted.
	File string
	Want []byte
}

// FieldExpect is one expected body field.
type FieldExpect struct {
	Path string
	Want any // decoded JSON; nil = absent
	Line int
}

// Result is the outcome of one case. A fixture file that does not parse gives one Result with
// an empty Name and its problems as Failures.
type Result struct {
	File     string
	Name     string
	Line     int
	Failures []string
}

// Passed reports whether the case met every expectation.
func (r Result) Passed() bool { return len(r.Failures) == 0 }

// IsFixture reports whether a file name is a fixture (*_test.yaml or *_test.yml), the names
// rules.Load skips.
func IsFixture(name string) bool {
	ext := filepath.Ext(name)
	return (ext == ".yaml" || ext == ".yml") && strings.HasSuffix(strings.TrimSuffix(name, ext), "_test")
}

// Files returns the fixtures in dir, sorted.
func Files(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, e := range entries {
		if !e.IsDir() && IsFixture(e.Name()) {
			out = append(out, filepath.Join(dir, e.Name()))
		}
	}
	return out, nil
}

// Load reads and parses a fixture file. The error is a *rules.LoadError listing every problem.
func Load(path string) (*Fixture, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &rules.LoadError{Problems: []rules.Problem{{File: path, Msg: err.Error()}}}
	}
	return Parse(path, data)
}

// Parse parses fixture text; file names problems and anchors event_file and body_file paths.
func Parse(file string, data []byte) (*Fixture, error) {
	p := &parser{file: file, dir: filepath.Dir(file)}
	f := p.parse(data)
	if len(p.problems) > 0 {
		slices.SortStableFunc(p.problems, func(a, b rules.Problem) int {
			if a.Line != b.Line {
				return a.Line - b.Line
			}
			return a.Col - b.Col
		})
		return nil, &rules.LoadError{Problems: p.problems}
	}
	return f, nil
}

type parser struct {
	file, dir string
	problems  []rules.Problem
}

func (p *parser) add(n *yaml.Node, field, msg string) {
	pr := rules.Problem{File: p.file, Line: 1, Col: 1, Field: field, Msg: msg}
	if n != nil {
		pr.Line, pr.Col = n.Line, n.Column
	}
	p.problems = append(p.problems, pr)
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *parser) parse(data []byte) *Fixture {
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		line, msg := 1, strings.TrimPrefix(err.Error(), "yaml: ")
		if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
			line, _ = strconv.Atoi(m[1])
			msg = m[2]
		}
		p.problems = append(p.problems, rules.Problem{File: p.file, Line: line, Col: 1, Msg: "invalid YAML: " + msg})
		return nil
	}
	if len(doc.Content) == 0 {
		p.add(nil, "", "empty file (want a tests: list)")
		return nil
	}
	vals := p.mapping(doc.Content[0], "", []string{"tests"}, "tests")
	if vals == nil {
		return nil
	}
	list := vals["tests"]
	if list.Kind != yaml.SequenceNode || len(list.Content) == 0 {
		p.add(list, "tests", "want a non-empty list of test cases")
		return nil
	}
	f := &Fixture{File: p.file}
	names := map[string]int{}
	for i, n := range list.Content {
		c := p.parseCase(deref(n), fmt.Sprintf("tests[%d]", i))
		if c == nil {
			continue
		}
		if line, dup := names[c.Name]; dup {
			p.add(n, fmt.Sprintf("tests[%d].name", i), fmt.Sprintf("duplicate test name %q (first at line %d)", c.Name, line))
		}
		names[c.Name] = c.Line
		f.Cases = append(f.Cases, c)
	}
	return f
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

// mapping returns n's values by key, reporting a non-mapping, unknown and duplicate keys and
// missing required ones. It returns nil when n is not a mapping or a required key is missing.
func (p *parser) mapping(n *yaml.Node, prefix string, known []string, required ...string) map[string]*yaml.Node {
	n = deref(n)
	if n.Kind != yaml.MappingNode {
		p.add(n, strings.TrimSuffix(prefix, "."), "want a mapping with "+strings.Join(known, ", "))
		return nil
	}
	vals := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		switch {
		case !slices.Contains(known, k.Value):
			p.add(k, prefix+k.Value, "unknown field (known: "+strings.Join(known, ", ")+")")
		case vals[k.Value] != nil:
			p.add(k, prefix+k.Value, "duplicate field")
		default:
			vals[k.Value] = v
		}
	}
	ok := true
	for _, r := range required {
		if vals[r] == nil {
			p.add(n, prefix+r, "missing")
			ok = false
		}
	}
	if !ok {
		return nil
	}
	return vals
}

func (p *parser) str(n *yaml.Node, field string) (string, bool) {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		p.add(n, field, "want a string")
		return "", false
	}
	return n.Value, true
}

func (p *parser) parseCase(n *yaml.Node, path string) *Case {
	vals := p.mapping(n, path+".", []string{"name", "event", "event_file", "kafka", "expect"}, "name", "expect")
	if vals == nil {
		return nil
	}
	c := &Case{Line: n.Line}
	name, ok := p.str(vals["name"], path+".name")
	if ok && name == "" {
		p.add(vals["name"], path+".name", "empty")
	}
	c.Name = name

	ev, evFile := vals["event"], vals["event_file"]
	var raw []byte
	switch {
	case ev != nil && evFile != nil:
		p.add(evFile, path+".event_file", "give event or event_file, not both")
	case ev != nil:
		if ev.Kind != yaml.MappingNode {
			p.add(ev, path+".event", "want a mapping (the event's JSON object)")
			break
		}
		v, err := jsonValue(ev)
		if err != nil {
			p.add(ev, path+".event", err.Error())
			break
		}
		raw, _ = json.Marshal(v)
	case evFile != nil:
		if name, ok := p.str(evFile, path+".event_file"); ok {
			b, err := os.ReadFile(filepath.Join(p.dir, name))
			if err != nil {
				p.add(evFile, path+".event_file", err.Error())
				break
			}
			raw = b
		}
	default:
		p.add(n, path+".event", "missing (give event or event_file)")
	}
	if raw != nil {
		e, err := rules.DecodeEvent(raw)
		if err != nil {
			at := ev
			if at == nil {
				at = evFile
			}
			p.add(at, path+".event", err.Error())
		}
		c.Event = e
	}
	c.Meta = rules.Meta{EventID: c.Event.ID()}
	if kn := vals["kafka"]; kn != nil {
		p.parseKafka(kn, path+".kafka", &c.Meta)
	}
	c.Meta.EventID = c.Meta.ID()
	p.parseExpect(vals["expect"], path+".expect", c)
	return c
}

func (p *parser) parseKafka(n *yaml.Node, path string, m *rules.Meta) {
	vals := p.mapping(n, path+".", []string{"topic", "partition", "offset", "key", "time"})
	if vals == nil {
		return
	}
	if v := vals["topic"]; v != nil {
		m.Topic, _ = p.str(v, path+".topic")
	}
	if v := vals["key"]; v != nil {
		if s, ok := p.str(v, path+".key"); ok {
			m.Key = []byte(s)
		}
	}
	for _, k := range []string{"partition", "offset"} {
		v := vals[k]
		if v == nil {
			continue
		}
		i, err := strconv.ParseInt(v.Value, 10, 64)
		if v.Kind != yaml.ScalarNode || v.Tag != "!!int" || err != nil || i < 0 {
			p.add(v, path+"."+k, "want a non-negative integer")
			continue
		}
		if k == "partition" {
			m.Partition = int(i)
		} else {
			m.Offset = i
		}
	}
	if v := vals["time"]; v != nil {
		t, err := time.Parse(time.RFC3339, v.Value)
		if v.Kind != yaml.ScalarNode || err != nil {
			p.add(v, path+".time", "want an RFC 3339 time like 2026-11-22T10:00:00Z")
		}
		m.Time = t
	}
}

func (p *parser) parseExpect(n *yaml.Node, path string, c *Case) {
	vals := p.mapping(n, path+".", []string{"matched", "bodies", "rejected"})
	if vals == nil {
		return
	}
	if len(vals) == 0 {
		p.add(n, path, "empty (give matched, bodies or rejected)")
	}
	if m := vals["matched"]; m != nil {
		c.Matched = []string{}
		if m.Kind != yaml.SequenceNode {
			p.add(m, path+".matched", "want a list of rule names ([] for none)")
		}
		for _, e := range m.Content {
			if s, ok := p.str(e, path+".matched"); ok {
				if slices.Contains(c.Matched, s) {
					p.add(e, path+".matched", fmt.Sprintf("rule %q listed twice", s))
				}
				c.Matched = append(c.Matched, s)
				c.ruleRefs = append(c.ruleRefs, ruleRef{s, e.Line})
			}
		}
	}
	if b := vals["bodies"]; b != nil {
		c.Bodies = map[string]*BodyExpect{}
		p.eachRule(b, path+".bodies", c, func(rule string, v *yaml.Node) {
			if be := p.parseBody(v, path+".bodies."+rule); be != nil {
				c.Bodies[rule] = be
			}
		})
	}
	if r := vals["rejected"]; r != nil {
		c.Rejected = map[string]string{}
		p.eachRule(r, path+".rejected", c, func(rule string, v *yaml.Node) {
			if v.Kind == yaml.ScalarNode && v.Tag == "!!null" {
				c.Rejected[rule] = ""
			} else if s, ok := p.str(v, path+".rejected."+rule); ok {
				c.Rejected[rule] = s
			}
		})
	}
	for rule := range c.Bodies {
		if _, ok := c.Rejected[rule]; ok {
			p.add(n, path, fmt.Sprintf("rule %q is under both bodies and rejected", rule))
		}
	}
}

func (p *parser) eachRule(n *yaml.Node, path string, c *Case, fn func(rule string, v *yaml.Node)) {
	if n.Kind != yaml.MappingNode {
		p.add(n, path, "want a mapping of rule name to expectation")
		return
	}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if seen[k.Value] {
			p.add(k, path+"."+k.Value, "duplicate rule")
			continue
		}
		seen[k.Value] = true
		c.ruleRefs = append(c.ruleRefs, ruleRef{k.Value, k.Line})
		fn(k.Value, v)
	}
}

func (p *parser) parseBody(n *yaml.Node, path string) *BodyExpect {
	if n.Kind != yaml.MappingNode || len(n.Content) == 0 {
		p.add(n, path, "want a mapping of body paths to values, or body_file")
		return nil
	}
	be := &BodyExpect{}
	seen := map[string]bool{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		if seen[k.Value] {
			p.add(k, path+"."+k.Value, "duplicate path")
			continue
		}
		seen[k.Value] = true
		if k.Value == "body_file" {
			name, ok := p.str(v, path+".body_file")
			if !ok {
				continue
			}
			be.File = name
			b, err := os.ReadFile(filepath.Join(p.dir, name))
			if err != nil {
				p.add(v, path+".body_file", err.Error())
				continue
			}
			var buf bytes.Buffer
			if err := json.Compact(&buf, b); err != nil {
				p.add(v, path+".body_file", fmt.Sprintf("%s: not JSON: %v", name, err))
				continue
			}
			be.Want = buf.Bytes()
			continue
		}
		if k.Value == "" || strings.HasPrefix(k.Value, ".") || strings.HasSuffix(k.Value, ".") || strings.Contains(k.Value, "..") {
			p.add(k, path, fmt.Sprintf("invalid body path %q (want dotted field names like data.keyword1.value)", k.Value))
			continue
		}
		want, err := jsonValue(v)
		if err != nil {
			p.add(v, path+"."+k.Value, err.Error())
			continue
		}
		be.Fields = append(be.Fields, FieldExpect{Path: k.Value, Want: want, Line: k.Line})
	}
	return be
}

var decimalRE = regexp.MustCompile(`^-?(0|[1-9][0-9]*)$`)

// jsonValue converts a YAML node to the value encoding/json would decode from the equivalent
// JSON (with UseNumber for integers), so YAML events decode exactly like JSON ones.
func jsonValue(n *yaml.Node) (any, error) {
	n = deref(n)
	switch n.Kind {
	case yaml.MappingNode:
		m := make(map[string]any, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k := n.Content[i]
			if k.Kind != yaml.ScalarNode || (k.Tag != "!!str" && k.Tag != "!!int") {
				return nil, fmt.Errorf("line %d: key %q: want a string key", k.Line, k.Value)
			}
			v, err := jsonValue(n.Content[i+1])
			if err != nil {
				return nil, err
			}
			m[k.Value] = v
		}
		return m, nil
	case yaml.SequenceNode:
		l := make([]any, 0, len(n.Content))
		for _, e := range n.Content {
			v, err := jsonValue(e)
			if err != nil {
				return nil, err
			}
			l = append(l, v)
		}
		return l, nil
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return nil, nil
		case "!!str", "!!timestamp", "!!binary":
			// Timestamps stay text: events carry times as RFC 3339 strings.
			return n.Value, nil
		case "!!bool":
			var b bool
			err := n.Decode(&b)
			return b, err
		case "!!int":
			if decimalRE.MatchString(n.Value) {
				return json.Number(n.Value), nil
			}
			var i int64
			if err := n.Decode(&i); err != nil {
				return nil, fmt.Errorf("line %d: %v", n.Line, err)
			}
			return json.Number(strconv.FormatInt(i, 10)), nil
		case "!!float":
			var f float64
			if err := n.Decode(&f); err != nil {
				return nil, fmt.Errorf("line %d: %v", n.Line, err)
			}
			if _, err := json.Marshal(f); err != nil {
				return nil, fmt.Errorf("line %d: %s has no JSON form", n.Line, n.Value)
			}
			// Keep it a float: 1.0 written as "1" would decode as an int, and the same event from
			// Kafka ({"x": 1.0}) decodes as a float (x % 2 fails on one and not the other).
			s := strconv.FormatFloat(f, 'g', -1, 64)
			if !strings.ContainsAny(s, ".eE") {
				s += ".0"
			}
			return json.Number(s), nil
		}
	}
	return nil, fmt.Errorf("line %d: unsupported YAML value %q", n.Line, n.Value)
}

// Run evaluates every case against set, in file order.
func (f *Fixture) Run(set *rules.Set) []Result {
	known := map[string]bool{}
	for _, r := range set.Rules {
		known[r.Name] = true
	}
	out := make([]Result, 0, len(f.Cases))
	for _, c := range f.Cases {
		res := Result{File: f.File, Name: c.Name, Line: c.Line}
		var unknown []string
		for _, ref := range c.ruleRefs {
			if !known[ref.name] && !slices.Contains(unknown, ref.name) {
				unknown = append(unknown, ref.name)
				res.Failures = append(res.Failures, fmt.Sprintf("line %d: no rule %q in the rule set", ref.line, ref.name))
			}
		}
		if len(unknown) == 0 {
			res.Failures = c.check(set.Evaluate(c.Event, c.Meta, nil))
		}
		out = append(out, res)
	}
	return out
}

// check compares notifications with the expectations; it returns one message per difference.
func (c *Case) check(notes []rules.Notification) []string {
	var fails []string
	failf := func(format string, a ...any) { fails = append(fails, fmt.Sprintf(format, a...)) }
	byRule := map[string]rules.Notification{}
	var matched []string
	for _, n := range notes {
		if n.WhenErr {
			// The processor treats a failing `when` as no match; a fixture should not pass
			// silently over one, so it is a failure unless listed under rejected.
			if want, ok := c.Rejected[n.Rule.Name]; !ok || !strings.Contains(n.Err.Error(), want) {
				failf("%s: %v", n.Rule.Name, n.Err)
			}
			continue
		}
		byRule[n.Rule.Name] = n
		matched = append(matched, n.Rule.Name)
	}
	if c.Matched != nil {
		want := slices.Sorted(slices.Values(c.Matched))
		got := slices.Sorted(slices.Values(matched))
		if !slices.Equal(want, got) {
			failf("matched %s, want %s", list(got), list(want))
		}
	}
	for _, name := range matched {
		n := byRule[name]
		want, expectRejected := c.Rejected[name]
		switch {
		case n.Err != nil && !expectRejected:
			failf("%s: rejected: %v", name, n.Err)
		case n.Err != nil && !strings.Contains(n.Err.Error(), want):
			failf("%s: rejected with %q, want an error containing %q", name, n.Err.Error(), want)
		case n.Err == nil && expectRejected:
			failf("%s: not rejected, want a rejection containing %q (body %s)", name, want, n.Body)
		}
	}
	for _, name := range sortedKeys(c.Rejected) {
		if _, ok := byRule[name]; !ok && !c.whenErr(notes, name) {
			failf("%s: did not match, want it rejected", name)
		}
	}
	for _, name := range sortedKeys(c.Bodies) {
		n, ok := byRule[name]
		switch {
		case !ok:
			failf("%s: did not match, want a body", name)
		case n.Err == nil:
			fails = append(fails, c.Bodies[name].check(name, n.Body)...)
		}
	}
	return fails
}

func (c *Case) whenErr(notes []rules.Notification, rule string) bool {
	return slices.ContainsFunc(notes, func(n rules.Notification) bool { return n.WhenErr && n.Rule.Name == rule })
}

func (be *BodyExpect) check(rule string, body []byte) []string {
	var fails []string
	if be.Want != nil && !bytes.Equal(be.Want, body) {
		fails = append(fails, fmt.Sprintf("%s: body differs from %s: got %s", rule, be.File, body))
	}
	if len(be.Fields) == 0 {
		return fails
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	var doc any
	if err := dec.Decode(&doc); err != nil {
		return append(fails, fmt.Sprintf("%s: body is not JSON: %v", rule, err))
	}
	for _, f := range be.Fields {
		got, ok := lookup(doc, f.Path)
		switch {
		case f.Want == nil && ok:
			fails = append(fails, fmt.Sprintf("%s: %s = %s, want it absent", rule, f.Path, jsonText(got)))
		case f.Want == nil:
		case !ok:
			fails = append(fails, fmt.Sprintf("%s: %s is absent, want %s", rule, f.Path, jsonText(f.Want)))
		case jsonText(got) != jsonText(f.Want):
			msg := fmt.Sprintf("%s: %s = %s, want %s", rule, f.Path, jsonText(got), jsonText(f.Want))
			if s, isStr := got.(string); isStr && s == fmt.Sprint(f.Want) {
				msg += " (WeChat fields are strings: quote the value in the fixture)"
			}
			fails = append(fails, msg)
		}
	}
	return fails
}

func lookup(doc any, path string) (any, bool) {
	cur := doc
	for _, k := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil, false
		}
		if cur, ok = m[k]; !ok {
			return nil, false
		}
	}
	return cur, true
}

// jsonText encodes v canonically (map keys sorted, no HTML escaping) for comparison and messages.
func jsonText(v any) string {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return fmt.Sprint(v)
	}
	return strings.TrimSuffix(buf.String(), "\n")
}

func list(names []string) string {
	if len(names) == 0 {
		return "[]"
	}
	return "[" + strings.Join(names, ", ") + "]"
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Discover resolves what `wxnotify test PATH` runs: for a directory, its rules and every fixture
// in it; for a fixture file, the rules in its directory and that fixture; for a rule file, that
// file and its sibling fixture (orders.yaml -> orders_test.yaml).
func Discover(path string) (rulesPath string, fixtures []string, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", nil, err
	}
	switch {
	case fi.IsDir():
		rulesPath = path
		fixtures, err = Files(path)
	case IsFixture(filepath.Base(path)):
		rulesPath, fixtures = filepath.Dir(path), []string{path}
	default:
		ext := filepath.Ext(path)
		sibling := strings.TrimSuffix(path, ext) + "_test" + ext
		if _, serr := os.Stat(sibling); serr == nil {
			fixtures = []string{sibling}
		}
		rulesPath = path
	}
	if err == nil && len(fixtures) == 0 {
		err = fmt.Errorf("%s: no fixtures (*_test.yaml) found", path)
	}
	return rulesPath, fixtures, err
}
