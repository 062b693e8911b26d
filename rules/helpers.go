package rules

import (
	"encoding/json"
	"fmt"
	"math"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/ast"
	"github.com/expr-lang/expr/vm/runtime"
)

// This file holds the helper functions rule expressions can call. Each is registered with
// expr.Function and explicit signatures so a typo or a wrong argument type fails the load, not
// the first event. The implementations still check their arguments at run time, because fields
// of `event` are untyped (any) until an event arrives.
//
// Helpers never turn a nil argument into text: a nil argument is an error, so a missing event
// field rejects the notification instead of rendering "" or "<nil>". default() and has() are the
// explicit opt-outs.

// helperOptions returns the expr options registering every helper, formatting times in zone.
func helperOptions(zone *time.Location) []expr.Option {
	return []expr.Option{
		expr.Function("yuan", helperYuan, new(func(int) string), new(func(float64) string), new(func(string) string)),
		expr.Function("cny", helperCNY, new(func(int) string), new(func(float64) string), new(func(string) string)),
		expr.Function("timefmt", func(p ...any) (any, error) { return helperTimefmt(zone, p...) },
			new(func(string, string) string), new(func(time.Time, string) string)),
		expr.Function("timeparse", helperTimeparse, new(func(string) time.Time)),
		expr.Function("truncate", helperTruncate, new(func(string, int) string)),
		expr.Function("mask", helperMask, new(func(string) string)),
		expr.Function("default", helperDefault, new(func(any, any) any)),
		expr.Function("has", helperHas, new(func(any) bool)),
		expr.Patch(pathPatch{}),
	}
}

// helperYuan formats an amount in fen (1/100 yuan) as yuan with the 元 suffix.
//
//	yuan(3980) == "39.80元"; yuan(5) == "0.05元"; yuan(-100) == "-1.00元"
//
// The amount must be an integer: a JSON number without a fraction, or a string of digits.
func helperYuan(p ...any) (any, error) {
	fen, err := toFen("yuan", p[0])
	if err != nil {
		return nil, err
	}
	return formatFen(fen, "", "元"), nil
}

// helperCNY formats an amount in fen with the ¥ sign.
//
//	cny(3980) == "¥39.80"; cny(0) == "¥0.00"; cny(-100) == "-¥1.00"
func helperCNY(p ...any) (any, error) {
	fen, err := toFen("cny", p[0])
	if err != nil {
		return nil, err
	}
	return formatFen(fen, "¥", ""), nil
}

func formatFen(fen int64, prefix, suffix string) string {
	var b [32]byte
	out := b[:0]
	u := uint64(fen)
	if fen < 0 {
		out = append(out, '-')
		u = -u // two's complement: correct for math.MinInt64 too
	}
	out = append(out, prefix...)
	out = strconv.AppendUint(out, u/100, 10)
	c := u % 100
	out = append(out, '.', byte('0'+c/10), byte('0'+c%10))
	out = append(out, suffix...)
	return string(out)
}

func toFen(fn string, v any) (int64, error) {
	switch n := v.(type) {
	case int:
		return int64(n), nil
	case int64:
		return n, nil
	case int32:
		return int64(n), nil
	case uint:
		if uint64(n) <= math.MaxInt64 {
			return int64(n), nil
		}
	case uint64:
		if n <= math.MaxInt64 {
			return int64(n), nil
		}
	case float64:
		if n == math.Trunc(n) && math.Abs(n) < 1<<53 {
			return int64(n), nil
		}
	case json.Number:
		if i, err := strconv.ParseInt(string(n), 10, 64); err == nil {
			return i, nil
		}
	case string:
		if i, err := strconv.ParseInt(n, 10, 64); err == nil {
			return i, nil
		}
	case nil:
		return 0, fmt.Errorf("%s: amount is nil", fn)
	}
	return 0, fmt.Errorf("%s: want an integer amount in fen, got %T %v", fn, v, v)
}

// helperTimefmt formats a time with a Go layout in the set's zone (Options.Zone, by default
// Asia/Shanghai, never the host's zone). The time is an RFC 3339 string or a time value.
//
//	timefmt("2026-11-22T10:00:00Z", "2006-01-02 15:04") == "2026-11-22 18:00"
func helperTimefmt(zone *time.Location, p ...any) (any, error) {
	t, err := toTime("timefmt", p[0])
	if err != nil {
		return nil, err
	}
	layout, ok := p[1].(string)
	if !ok {
		return nil, fmt.Errorf("timefmt: want a string layout, got %T", p[1])
	}
	return t.In(zone).Format(layout), nil
}

