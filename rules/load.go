package rules

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"
	"go.yaml.in/yaml/v3"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// exprCompiler compiles expressions with the set's options and notes whether any reads kafka
// (so Evaluate only copies Kafka metadata, including the key bytes, when someone looks).
type exprCompiler struct {
	opts      []expr.Option
	usesKafka bool
}

func (c *exprCompiler) compile(src string, asBool bool) (*vm.Program, error) {
	opts := c.opts
	if asBool {
		opts = append(slices.Clip(opts), expr.AsBool())
	}
	p, err := expr.Compile(src, opts...)
	if err != nil {
		return nil, err
	}
	if ast.Find(p.Node(), func(n ast.Node) bool {
		id, ok := n.(*ast.IdentifierNode)
		return ok && id.Value == "kafka"
	}) != nil {
		c.usesKafka = true
	}
	return p, nil
}

// fileParser turns one file into rules, collecting problems as it goes rather than stopping
// at the first.
type fileParser struct {
	name     string
	src      []byte
	lines    []string
	c        *exprCompiler
	opts     *Options
	zone     *time.Location
	problems []Problem
}

func (p *fileParser) add(r *Rule, n *yaml.Node, field, msg string) {
	pr := Problem{File: p.name, Field: field, Msg: msg, Line: 1, Col: 1}
	if r != nil {
		pr.Rule = r.Name
	}
	if n != nil {
		pr.Line, pr.Col = n.Line, n.Column
	}
	p.problems = append(p.problems, pr)
}

func (p *fileParser) addAt(r *Rule, line, col int, field, msg string) {
	p.problems = append(p.problems, Problem{File: p.name, Line: line, Col: col, Rule: r.Name, Field: field, Msg: msg})
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

func (p *fileParser) parse() []*Rule {
	defer p.clampPositions()
	// A decoder, not yaml.Unmarshal, which reads the first document and ignores the rest of the
	// file: rules after a "---" would be dropped without a word.
	dec := yaml.NewDecoder(bytes.NewReader(p.src))
	var doc, next yaml.Node
	if err := dec.Decode(&doc); err != nil && err != io.EOF {
		p.yamlError(err)
		return nil
	}
	if err := dec.Decode(&next); err != nil && err != io.EOF {
		p.yamlError(err)
		return nil
	} else if err == nil {
		p.add(nil, &next, "", "a second YAML document (a rule file is one document: put every rule in its rules: list)")
		return nil
	}
	if len(doc.Content) == 0 {
		p.add(nil, nil, "", "empty file (want a rules: list)")
		return nil
	}
	root := deref(doc.Content[0])
	if root.Kind != yaml.MappingNode {
		p.add(nil, root, "", "want a mapping with a rules: list, got "+describeNode(root))
		return nil
	}
	var list *yaml.Node
	for i := 0; i+1 < len(root.Content); i += 2 {
		k, v := root.Content[i], deref(root.Content[i+1])
		if k.Value != "rules" {
			p.add(nil, k, k.Value, "unknown field (want rules)")
			continue
		}
		if list != nil {
			p.add(nil, k, k.Value, "duplicate field")
			continue
		}
		list = v
	}
	if list == nil {
		p.add(nil, root, "rules", "missing")
		return nil
	}
	if list.Kind == yaml.ScalarNode && list.Tag == "!!null" {
		return nil
	}
	if list.Kind != yaml.SequenceNode {
		p.add(nil, list, "rules", "want a list of rules, got "+describeNode(list))
		return nil
	}
	p.lines = strings.Split(string(p.src), "\n")
	var rules []*Rule
	for _, n := range list.Content {
		// Broken rules are kept too: the duplicate-name check needs them, and any problem
		// fails the whole load anyway.
		if r := p.parseRule(deref(n)); r != nil {
			rules = append(rules, r)
		}
	}
	return rules
}

func (p *fileParser) yamlError(err error) {
	line, msg := 1, strings.TrimPrefix(err.Error(), "yaml: ")
	if m := yamlLineRE.FindStringSubmatch(err.Error()); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	p.problems = append(p.problems, Problem{File: p.name, Line: line, Col: 1, Msg: "invalid YAML: " + msg})
}

// clampPositions moves a problem positioned past the end of the file to the end of the file:
// yaml places the null document of a file holding just "---" on the line after it.
func (p *fileParser) clampPositions() {
	line, col := endOfFile(p.src)
	for i := range p.problems {
		if pr := &p.problems[i]; pr.Line > line || pr.Line == line && pr.Col > col {
			pr.Line, pr.Col = line, col
		}
	}
}

// endOfFile is the position just past the last character of src, counted as yaml counts: lines
// end at \r\n, \r, \n, U+0085, U+2028 or U+2029, columns are runes.
func endOfFile(src []byte) (line, col int) {
	line, col = 1, 1
	for i := 0; i < len(src); {
		r, size := utf8.DecodeRune(src[i:])
		switch r {
		case '\r', '\n', '\u0085', '\u2028', '\u2029':
			if r == '\r' && i+1 < len(src) && src[i+1] == '\n' {
				size = 2
			}
			line, col = line+1, 1
		default:
			col++
		}
		i += size
	}
	return line, col
}

func deref(n *yaml.Node) *yaml.Node {
	for n != nil && n.Kind == yaml.AliasNode {
		n = n.Alias
	}
	return n
}

func describeNode(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "null"
		case "!!int", "!!float":
			return fmt.Sprintf("number %s (quote it: %q)", n.Value, n.Value)
		case "!!bool":
			return fmt.Sprintf("bool %s (quote it: %q)", n.Value, n.Value)
		case "!!str":
			return fmt.Sprintf("string %q", n.Value)
		}
		return fmt.Sprintf("%s %s (quote it: %q)", strings.TrimPrefix(n.Tag, "!!"), n.Value, n.Value)
	}
	return "an unexpected YAML node"
}

