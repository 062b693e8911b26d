package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr/file"
	"github.com/expr-lang/expr/vm"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Notification is what one matching rule made of one event.
type Notification struct {
	Rule *Rule
	// Body is the exact JSON to POST (nil when Err != nil).
	Body []byte
	// ToUser is the rendered touser.
	ToUser string
	// TemplateID is the template WeChat acts on (wxapi.API.TemplateID semantics: for
	// uniformMessage.send the weapp half if present, else the mp half).
	TemplateID string
	// DedupeKey and ThrottleKey are set when the rule has dedupe / throttle. ThrottleKey is the
	// ToUser when throttle.key is not set.
	DedupeKey, ThrottleKey string
	// Err, when non-nil, rejects the notification; it is a *FieldError naming the field.
	Err error
	// WhenErr says Err came from evaluating `when`, not from rendering.
	WhenErr bool
}

// FieldError is why a notification was rejected: the field (message.data.keyword4.value, when,
// dedupe.key), the expression and what went wrong with it.
type FieldError struct {
	Field string
	Expr  string
	// Nil is true when the expression evaluated to nil (or a parent of the path was missing).
	Nil bool
	Msg string
}

func (e *FieldError) Error() string {
	if e.Expr == "" {
		return e.Field + ": " + e.Msg
	}
	return e.Field + ": " + e.Expr + " " + e.Msg
}

// Explanation says whether a rule matched an event, and if not, why.
type Explanation struct {
	Rule    *Rule
	Matched bool
	// Reason is empty when Matched; else "when is false: <first false conjunct> (<event paths it
	// reads and their values>)" or "when failed: <error>".
	Reason string
	// Notification is the rendered result when Matched (its Err says why it would be rejected).
	Notification Notification
}

type opKind uint8

const (
	opStatic      opKind = iota // append static
	opString                    // a JSON string built from parts
	opValue                     // a single ${...} where the API wants an object: typed JSON
	opClientMsgID               // template.send's deterministic client_msg_id
)

const (
	capToUser = 1 << iota
	capTemplate0
	capTemplate1
)

// part is a piece of a string: pre-escaped literal bytes, or a compiled expression.
type part struct {
	lit  []byte // JSON-escaped, no quotes
	prog *vm.Program
	src  string
}

type op struct {
	kind    opKind
	static  []byte
	parts   []part
	path    string
	field   *wxapi.Field
	capture uint8
	// vtype is the keyword type whose value rules the value must meet ("" = none).
	vtype string
	// plain: the unescaped value is needed (captured, enum- or type-checked).
	plain bool
}

// state is the per-call scratch: a VM and an env reused across calls, so evaluating costs no
// allocation beyond the bodies it returns.
type state struct {
	vm   vm.VM
	env  exprEnv
	buf  []byte
	text []byte
	zone *time.Location
}

var statePool = sync.Pool{New: func() any { return new(state) }}

func (s *Set) getState(ev Event, meta Meta) *state {
	st := statePool.Get().(*state)
	st.zone = s.zone
	st.env.Event = ev.m
	if s.usesKafka {
		st.env.Kafka = kafkaEnv{Topic: meta.Topic, Partition: meta.Partition, Offset: meta.Offset, Key: string(meta.Key), Time: meta.Time}
	}
	return st
}

func putState(st *state) {
	st.env = exprEnv{}
	if cap(st.buf) > 64<<10 {
		st.buf = nil
	}
	statePool.Put(st)
}

func (st *state) run(p *vm.Program) (any, error) {
	return st.vm.Run(p, &st.env)
}

// Evaluate appends to dst one Notification per rule whose `when` is true for ev, and one with
// WhenErr for each rule whose `when` failed, in load order (files sorted by name, rules in file
// order). It is safe for concurrent use.
func (s *Set) Evaluate(ev Event, meta Meta, dst []Notification) []Notification {
	st := s.getState(ev, meta)
	defer putState(st)
	for _, r := range s.Rules {
		ok, err := r.match(st)
		if err != nil {
			dst = append(dst, Notification{Rule: r, Err: err, WhenErr: true})
			continue
		}
		if ok {
			dst = append(dst, r.render(st, meta))
		}
	}
	return dst
}