// helperTimeparse parses an RFC 3339 string into a time, for comparisons and arithmetic.
//
//	timeparse("2026-11-22T10:00:00Z") < timeparse(event.deadline)
func helperTimeparse(p ...any) (any, error) {
	return toTime("timeparse", p[0])
}

func toTime(fn string, v any) (time.Time, error) {
	switch t := v.(type) {
	case time.Time:
		return t, nil
	case string:
		pt, err := time.Parse(time.RFC3339, t)
		if err != nil {
			return time.Time{}, fmt.Errorf("%s: %q is not an RFC 3339 time", fn, t)
		}
		return pt, nil
	case nil:
		return time.Time{}, fmt.Errorf("%s: time is nil", fn)
	}
	return time.Time{}, fmt.Errorf("%s: want an RFC 3339 string or a time, got %T", fn, v)
}

// helperTruncate shortens s to at most n runes (not bytes), ending with "…" when it cut.
//
//	truncate("广州市海珠区新港中路397号", 6) == "广州市海珠…"
func helperTruncate(p ...any) (any, error) {
	s, ok := p[0].(string)
	if !ok {
		return nil, fmt.Errorf("truncate: want a string, got %T", p[0])
	}
	var n int
	switch v := p[1].(type) {
	case int:
		n = v
	case int64:
		n = int(v)
	default:
		return nil, fmt.Errorf("truncate: want an int length, got %T", p[1])
	}
	return truncateRunes(s, n), nil
}

func truncateRunes(s string, n int) string {
	if n <= 0 {
		return ""
	}
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	i, count := 0, 0
	for i = range s {
		if count == n-1 {
			break
		}
		count++
	}
	return s[:i] + "…"
}

// helperMask hides the middle of personal data.
//
//	mask("13812345678") == "138****5678"   (digits, 7 or more: keep the first 3 and last 4)
//	mask("王伟") == "王*"; mask("王小伟") == "王*伟"; mask("欧阳小锋") == "欧**锋"
//	mask("wei@example.com") == "w***@example.com"
func helperMask(p ...any) (any, error) {
	s, ok := p[0].(string)
	if !ok {
		return nil, fmt.Errorf("mask: want a string, got %T", p[0])
	}
	return maskString(s), nil
}

func maskString(s string) string {
	if at := strings.IndexByte(s, '@'); at > 0 {
		_, size := utf8.DecodeRuneInString(s)
		return s[:size] + "***" + s[at:]
	}
	if len(s) >= 7 && isPhoneLike(s) {
		return s[:3] + strings.Repeat("*", len(s)-7) + s[len(s)-4:]
	}
	r := []rune(s)
	switch len(r) {
	case 0:
		return ""
	case 1:
		return "*"
	case 2:
		return string(r[0]) + "*"
	}
	return string(r[0]) + strings.Repeat("*", len(r)-2) + string(r[len(r)-1])
}

func isPhoneLike(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= '0' && c <= '9') && !(i == 0 && c == '+') {
			return false
		}
	}
	return true
}

// helperDefault returns y when x is nil or "", else x. Missing parents inside x are nil-safe:
//
//	default(event.shop.address, "门店地址待定")   // also when event.shop is absent
func helperDefault(p ...any) (any, error) {
	if p[0] == nil {
		return p[1], nil
	}
	if s, ok := p[0].(string); ok && s == "" {
		return p[1], nil
	}
	return p[0], nil
}

// helperHas reports whether a path is present in the event and not null. Missing parents are
// nil-safe, so has(event.shipment.carrier) is false when event.shipment is absent:
//
//	has(event.shipment.tracking_no) ? event.shipment.tracking_no : "待揽收"
func helperHas(p ...any) (any, error) {
	return p[0] != nil, nil
}

// pathPatch rewrites expressions at compile time, for speed and for has/default.
//
// Speed: expr fetches map keys through reflect, which allocates on every access. A member chain
// rooted at `event` with constant keys (event.order.id, event.items[0].name) is rewritten to
// nested calls of fetch, held as a constant of a signature expr calls directly (OpCallTyped:
// no reflect, no argument slice), which does a plain map lookup. fetch keeps expr's semantics: a
// missing key is nil, fetching from nil fails with expr's "cannot fetch x from <nil>", anything
// other than a JSON object or list goes to expr's own runtime.Fetch. Chains the author wrote
// with ?. are left to expr.
//
// has/default: their first argument is made nil-safe: fetch becomes fetchSafe (nil in, nil
// out), and a chain with ?. gets every access made optional. has(event.a.b) is false, not an
// error, when event.a is absent. Fetching a key from a non-null non-object (a string, a number)
// is still an error.
type pathPatch struct{}

