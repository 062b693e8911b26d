package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf16"
	"unicode/utf8"
)

// Event is one decoded business event, the `event` of rule expressions.
//
// JSON numbers decode to int when they are integers that fit in 64 bits (so yuan(3980) and
// event.qty > 1 work and ids keep every digit), to float64 when they have a fraction or an
// exponent, and stay json.Number when they are integers too large for int (rendered digit for
// digit, but not usable in arithmetic).
type Event struct {
	m map[string]any
}

// ErrInvalidUTF8 is wrapped by DecodeEvent's error when a string of the event, a key or a value,
// is not valid UTF-8: it holds bytes that are not UTF-8, or a \u escape of a surrogate that is
// not half of a pair (such a code point has no UTF-8 form). encoding/json would decode either as
// U+FFFD; an event is rejected instead, so that a replacement character is never sent in
// someone's openid or text. The error names the string's JSON path (like $.user.openid) and the
// byte offset of the first bad byte or escape, never the string itself.
var ErrInvalidUTF8 = errors.New("invalid UTF-8")

// DecodeEvent decodes a JSON object into an Event. Anything else (an array, a scalar, trailing
// data) is an error, and so is a string that is not valid UTF-8 (an error wrapping
// ErrInvalidUTF8).
//
// It runs once per consumed record, so well-formed objects take a hand-written single pass
// (decodeFast) that builds the same values as encoding/json with UseNumber plus the number
// conversion. Anything that pass does not handle itself (a syntax error, invalid UTF-8, a lone
// surrogate, deep nesting) goes through encoding/json, so syntax errors and edge cases are
// exactly encoding/json's; what encoding/json accepts is then checked for the strings it would
// have coerced to U+FFFD. FuzzDecodeEvent holds DecodeEvent to encoding/json.
func DecodeEvent(data []byte) (Event, error) {
	if m, ok := decodeFast(data); ok {
		return Event{m: m}, nil
	}
	ev, err := decodeStd(data)
	if err != nil {
		return Event{}, err
	}
	if err := checkUTF8(data); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	return ev, nil
}

// decodeStd decodes data by encoding/json, with DecodeEvent's number conventions: the path for
// anything decodeFast declines (DecodeEvent then checks its strings with checkUTF8).
func decodeStd(data []byte) (Event, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var m map[string]any
	if err := dec.Decode(&m); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	if m == nil {
		return Event{}, errors.New("decode event: not a JSON object")
	}
	if _, err := dec.Token(); err != io.EOF {
		return Event{}, errors.New("decode event: trailing data after the JSON object")
	}
	convertNumbers(m)
	return Event{m: m}, nil
}

// checkUTF8 returns an error wrapping ErrInvalidUTF8 for the first string of data, a valid JSON
// document, that encoding/json would decode with a U+FFFD of its own making, or nil. It runs only
// on what decodeFast declined, so it is a plain walk rather than a fast one.
func checkUTF8(data []byte) error {
	var path []pathElem // the containers the walk is in, outermost first
	for i := 0; i < len(data); {
		switch data[i] {
		case '{':
			path = append(path, pathElem{object: true, wantKey: true})
		case '[':
			path = append(path, pathElem{})
		case '}', ']':
			if len(path) > 0 {
				path = path[:len(path)-1]
			}
		case ',':
			if n := len(path); n > 0 {
				path[n-1].index++
				path[n-1].wantKey = path[n-1].object
			}
		case '"':
			end, bad, lone := scanString(data, i)
			key := len(path) > 0 && path[len(path)-1].wantKey
			if bad >= 0 {
				where := formatPath(data, path)
				if key {
					where = "a key of " + where
				}
				what := ""
				if lone {
					what = " (a \\u escape of an unpaired surrogate)"
				}
				return fmt.Errorf("%w in %s at byte %d%s", ErrInvalidUTF8, where, bad, what)
			}
			if key {
				top := &path[len(path)-1]
				top.keyStart, top.keyEnd, top.wantKey = i, end, false
			}
			i = end
			continue
		}
		i++
	}
	return nil
}