// Explain evaluates every rule against ev and says, for each, whether it matched and why not.
// It is meant for tooling (render -explain), not the hot path.
func (s *Set) Explain(ev Event, meta Meta) []Explanation {
	st := s.getState(ev, meta)
	defer putState(st)
	out := make([]Explanation, 0, len(s.Rules))
	for _, r := range s.Rules {
		x := Explanation{Rule: r}
		ok, err := r.match(st)
		switch {
		case err != nil:
			x.Reason = "when " + err.(*FieldError).Msg
		case !ok:
			x.Reason = "when is false" + r.whyFalse(s, st, ev)
		default:
			x.Matched = true
			x.Notification = r.render(st, meta)
		}
		out = append(out, x)
	}
	return out
}

func (r *Rule) match(st *state) (bool, error) {
	v, err := st.run(r.when)
	if err != nil {
		return false, &FieldError{Field: "when", Msg: "failed: " + exprMessage(err)}
	}
	b, _ := v.(bool)
	return b, nil
}

// exprMessage is the bare message of an expr error, without its source snippet.
func exprMessage(err error) string {
	var fe *file.Error
	if errors.As(err, &fe) {
		return fe.Message
	}
	return err.Error()
}

func (r *Rule) render(st *state, meta Meta) Notification {
	n := Notification{Rule: r}
	var captured [3]string
	copy(captured[:], r.staticCaptures[:])
	buf := st.buf[:0]
	var err error
	for i := range r.ops {
		o := &r.ops[i]
		switch o.kind {
		case opStatic:
			buf = append(buf, o.static...)
		case opString:
			var plain string
			buf, plain, err = o.appendString(st, buf, r.Truncate)
			if err != nil {
				break
			}
			for c := 0; c < 3; c++ {
				if o.capture&(1<<c) != 0 {
					captured[c] = plain
				}
			}
		case opValue:
			var v any
			v, err = st.run(o.parts[0].prog)
			if err == nil && v == nil {
				err = errNil
			}
			if err == nil {
				buf, err = appendValue(st, buf, v, o.field)
			}
			if err != nil {
				err = fieldError(o.path, o.parts[0].src, err)
			}
		case opClientMsgID:
			st.text = append(append(append(st.text[:0], meta.ID()...), '/'), r.Name...)
			sum := sha256.Sum256(st.text)
			buf = append(buf, "wxn-"...)
			buf = hex.AppendEncode(buf, sum[:12])
		}
		if err != nil {
			st.buf = buf
			n.Err = err
			return n
		}
	}
	st.buf = buf
	n.ToUser = captured[0]
	n.TemplateID = captured[1]
	if n.TemplateID == "" {
		n.TemplateID = captured[2]
	}
	if r.dedupe != nil {
		if n.DedupeKey, err = r.dedupe.eval(st); err != nil {
			n.Err = err
			return n
		}
	}
	if r.Throttle != nil {
		n.ThrottleKey = n.ToUser
		if r.throttle != nil {
			if n.ThrottleKey, err = r.throttle.eval(st); err != nil {
				n.Err = err
				return n
			}
		}
	}
	n.Body = slices.Clone(buf)
	return n
}

var errNil = errors.New("evaluated to nil")

// valueError is a value that cannot go where the template puts it.
type valueError string

func (e valueError) Error() string { return string(e) }

func fieldError(path, src string, err error) *FieldError {
	if err == errNil {
		return &FieldError{Field: path, Expr: src, Nil: true, Msg: "evaluated to nil"}
	}
	var fe *FieldError
	if errors.As(err, &fe) {
		return fe
	}
	var ve valueError
	if errors.As(err, &ve) {
		return &FieldError{Field: path, Expr: src, Msg: string(ve)}
	}
	msg := exprMessage(err)
	if isNilFetch(msg) {
		return &FieldError{Field: path, Expr: src, Nil: true, Msg: "evaluated to nil (" + msg + ")"}
	}
	return &FieldError{Field: path, Expr: src, Msg: "failed: " + msg}
}