var ruleKeys = []string{"name", "description", "when", "account", "api", "message",
	"retry_on_timeout", "truncate", "dry_run", "expire_after", "dedupe", "throttle", "quiet_hours", "on_daily_quota"}

// mapping collects a mapping's values by key, reporting unknown and duplicate keys.
func (p *fileParser) mapping(r *Rule, n *yaml.Node, prefix string, known []string) (vals, keys map[string]*yaml.Node) {
	vals, keys = map[string]*yaml.Node{}, map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		field := prefix + k.Value
		if !slices.Contains(known, k.Value) {
			p.add(r, k, field, "unknown field (known: "+strings.Join(known, ", ")+")")
			continue
		}
		if prev, dup := keys[k.Value]; dup {
			p.add(r, k, field, fmt.Sprintf("duplicate field (first at line %d)", prev.Line))
			continue
		}
		vals[k.Value], keys[k.Value] = v, k
	}
	return vals, keys
}

func (p *fileParser) parseRule(n *yaml.Node) *Rule {
	r := &Rule{File: p.name, Line: n.Line}
	if n.Kind != yaml.MappingNode {
		p.add(r, n, "", "want a rule (a mapping), got "+describeNode(n))
		return nil
	}
	// The name first, so every other problem can say which rule it is in.
	for i := 0; i+1 < len(n.Content); i += 2 {
		if v := deref(n.Content[i+1]); n.Content[i].Value == "name" && v.Kind == yaml.ScalarNode && v.Tag == "!!str" {
			r.Name, r.nameLine, r.nameCol = v.Value, v.Line, v.Column
			break
		}
	}
	vals, _ := p.mapping(r, n, "", ruleKeys)
	for _, k := range []string{"name", "when", "account", "api", "message"} {
		if vals[k] == nil {
			p.add(r, n, k, "missing")
		}
	}
	if v := vals["name"]; v != nil {
		if s, ok := p.str(r, "name", v); ok && s == "" {
			p.add(r, v, "name", "empty")
		}
	}
	if v := vals["description"]; v != nil {
		r.Description, _ = p.str(r, "description", v)
	}
	if v := vals["when"]; v != nil {
		if s, ok := p.str(r, "when", v); ok {
			r.When = s
			if prog := p.compileExpr(r, v, "when", s, 0, true); prog != nil {
				r.when = prog
			}
		}
	}
	if v := vals["account"]; v != nil {
		if s, ok := p.str(r, "account", v); ok {
			r.Account = s
			if s == "" {
				p.add(r, v, "account", "empty")
			} else if p.opts.Accounts != nil && !slices.Contains(p.opts.Accounts, s) {
				p.add(r, v, "account", fmt.Sprintf("unknown account %q (have: %s)", s, strings.Join(p.opts.Accounts, ", ")))
			}
		}
	}
	var api *wxapi.API
	if v := vals["api"]; v != nil {
		if s, ok := p.str(r, "api", v); ok {
			r.API = s
			if api, ok = wxapi.Lookup(s); !ok {
				p.add(r, v, "api", fmt.Sprintf("unknown api %q (known: %s)", s, strings.Join(wxapi.Names(), ", ")))
			}
		}
	}
	r.Truncate = p.boolean(r, vals, "truncate") // before the message: static values are checked with it
	if v := vals["message"]; v != nil && api != nil {
		mc := &msgCompiler{p: p, r: r, api: api}
		mc.body(v)
		r.ops = mc.b.done()
	}
	r.RetryOnTimeout = p.boolean(r, vals, "retry_on_timeout")
	r.DryRun = p.boolean(r, vals, "dry_run")
	if v := vals["expire_after"]; v != nil {
		r.ExpireAfter = p.duration(r, v, "expire_after")
	}
	if v := vals["dedupe"]; v != nil {
		p.parseDedupe(r, v)
	}
	if v := vals["throttle"]; v != nil {
		p.parseThrottle(r, v)
	}
	if v := vals["quiet_hours"]; v != nil {
		p.parseQuietHours(r, v)
	}
	r.OnDailyQuota = DailyQuotaFail
	if v := vals["on_daily_quota"]; v != nil {
		if s, ok := p.str(r, "on_daily_quota", v); ok {
			switch s {
			case DailyQuotaFail, DailyQuotaDelay:
				r.OnDailyQuota = s
			default:
				p.add(r, v, "on_daily_quota", fmt.Sprintf("want fail or delay, got %q", s))
			}
		}
	}
	return r
}