var (
	fetchFn     func(any, any) any = fetch
	fetchSafeFn func(any, any) any = fetchSafe
	fetchPtr                       = reflect.ValueOf(fetchFn).Pointer()
	fetchType                      = reflect.TypeOf(fetchFn)
	anyType                        = reflect.TypeFor[any]()
)

func (pathPatch) Visit(node *ast.Node) {
	switch n := (*node).(type) {
	case *ast.MemberNode:
		if n.Optional || n.Method || !isEventPath(n.Node) {
			return
		}
		switch n.Property.(type) {
		case *ast.StringNode, *ast.IntegerNode:
		default:
			return
		}
		callee := &ast.ConstantNode{Value: fetchFn}
		callee.SetLocation(n.Location())
		call := &ast.CallNode{Callee: callee, Arguments: []ast.Node{n.Node, n.Property}}
		call.SetLocation(n.Location())
		// Type the new nodes here: the checker keeps the types of nodes it checked before this
		// patch ran (e.g. the call of a helper returning string) and does not revisit below them.
		callee.SetType(fetchType)
		call.SetType(anyType)
		*node = call
	case *ast.CallNode:
		id, ok := n.Callee.(*ast.IdentifierNode)
		if !ok || (id.Value != "has" && id.Value != "default") || len(n.Arguments) == 0 {
			return
		}
		makeNilSafe(&n.Arguments[0])
	}
}

// fetchCall returns the callee of n if n is a call pathPatch wrote.
func fetchCall(n ast.Node) (*ast.CallNode, *ast.ConstantNode, bool) {
	call, ok := n.(*ast.CallNode)
	if !ok || len(call.Arguments) != 2 {
		return nil, nil, false
	}
	c, ok := call.Callee.(*ast.ConstantNode)
	if !ok {
		return nil, nil, false
	}
	if f, ok := c.Value.(func(any, any) any); !ok || reflect.ValueOf(f).Pointer() != fetchPtr {
		return nil, nil, false
	}
	return call, c, true
}

// isEventPath reports whether n is `event` or an already rewritten fetch chain on it.
func isEventPath(n ast.Node) bool {
	for {
		if id, ok := n.(*ast.IdentifierNode); ok {
			return id.Value == "event"
		}
		call, _, ok := fetchCall(n)
		if !ok {
			return false
		}
		n = call.Arguments[0]
	}
}

func makeNilSafe(arg *ast.Node) {
	switch x := (*arg).(type) {
	case *ast.CallNode:
		if !isEventPath(x) {
			return
		}
		for call, c, ok := fetchCall(x); ok; call, c, ok = fetchCall(call.Arguments[0]) {
			c.Value = fetchSafeFn
		}
	case *ast.ChainNode:
		for m, ok := x.Node.(*ast.MemberNode); ok; m, ok = m.Node.(*ast.MemberNode) {
			m.Optional = true
		}
	case *ast.MemberNode:
		for m, ok := x, true; ok; m, ok = m.Node.(*ast.MemberNode) {
			m.Optional = true
		}
		chain := &ast.ChainNode{Node: x}
		chain.SetLocation(x.Location())
		chain.SetType(anyType)
		*arg = chain
	}
}

// fetch is the compiled form of event.a: from[key] for decoded JSON, expr's runtime.Fetch for anything else.
func fetch(from, key any) any {
	switch f := from.(type) {
	case map[string]any:
		if k, ok := key.(string); ok {
			return f[k]
		}
	case []any:
		if i, ok := key.(int); ok {
			if i < 0 {
				i += len(f)
			}
			if i < 0 || i >= len(f) {
				panic(fmt.Sprintf("index out of range: %v (array length is %v)", i, len(f)))
			}
			return f[i]
		}
	case nil:
		panic(fmt.Sprintf("cannot fetch %v from <nil>", key))
	case string, float64, int, bool:
		if _, ok := key.(string); ok {
			// expr would say "invalid operation: int(string)" (it tries to index).
			panic(fmt.Sprintf("cannot fetch %v from %T", key, from))
		}
	}
	return runtime.Fetch(from, key)
}

// fetchSafe is fetch in the first argument of has and default: fetch, but nil from nil.
func fetchSafe(from, key any) any {
	if from == nil {
		return nil
	}
	return fetch(from, key)
}