// isNilFetch reports expr's "cannot fetch x from <nil>": a parent of the path is missing.
func isNilFetch(msg string) bool {
	const suffix = " from <nil>"
	return len(msg) > len(suffix) && msg[len(msg)-len(suffix):] == suffix
}

// appendString appends o as a JSON string and returns the unescaped value when o.plain. A value
// that breaks its keyword type's rules is rejected, or, for free text when the rule allows it,
// truncated with an ellipsis.
func (o *op) appendString(st *state, buf []byte, truncate bool) ([]byte, string, error) {
	buf = append(buf, '"')
	start := len(buf)
	plain := st.text[:0]
	defer func() { st.text = plain[:0] }()
	for i := range o.parts {
		p := &o.parts[i]
		if p.prog == nil {
			buf = append(buf, p.lit...)
			if o.plain {
				plain = append(plain, p.src...)
			}
			continue
		}
		v, err := st.run(p.prog)
		if err == nil && v == nil {
			err = errNil
		}
		if err != nil {
			return buf, "", fieldError(o.path, p.src, err)
		}
		if s, ok := v.(string); ok {
			buf = appendEscaped(buf, s)
			if o.plain {
				plain = append(plain, s...)
			}
			continue
		}
		n0 := len(plain)
		if plain, err = appendText(plain, v, st.zone); err != nil {
			return buf, "", fieldError(o.path, p.src, err)
		}
		buf = appendEscaped(buf, plain[n0:])
		if !o.plain {
			plain = plain[:n0]
		}
	}
	empty := len(buf) == start
	buf = append(buf, '"')
	if empty && o.field != nil && o.field.Required {
		return buf, "", &FieldError{Field: o.path, Expr: o.exprs(), Msg: `evaluated to "" (the field is required)`}
	}
	if !o.plain {
		return buf, "", nil
	}
	s := string(plain)
	if o.field != nil && len(o.field.Enum) > 0 && !slices.Contains(o.field.Enum, s) {
		return buf, "", &FieldError{Field: o.path, Expr: o.exprs(), Msg: fmt.Sprintf("evaluated to %q, not one of %v", s, o.field.Enum)}
	}
	if o.vtype != "" {
		t, err := checkValue(o.vtype, s, truncate)
		if err != nil {
			return buf, "", &FieldError{Field: o.path, Expr: o.exprs(), Msg: err.Error()}
		}
		if t != s {
			buf = append(appendEscaped(buf[:start], t), '"')
			s = t
		}
	}
	return buf, s, nil
}

// checkValue applies keyword type typ's value rules to s, the way WeChat answers 47003, so a
// bad value is rejected before it spends quota. With truncate, free text is cut to 20 characters
// with an ellipsis instead (for Official Account display text, which WeChat would cut silently).
func checkValue(typ, s string, truncate bool) (string, error) {
	if truncate {
		if t, ok := wxapi.TruncateValue(typ, s); ok && wxapi.ValidValue(typ, t) {
			return t, nil
		}
	}
	if wxapi.ValidValue(typ, s) {
		return s, nil
	}
	hint := ""
	if typ == "thing" || typ == "const" {
		hint = "; set truncate: true on the rule to shorten it with an ellipsis"
	}
	return s, valueError(fmt.Sprintf("%q (%d characters) is not a valid %s value: %s%s", s, utf8.RuneCountInString(s), typ, wxapi.ValueRule(typ), hint))
}

func (o *op) exprs() string {
	for _, p := range o.parts {
		if p.prog != nil {
			return p.src
		}
	}
	return ""
}

// keyExpr is a dedupe or throttle key: an expression, or a template when it contains ${.
type keyExpr struct {
	field string
	parts []part
}

func (k *keyExpr) eval(st *state) (string, error) {
	o := op{kind: opString, parts: k.parts, path: k.field, plain: true}
	_, s, err := o.appendString(st, st.buf[len(st.buf):], false)
	if err != nil {
		return "", err
	}
	if s == "" {
		return "", &FieldError{Field: k.field, Expr: o.exprs(), Msg: `evaluated to ""`}
	}
	return s, nil
}