func (p *fileParser) str(r *Rule, field string, v *yaml.Node) (string, bool) {
	if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
		p.add(r, v, field, "want a string, got "+describeNode(v))
		return "", false
	}
	return v.Value, true
}

func (p *fileParser) boolean(r *Rule, vals map[string]*yaml.Node, field string) bool {
	v := vals[field]
	if v == nil {
		return false
	}
	if v.Kind != yaml.ScalarNode || v.Tag != "!!bool" {
		p.add(r, v, field, "want true or false, got "+describeNode(v))
		return false
	}
	return v.Value == "true" || v.Value == "True" || v.Value == "TRUE"
}

func (p *fileParser) duration(r *Rule, v *yaml.Node, field string) time.Duration {
	if v.Kind != yaml.ScalarNode {
		p.add(r, v, field, "want a duration like 90s, 15m or 2h, got "+describeNode(v))
		return 0
	}
	d, err := time.ParseDuration(v.Value)
	if err != nil {
		p.add(r, v, field, fmt.Sprintf("invalid duration %q (want a Go duration like 90s, 15m or 2h)", v.Value))
		return 0
	}
	if d <= 0 {
		p.add(r, v, field, fmt.Sprintf("duration %q must be positive", v.Value))
		return 0
	}
	return d
}

func (p *fileParser) sub(r *Rule, v *yaml.Node, field string, known []string) map[string]*yaml.Node {
	if v.Kind != yaml.MappingNode {
		p.add(r, v, field, "want a mapping, got "+describeNode(v))
		return nil
	}
	vals, _ := p.mapping(r, v, field+".", known)
	return vals
}

func (p *fileParser) require(r *Rule, parent *yaml.Node, vals map[string]*yaml.Node, field string, keys ...string) bool {
	ok := true
	for _, k := range keys {
		if vals[k] == nil {
			p.add(r, parent, field+"."+k, "missing")
			ok = false
		}
	}
	return ok
}