// pathElem is one container on the way to a string: an object (and the raw key being read in
// it) or an array (and the index).
type pathElem struct {
	object           bool
	wantKey          bool // an object, before its next key
	keyStart, keyEnd int  // the key, quotes included
	index            int
}

// scanString reads the JSON string at data[i] (its opening quote) and returns the offset just
// past it, and the offset of its first invalid byte or unpaired surrogate escape (lone), or -1.
func scanString(data []byte, i int) (end, bad int, lone bool) {
	for i++; i < len(data); {
		c := data[i]
		switch {
		case c == '"':
			return i + 1, -1, false
		case c == '\\':
			if i+1 < len(data) && data[i+1] == 'u' {
				_, size, ok := uEscape(data, i) // data is valid JSON: only a surrogate fails
				if !ok {
					return 0, i, true
				}
				i += size
				continue
			}
			i += 2
		case c < utf8.RuneSelf:
			i++
		default:
			r, size := utf8.DecodeRune(data[i:])
			if r == utf8.RuneError && size == 1 {
				return 0, i, false
			}
			i += size
		}
	}
	return len(data), -1, false
}

// maxPathLen bounds the path in an error (a dead-letter header carries it): a longer path keeps
// its first and last steps.
const maxPathLen = 200

// formatPath writes path as a JSONPath: $.user.openid, $.order.items[0].name, $["a key"].
func formatPath(data []byte, path []pathElem) string {
	steps := make([]string, 0, len(path))
	size := 0
	for _, e := range path {
		var step string
		switch {
		case !e.object:
			step = "[" + strconv.Itoa(e.index) + "]"
		case e.wantKey: // the innermost object, whose key is the bad string
		default:
			var k string
			_ = json.Unmarshal(data[e.keyStart:e.keyEnd], &k) // a key before the bad string: valid
			if plainKey(k) {
				step = "." + k
			} else {
				step = "[" + strconv.Quote(k) + "]"
			}
		}
		steps = append(steps, step)
		size += len(step)
	}
	if size <= maxPathLen {
		return "$" + strings.Join(steps, "")
	}
	var head, tail []string
	for n := 0; len(head) < len(steps) && n+len(steps[len(head)]) <= maxPathLen/2; {
		n += len(steps[len(head)])
		head = append(head, steps[len(head)])
	}
	for n, i := 0, len(steps)-1; i >= len(head) && n+len(steps[i]) <= maxPathLen/2; i-- {
		n += len(steps[i])
		tail = append([]string{steps[i]}, tail...)
	}
	return "$" + strings.Join(head, "") + "…" + strings.Join(tail, "")
}

// plainKey reports whether k can follow a dot in a path: letters, digits and _, not first a digit.
func plainKey(k string) bool {
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !(c == '_' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || i > 0 && '0' <= c && c <= '9') {
			return false
		}
	}
	return k != ""
}

// NewEvent wraps an already decoded object. Numbers should follow DecodeEvent's conventions.
func NewEvent(m map[string]any) Event { return Event{m: m} }

// Fields returns the decoded object. Callers must not modify it: events are shared by every
// rule evaluated against them.
func (e Event) Fields() map[string]any { return e.m }

// ID returns the event's "event_id" if it is a non-empty string, else "".
func (e Event) ID() string {
	s, _ := e.m["event_id"].(string)
	return s
}

// OccurredAt returns the event's "occurred_at" parsed as RFC 3339.
func (e Event) OccurredAt() (time.Time, bool) {
	s, ok := e.m["occurred_at"].(string)
	if !ok {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, s)
	return t, err == nil
}

func convertNumbers(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			if c, changed := convertNumber(e); changed {
				x[k] = c
			} else {
				convertNumbers(e)
			}
		}
	case []any:
		for i, e := range x {
			if c, changed := convertNumber(e); changed {
				x[i] = c
			} else {
				convertNumbers(e)
			}
		}
	}
	return v
}