// appendText appends v formatted for embedding in a string: strings as is, numbers in decimal,
// bools as true/false, times as RFC 3339 in zone. Objects, lists and nil are errors: they have
// no sensible text.
func appendText(b []byte, v any, zone *time.Location) ([]byte, error) {
	switch x := v.(type) {
	case string:
		return append(b, x...), nil
	case int:
		return strconv.AppendInt(b, int64(x), 10), nil
	case int64:
		return strconv.AppendInt(b, x, 10), nil
	case float64:
		return appendFloat(b, x)
	case bool:
		return strconv.AppendBool(b, x), nil
	case json.Number:
		return append(b, x...), nil
	case time.Time:
		return x.In(zone).AppendFormat(b, time.RFC3339), nil
	case time.Duration:
		return append(b, x.String()...), nil
	case nil:
		return b, errNil
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return strconv.AppendInt(b, rv.Int(), 10), nil
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return strconv.AppendUint(b, rv.Uint(), 10), nil
	case reflect.Float32:
		return appendFloat(b, rv.Float())
	case reflect.String:
		return append(b, rv.String()...), nil
	}
	return b, valueError(fmt.Sprintf("evaluated to %s, want a string", describe(v)))
}

func describe(v any) string {
	switch v.(type) {
	case map[string]any:
		return "an object"
	case []any:
		return "a list"
	}
	return fmt.Sprintf("%T", v)
}

func appendFloat(b []byte, f float64) ([]byte, error) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return b, valueError(fmt.Sprintf("evaluated to %v, not a JSON number", f))
	}
	if a := math.Abs(f); a != 0 && (a < 1e-6 || a >= 1e21) {
		return strconv.AppendFloat(b, f, 'g', -1, 64), nil
	}
	return strconv.AppendFloat(b, f, 'f', -1, 64), nil
}

// appendValue appends v as JSON where the API wants field (an object): only objects fit.
func appendValue(st *state, b []byte, v any, field *wxapi.Field) ([]byte, error) {
	if _, ok := v.(map[string]any); !ok && field != nil && field.Kind != wxapi.String {
		return b, valueError(fmt.Sprintf("evaluated to %s, want an object", describe(v)))
	}
	return appendJSON(b, v, st.zone)
}

// appendJSON encodes v as JSON without HTML escaping, map keys sorted.
func appendJSON(b []byte, v any, zone *time.Location) ([]byte, error) {
	switch x := v.(type) {
	case nil:
		return append(b, "null"...), nil
	case string:
		return appendQuoted(b, x), nil
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		b = append(b, '{')
		for i, k := range keys {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendQuoted(b, k)
			b = append(b, ':')
			var err error
			if b, err = appendJSON(b, x[k], zone); err != nil {
				return b, err
			}
		}
		return append(b, '}'), nil
	case []any:
		b = append(b, '[')
		for i, e := range x {
			if i > 0 {
				b = append(b, ',')
			}
			var err error
			if b, err = appendJSON(b, e, zone); err != nil {
				return b, err
			}
		}
		return append(b, ']'), nil
	case time.Time:
		return appendQuoted(b, x.In(zone).Format(time.RFC3339)), nil
	}
	if t, err := appendText(nil, v, zone); err == nil {
		if _, isStr := v.(string); !isStr && reflect.ValueOf(v).Kind() != reflect.String {
			return append(b, t...), nil
		}
		return appendQuoted(b, string(t)), nil
	}
	return b, valueError(fmt.Sprintf("evaluated to %T, which has no JSON form here", v))
}

// appendQuoted appends s as a JSON string.
func appendQuoted(b []byte, s string) []byte {
	b = append(b, '"')
	b = appendEscaped(b, s)
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendEscaped appends s JSON-escaped without quotes. Unlike encoding/json it does not escape
// <, >, & (WeChat rejects \u003c) nor U+2028/U+2029, and writes non-ASCII raw: only ", \ and
// control characters are escaped. Invalid UTF-8 becomes U+FFFD.
func appendEscaped[T string | []byte](b []byte, s T) []byte {
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(i+utf8.UTFMax, len(s))]))
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\ufffd"...)
			i++
			start = i
			continue
		}
		i += size
	}
	return append(b, s[start:]...)
}