func (p *fileParser) parseDedupe(r *Rule, v *yaml.Node) {
	vals := p.sub(r, v, "dedupe", []string{"key", "window"})
	if vals == nil || !p.require(r, v, vals, "dedupe", "key", "window") {
		return
	}
	d := &Dedupe{Window: p.duration(r, vals["window"], "dedupe.window")}
	if s, ok := p.str(r, "dedupe.key", vals["key"]); ok {
		d.Key = s
		r.dedupe = p.keyExpr(r, vals["key"], "dedupe.key", s)
	}
	r.Dedupe = d
}

func (p *fileParser) parseThrottle(r *Rule, v *yaml.Node) {
	vals := p.sub(r, v, "throttle", []string{"max", "per", "key"})
	if vals == nil || !p.require(r, v, vals, "throttle", "max", "per") {
		return
	}
	t := &Throttle{Per: p.duration(r, vals["per"], "throttle.per")}
	mv := vals["max"]
	if n, err := strconv.Atoi(mv.Value); mv.Kind != yaml.ScalarNode || mv.Tag != "!!int" || err != nil || n <= 0 {
		p.add(r, mv, "throttle.max", "want a positive integer, got "+describeNode(mv))
	} else {
		t.Max = n
	}
	if kv := vals["key"]; kv != nil {
		if s, ok := p.str(r, "throttle.key", kv); ok {
			t.Key = s
			r.throttle = p.keyExpr(r, kv, "throttle.key", s)
		}
	}
	r.Throttle = t
}

func (p *fileParser) parseQuietHours(r *Rule, v *yaml.Node) {
	vals := p.sub(r, v, "quiet_hours", []string{"start", "end", "zone", "action"})
	if vals == nil || !p.require(r, v, vals, "quiet_hours", "start", "end", "action") {
		return
	}
	q := &QuietHours{Zone: p.zone}
	ok := true
	clock := func(field string) time.Duration {
		n := vals[field]
		s := n.Value
		if n.Kind == yaml.ScalarNode && len(s) == 5 && s[2] == ':' {
			h, err1 := strconv.Atoi(s[:2])
			m, err2 := strconv.Atoi(s[3:])
			if err1 == nil && err2 == nil && h >= 0 && h < 24 && m >= 0 && m < 60 {
				return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute
			}
		}
		p.add(r, n, "quiet_hours."+field, fmt.Sprintf("invalid time of day %q (want HH:MM, 00:00 to 23:59)", s))
		ok = false
		return 0
	}
	q.Start, q.End = clock("start"), clock("end")
	if ok && q.Start == q.End {
		p.add(r, v, "quiet_hours", "start and end are equal (empty window)")
		ok = false
	}
	if zv := vals["zone"]; zv != nil {
		if s, sok := p.str(r, "quiet_hours.zone", zv); !sok {
			ok = false
		} else if loc, err := time.LoadLocation(s); err != nil || s == "" || s == "Local" {
			p.add(r, zv, "quiet_hours.zone", fmt.Sprintf("unknown time zone %q (want an IANA name like Asia/Shanghai)", s))
			ok = false
		} else {
			q.Zone = loc
		}
	}
	av := vals["action"]
	if av.Kind != yaml.ScalarNode || (av.Value != QuietSkip && av.Value != QuietDelay) {
		p.add(r, av, "quiet_hours.action", fmt.Sprintf("want skip or delay, got %q", av.Value))
		ok = false
	}
	q.Action = av.Value
	if ok {
		r.QuietHours = q
	}
}