func convertNumber(v any) (any, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return nil, false
	}
	s := string(n)
	if i, err := strconv.ParseInt(s, 10, 64); err == nil {
		return int(i), true
	}
	for j := 0; j < len(s); j++ {
		if s[j] == '.' || s[j] == 'e' || s[j] == 'E' {
			if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) {
				return f, true
			}
			break
		}
	}
	return n, false // a big integer: keep every digit
}

// fastMaxDepth is the nesting decodeFast handles itself; deeper documents go to encoding/json,
// which allows 10000.
const fastMaxDepth = 512

// decodeFast decodes data, a JSON object with nothing but whitespace after it, into the values
// DecodeEvent promises. ok is false when it cannot, for whatever reason: then the caller asks
// encoding/json, which either decodes it (the cases left to it are rare: deep nesting, and
// invalid UTF-8 and lone surrogates, which DecodeEvent then rejects) or reports the error. It
// never accepts what encoding/json rejects, nor a string encoding/json would coerce to U+FFFD.
func decodeFast(data []byte) (m map[string]any, ok bool) {
	d := fastDecoder{data: data}
	d.skipSpace()
	if d.i >= len(d.data) || d.data[d.i] != '{' {
		return nil, false
	}
	m, ok = d.object()
	if !ok {
		return nil, false
	}
	d.skipSpace()
	return m, d.i == len(d.data)
}

type fastDecoder struct {
	data  []byte
	i     int
	depth int
}