// keyExpr compiles a dedupe or throttle key: an expression, or a template if it contains ${.
func (p *fileParser) keyExpr(r *Rule, v *yaml.Node, field, s string) *keyExpr {
	if strings.TrimSpace(s) == "" {
		p.add(r, v, field, "empty")
		return nil
	}
	if !strings.Contains(s, "${") {
		prog := p.compileExpr(r, v, field, s, 0, false)
		if prog == nil {
			return nil
		}
		if t := prog.Node().Type(); t != nil && !textType(t) {
			p.add(r, v, field, fmt.Sprintf("%s gives %s, want a string", s, t))
			return nil
		}
		return &keyExpr{field: field, parts: []part{{prog: prog, src: s}}}
	}
	parts, ok := p.compileTemplate(r, v, field, nil)
	if !ok {
		return nil
	}
	return &keyExpr{field: field, parts: parts}
}

// compileExpr compiles src, found at byte offset off of node v's value, reporting a problem
// positioned at the offending character when it can be mapped back to the file.
func (p *fileParser) compileExpr(r *Rule, v *yaml.Node, field, src string, off int, asBool bool) *vm.Program {
	prog, err := p.c.compile(src, asBool)
	if err != nil {
		var fe *file.Error
		msg := err.Error()
		if errors.As(err, &fe) {
			msg = fe.Message
		}
		line, col := p.position(v, off, fe)
		p.addAt(r, line, col, field, msg)
		return nil
	}
	return prog
}

// position maps the rune offset of an expression error (fe, relative to the expression that
// starts at byte off of v.Value) back to the file. It is exact for single-line plain scalars
// and for quoted ones without escapes; otherwise it falls back to the start of the scalar.
func (p *fileParser) position(v *yaml.Node, off int, fe *file.Error) (int, int) {
	if strings.Contains(v.Value, "\n") || (fe != nil && fe.Line > 1) || v.Line-1 >= len(p.lines) {
		return v.Line, v.Column
	}
	var quote string
	switch v.Style {
	case 0:
	case yaml.DoubleQuotedStyle:
		quote = `"`
	case yaml.SingleQuotedStyle:
		quote = `'`
	default:
		return v.Line, v.Column
	}
	line := p.lines[v.Line-1]
	// yaml columns count runes.
	i, col := 0, 1
	for i < len(line) && col < v.Column {
		_, size := utf8.DecodeRuneInString(line[i:])
		i += size
		col++
	}
	if !strings.HasPrefix(line[i:], quote+v.Value) {
		return v.Line, v.Column // escapes or folding: offsets do not map
	}
	c := v.Column + len(quote) + utf8.RuneCountInString(v.Value[:off])
	if fe != nil {
		c += fe.Column
	}
	return v.Line, c
}

// compileTemplate compiles a message string into parts. Literal parts keep their raw text in
// src and their JSON-escaped bytes in lit.
func (p *fileParser) compileTemplate(r *Rule, v *yaml.Node, field string, f *wxapi.Field) ([]part, bool) {
	raw, serr := scanTemplate(v.Value)
	if serr != nil {
		line, col := p.position(v, serr.off, nil)
		p.addAt(r, line, col, field, serr.msg)
		return nil, false
	}
	parts := make([]part, 0, len(raw))
	ok := true
	for _, rp := range raw {
		if !rp.isExpr {
			parts = append(parts, part{lit: appendEscaped(nil, rp.lit), src: rp.lit})
			continue
		}
		prog := p.compileExpr(r, v, field, rp.expr, rp.off, false)
		if prog == nil {
			ok = false
			continue
		}
		if t := prog.Node().Type(); t != nil && !textType(t) && (f == nil || f.Kind == wxapi.String) {
			p.add(r, v, field, fmt.Sprintf("${%s} gives %s, want a string", rp.expr, t))
			ok = false
			continue
		}
		parts = append(parts, part{prog: prog, src: strings.TrimSpace(rp.expr)})
	}
	return parts, ok
}

var timeType = reflect.TypeFor[time.Time]()

// textType reports whether values of t can be written as text (appendText).
func textType(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Interface, reflect.String, reflect.Bool,
		reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return true
	}
	return t == timeType
}

// opBuilder accumulates render ops, merging adjacent static bytes.
type opBuilder struct {
	ops     []op
	pending []byte
}

func (b *opBuilder) lit(s string) { b.pending = append(b.pending, s...) }

func (b *opBuilder) add(o op) {
	b.flush()
	b.ops = append(b.ops, o)
}