func (d *fastDecoder) skipSpace() {
	for d.i < len(d.data) {
		switch d.data[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

func (d *fastDecoder) value() (any, bool) {
	if d.i >= len(d.data) {
		return nil, false
	}
	switch c := d.data[d.i]; {
	case c == '"':
		s, ok := d.string()
		return s, ok
	case c == '{':
		m, ok := d.object()
		return m, ok
	case c == '[':
		return d.array()
	case c == '-' || '0' <= c && c <= '9':
		return d.number()
	case c == 't':
		return true, d.literal("true")
	case c == 'f':
		return false, d.literal("false")
	case c == 'n':
		return nil, d.literal("null")
	}
	return nil, false
}

func (d *fastDecoder) literal(lit string) bool {
	if len(d.data)-d.i < len(lit) || string(d.data[d.i:d.i+len(lit)]) != lit {
		return false
	}
	d.i += len(lit)
	return true
}

// object decodes the object at d.i (its '{').
func (d *fastDecoder) object() (map[string]any, bool) {
	if d.depth++; d.depth > fastMaxDepth {
		return nil, false
	}
	d.i++
	m := make(map[string]any)
	d.skipSpace()
	if d.i < len(d.data) && d.data[d.i] == '}' {
		d.i++
		d.depth--
		return m, true
	}
	for {
		if d.i >= len(d.data) || d.data[d.i] != '"' {
			return nil, false
		}
		k, ok := d.key()
		if !ok {
			return nil, false
		}
		d.skipSpace()
		if d.i >= len(d.data) || d.data[d.i] != ':' {
			return nil, false
		}
		d.i++
		d.skipSpace()
		v, ok := d.value()
		if !ok {
			return nil, false
		}
		m[k] = v // a repeated key: the last wins, as in encoding/json
		if end, ok := d.afterElement('}'); !ok || end {
			return m, ok
		}
	}
}

// array decodes the array at d.i (its '[').
func (d *fastDecoder) array() (any, bool) {
	if d.depth++; d.depth > fastMaxDepth {
		return nil, false
	}
	d.i++
	a := []any{} // encoding/json makes [] an empty, non-nil slice
	d.skipSpace()
	if d.i < len(d.data) && d.data[d.i] == ']' {
		d.i++
		d.depth--
		return a, true
	}
	for {
		v, ok := d.value()
		if !ok {
			return nil, false
		}
		a = append(a, v)
		if end, ok := d.afterElement(']'); !ok || end {
			return a, ok
		}
	}
}

// afterElement reads what follows an object member or array element: a comma (more follow) or
// the closing byte (end, and the nesting level is left).
func (d *fastDecoder) afterElement(closing byte) (end, ok bool) {
	d.skipSpace()
	if d.i >= len(d.data) {
		return false, false
	}
	switch d.data[d.i] {
	case ',':
		d.i++
		d.skipSpace()
		return false, true
	case closing:
		d.i++
		d.depth--
		return true, true
	}
	return false, false
}

// string decodes the string at d.i (its '"'). It declines invalid UTF-8 and surrogates that do
// not pair, which encoding/json replaces with U+FFFD.
func (d *fastDecoder) string() (string, bool) {
	start := d.i + 1
	i := start
	ascii := true
	for ; i < len(d.data); i++ {
		c := d.data[i]
		if c == '"' || c == '\\' || c < ' ' {
			break
		}
		if c >= utf8.RuneSelf {
			ascii = false
		}
	}
	if i >= len(d.data) || d.data[i] < ' ' {
		return "", false
	}
	if d.data[i] == '"' {
		raw := d.data[start:i]
		if !ascii && !utf8.Valid(raw) {
			return "", false
		}
		d.i = i + 1
		return string(raw), true
	}
	// Escapes: copy what came before and unescape the rest.
	b := make([]byte, i-start, i-start+16)
	copy(b, d.data[start:i])
	for i < len(d.data) {
		c := d.data[i]
		switch {
		case c == '"':
			if !ascii && !utf8.Valid(b) {
				return "", false
			}
			d.i = i + 1
			return string(b), true
		case c < ' ':
			return "", false
		case c != '\\':
			if c >= utf8.RuneSelf {
				ascii = false
			}
			b = append(b, c)
			i++
			continue
		}
		if i+1 >= len(d.data) {
			return "", false
		}
		switch d.data[i+1] {
		case '"', '\\', '/':
			b = append(b, d.data[i+1])
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, size, ok := uEscape(d.data, i)
			if !ok {
				return "", false
			}
			b = utf8.AppendRune(b, r)
			i += size
			continue
		default:
			return "", false
		}
		i += 2
	}
	return "", false
}

// key decodes the object key at d.i (its '"'). Events of a topic repeat the same few keys, so
// plain short keys come from a small process-wide table instead of a new string each.
func (d *fastDecoder) key() (string, bool) {
	start := d.i + 1
	var h uint32 = 2166136261
	for i := start; i < len(d.data) && i-start <= maxInternedKey; i++ {
		c := d.data[i]
		if c == '"' {
			raw := d.data[start:i]
			e := &internedKeys[h%uint32(len(internedKeys))]
			if p := e.Load(); p != nil && *p == string(raw) {
				d.i = i + 1
				return *p, true
			}
			s := string(raw)
			e.Store(&s)
			d.i = i + 1
			return s, true
		}
		if c == '\\' || c < ' ' || c >= utf8.RuneSelf {
			break
		}
		h = (h ^ uint32(c)) * 16777619 // FNV-1a
	}
	return d.string()
}

// internedKeys holds recently seen object keys of at most maxInternedKey ASCII bytes without
// escapes, by hash; a collision replaces the entry.
var internedKeys [512]atomic.Pointer[string]

const maxInternedKey = 32

// uEscape decodes the \u escape at data[i] (its backslash) and, for a high surrogate, the \u
// escape of the low one that must follow: the rune and the bytes read (6, or 12 for a pair). ok
// is false for bad hex digits and for a surrogate that is not half of a pair, which has no UTF-8
// form (encoding/json decodes it as U+FFFD). data[i+1] must be the u. decodeFast and checkUTF8
// share it, so the two agree on which escapes are bad.
func uEscape(data []byte, i int) (r rune, size int, ok bool) {
	if r = hex4(data[i+2:]); r < 0 {
		return 0, 0, false
	}
	if !utf16.IsSurrogate(r) {
		return r, 6, true
	}
	r2 := rune(-1)
	if i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
		r2 = hex4(data[i+8:])
	}
	if r = utf16.DecodeRune(r, r2); r == utf8.RuneError {
		return 0, 0, false
	}
	return r, 12, true
}

// hex4 reads the 4 hex digits of a \u escape, or returns -1.
func hex4(s []byte) rune {
	if len(s) < 4 {
		return -1
	}
	var r rune
	for _, c := range s[:4] {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r*16 + rune(c)
	}
	return r
}

// number decodes the number at d.i with convertNumber's result: int, float64, or json.Number for
// an integer beyond int64 (or a fraction beyond float64).
func (d *fastDecoder) number() (any, bool) {
	start := d.i
	i := start
	neg := false
	if d.data[i] == '-' {
		neg = true
		i++
	}
	digits := i
	if i >= len(d.data) {
		return nil, false
	}
	switch c := d.data[i]; {
	case c == '0':
		i++
	case '1' <= c && c <= '9':
		for i < len(d.data) && '0' <= d.data[i] && d.data[i] <= '9' {
			i++
		}
	default:
		return nil, false
	}
	intEnd := i
	isFloat := false
	if i < len(d.data) && d.data[i] == '.' {
		isFloat = true
		i++
		if i >= len(d.data) || d.data[i] < '0' || d.data[i] > '9' {
			return nil, false
		}
		for i < len(d.data) && '0' <= d.data[i] && d.data[i] <= '9' {
			i++
		}
	}
	if i < len(d.data) && (d.data[i] == 'e' || d.data[i] == 'E') {
		isFloat = true
		i++
		if i < len(d.data) && (d.data[i] == '+' || d.data[i] == '-') {
			i++
		}
		if i >= len(d.data) || d.data[i] < '0' || d.data[i] > '9' {
			return nil, false
		}
		for i < len(d.data) && '0' <= d.data[i] && d.data[i] <= '9' {
			i++
		}
	}
	d.i = i
	if !isFloat {
		if n := intEnd - digits; n <= 18 { // cannot overflow int64
			var u int64
			for _, c := range d.data[digits:intEnd] {
				u = u*10 + int64(c-'0')
			}
			if neg {
				u = -u
			}
			return int(u), true
		}
		s := string(d.data[start:i])
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return int(n), true
		}
		return json.Number(s), true // a big integer: keep every digit
	}
	s := string(d.data[start:i])
	if f, err := strconv.ParseFloat(s, 64); err == nil && !math.IsInf(f, 0) {
		return f, true
	}
	return json.Number(s), true
}

// Meta is where an event came from in Kafka, the `kafka` of rule expressions.
type Meta struct {
	// EventID identifies the event for idempotency keys: its event_id; when empty, ID uses the
	// record's coordinates.
	EventID   string
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Time      time.Time
}

// ID is the event's identity: EventID, else "topic/partition/offset" (unique per record, and the
// same when the record is read again).
func (m *Meta) ID() string {
	if m.EventID != "" {
		return m.EventID
	}
	return m.Topic + "/" + strconv.Itoa(m.Partition) + "/" + strconv.FormatInt(m.Offset, 10)
}

// exprEnv is the typed environment every expression compiles against. A struct (not a map)
// lets expr resolve `event` and `kafka` to field indexes at compile time and costs no map
// allocation per event.
type exprEnv struct {
	Event map[string]any `expr:"event"`
	Kafka kafkaEnv       `expr:"kafka"`
}

type kafkaEnv struct {
	Topic     string    `expr:"topic"`
	Partition int       `expr:"partition"`
	Offset    int64     `expr:"offset"`
	Key       string    `expr:"key"`
	Time      time.Time `expr:"time"`
}