func (b *opBuilder) flush() {
	if len(b.pending) > 0 {
		b.ops = append(b.ops, op{kind: opStatic, static: b.pending})
		b.pending = nil
	}
}

func (b *opBuilder) done() []op {
	b.flush()
	return slices.Clip(b.ops)
}

// msgCompiler checks a rule's message against its API and compiles it to render ops.
type msgCompiler struct {
	p   *fileParser
	r   *Rule
	api *wxapi.API
	b   opBuilder
}

var dataEntry = wxapi.Field{Kind: wxapi.Object, Fields: []wxapi.Field{
	{Name: "value", Kind: wxapi.String, Required: true},
	{Name: "color", Kind: wxapi.String},
}}

func (m *msgCompiler) body(v *yaml.Node) {
	if v.Kind != yaml.MappingNode {
		m.p.add(m.r, v, "message", "want a mapping (the "+m.api.Name+" request body), got "+describeNode(v))
		return
	}
	m.object(v, &m.api.Body, "message", m.api.Name)
}

func (m *msgCompiler) object(n *yaml.Node, f *wxapi.Field, path, owner string) {
	m.b.lit("{")
	seen := map[string]int{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], deref(n.Content[i+1])
		fpath := path + "." + k.Value
		child, ok := f.Child(k.Value)
		if !ok {
			m.p.add(m.r, k, fpath, fmt.Sprintf("not a field of %s (fields: %s)", owner, fieldNames(f)))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			m.p.add(m.r, k, fpath, fmt.Sprintf("duplicate field (first at line %d)", line))
			continue
		}
		if len(seen) > 0 {
			m.b.lit(",")
		}
		seen[k.Value] = k.Line
		m.b.lit(string(appendQuoted(nil, k.Value)) + ":")
		m.value(v, child, fpath, owner)
	}
	for _, c := range f.Fields {
		if _, ok := seen[c.Name]; c.Required && !ok {
			m.p.add(m.r, n, path+"."+c.Name, fmt.Sprintf("missing (%s requires it)", owner))
		}
	}
	if f == &m.api.Body {
		m.bodyExtras(n, seen)
	}
	m.b.lit("}")
}

// bodyExtras checks what the catalog cannot say field by field and adds generated fields.
func (m *msgCompiler) bodyExtras(n *yaml.Node, seen map[string]int) {
	// uniformMessage.send: the template lives in one of two optional halves; one must be there.
	var halves []string
	for _, tp := range m.api.TemplateIDPaths {
		if len(tp) > 1 {
			halves = append(halves, tp[0])
		}
	}
	if len(halves) > 0 && !slices.ContainsFunc(halves, func(h string) bool { _, ok := seen[h]; return ok }) {
		m.p.add(m.r, n, "message", fmt.Sprintf("%s needs %s", m.api.Name, strings.Join(halves, " or ")))
	}
	// template.send: an idempotency key derived from the event and the rule, so a re-send after
	// a crash is deduplicated by WeChat.
	if idf := m.api.IdempotencyField; idf != "" {
		if _, ok := seen[idf]; !ok {
			if len(seen) > 0 {
				m.b.lit(",")
			}
			m.b.lit(string(appendQuoted(nil, idf)) + `:"`)
			m.b.add(op{kind: opClientMsgID})
			m.b.lit(`"`)
		}
	}
}

func fieldNames(f *wxapi.Field) string {
	names := make([]string, len(f.Fields))
	for i, c := range f.Fields {
		names[i] = c.Name
	}
	return strings.Join(names, ", ")
}

func (m *msgCompiler) value(v *yaml.Node, f *wxapi.Field, path, owner string) {
	if f.Kind != wxapi.String {
		if v.Kind == yaml.ScalarNode && v.Tag == "!!str" && isSingleExpr(v.Value) {
			if parts, ok := m.p.compileTemplate(m.r, v, path, f); ok {
				m.b.add(op{kind: opValue, parts: parts, path: path, field: f})
			}
			return
		}
		if v.Kind != yaml.MappingNode {
			m.p.add(m.r, v, path, "want a mapping, got "+describeNode(v))
			return
		}
		if f.Kind == wxapi.Object {
			m.object(v, f, path, owner)
		} else {
			m.data(v, path)
		}
		return
	}
	if v.Kind != yaml.ScalarNode || v.Tag != "!!str" {
		m.p.add(m.r, v, path, "want a string, got "+describeNode(v))
		return
	}
	parts, ok := m.p.compileTemplate(m.r, v, path, f)
	if !ok {
		return
	}
	capture := m.captureBits(path)
	vtype := m.valueType(path)
	if len(parts) <= 1 && (len(parts) == 0 || parts[0].prog == nil) {
		s := ""
		if len(parts) == 1 {
			s = parts[0].src
		}
		switch {
		case s == "" && f.Required:
			m.p.add(m.r, v, path, fmt.Sprintf("empty (%s requires it)", owner))
		case len(f.Enum) > 0 && !slices.Contains(f.Enum, s):
			m.p.add(m.r, v, path, fmt.Sprintf("%q is not one of %s", s, strings.Join(f.Enum, ", ")))
		case vtype != "":
			if t, err := checkValue(vtype, s, m.r.Truncate); err != nil {
				m.p.add(m.r, v, path, err.Error())
			} else {
				s = t
			}
		}
		for c := 0; c < 3; c++ {
			if capture&(1<<c) != 0 {
				m.r.staticCaptures[c] = s
			}
		}
		m.b.lit(string(appendQuoted(nil, s)))
		return
	}
	m.b.add(op{kind: opString, parts: parts, path: path, field: f, capture: capture, vtype: vtype,
		plain: capture != 0 || len(f.Enum) > 0 || vtype != ""})
}

// valueType is the keyword type whose value rules apply at path ("message.data.thing3.value"
// -> "thing"), or "" when the API does not check typed values or the keyword names no type.
func (m *msgCompiler) valueType(path string) string {
	if !m.api.TypedValues {
		return ""
	}
	kw, ok := strings.CutPrefix(path, "message.data.")
	if !ok {
		return ""
	}
	if kw, ok = strings.CutSuffix(kw, ".value"); !ok || strings.Contains(kw, ".") {
		return ""
	}
	typ := wxapi.KeywordType(kw)
	if typ == "" && m.api.IdempotencyField != "" { // template.send: the Official Account template
		typ = wxapi.OADisplayType
	}
	return typ
}

func (m *msgCompiler) captureBits(path string) uint8 {
	rel := strings.TrimPrefix(path, "message.")
	var bits uint8
	if rel == "touser" {
		bits |= capToUser
	}
	for i, tp := range m.api.TemplateIDPaths {
		if i < 2 && rel == strings.Join(tp, ".") {
			bits |= capTemplate0 << i
		}
	}
	return bits
}

func (m *msgCompiler) data(v *yaml.Node, path string) {
	m.b.lit("{")
	seen := map[string]int{}
	for i := 0; i+1 < len(v.Content); i += 2 {
		k, e := v.Content[i], deref(v.Content[i+1])
		kpath := path + "." + k.Value
		if line, dup := seen[k.Value]; dup {
			m.p.add(m.r, k, kpath, fmt.Sprintf("duplicate keyword (first at line %d)", line))
			continue
		}
		if len(seen) > 0 {
			m.b.lit(",")
		}
		seen[k.Value] = k.Line
		m.b.lit(string(appendQuoted(nil, k.Value)) + ":")
		if e.Kind != yaml.MappingNode && !(e.Kind == yaml.ScalarNode && e.Tag == "!!str" && isSingleExpr(e.Value)) {
			m.p.add(m.r, e, kpath, "want a mapping like {value: \"...\"}, got "+describeNode(e))
			continue
		}
		m.value(e, &dataEntry, kpath, "a data entry")
	}
	m.b.lit("}")
}

// isSingleExpr reports whether s is exactly one ${...}.
func isSingleExpr(s string) bool {
	parts, err := scanTemplate(s)
	return err == nil && len(parts) == 1 && parts[0].isExpr
}
