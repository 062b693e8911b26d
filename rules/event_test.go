package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode/utf16"
	"unicode/utf8"
)

// eventCorpus is JSON that DecodeEvent's fast path must decode exactly as encoding/json does,
// or decline: objects of every value kind, number edges, escapes, invalid UTF-8, and errors.
var eventCorpus = []string{
	`{}`, ` { } `, "\t{\"a\":1}\r\n", `{"a":{}}`, `{"a":[]}`, `{"a":[[],{},[1,[2,[3]]]]}`,
	`{"a":true,"b":false,"c":null,"d":"x","e":1}`, `{"a":1,"a":2}`, `{"a":{"b":1},"a":{"c":2}}`,
	`{"n":0,"m":-0,"o":-1,"p":123456789012345678,"q":9223372036854775807,"r":-9223372036854775808}`,
	`{"n":9223372036854775808,"m":-9223372036854775809,"o":123456789012345678901234567890}`,
	`{"f":1.5,"g":-0.0,"h":1e3,"i":1E+3,"j":1e-3,"k":0.1e1,"l":2.5E-308,"m":1e999,"n":-1e999,"o":1e-999}`,
	`{"f":0.000000000000000000000000000001,"g":179769313486231570000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000.0}`,
	`{"s":"plain","t":"王伟 广州市","u":"a\"b\\c\/d\be\ff\ng\rh\ti","v":"\u0041\u00e9\u4e2d\uD83D\uDE00","w":"\u0000"}`,
	`{"\u0061\n":"key escapes","王":"unicode key","":"empty key"}`,
	`{"lone":"\uD83D"}`, `{"lone":"\uDE00x"}`, `{"pair":"\uD83Dx\uDE00"}`, `{"bad":"\uD83D\u0041"}`,
	"{\"user\":{\"openid\":\"oBad\xc3(\"}}", "{\"a\":[\"ok\",{\"b\\n\":\"\xc3\"}]}", "{\"inv\":\"\xff\"}", "{\"inv\":\"a\xc3\"}", "{\"inv\":\"\xed\xa0\x80\"}", "{\"inv\":\"\\n\xff\"}", "{\"\xfe\":1}",
	`{"esc":"\'"}`, `{"esc":"\x"}`, `{"esc":"\u12"}`, `{"esc":"\u12G4"}`, "{\"ctl\":\"a\tb\"}", "{\"ctl\":\"a\x01\"}",
	`[1]`, `"x"`, `null`, `1`, `true`, ``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`,
	`{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{a:1}`, `{'a':1}`, `{"a":1} {}`, `{"a":1}x`, `{"a":1}}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`, `{"a":NaN}`,
	`{"a":tru}`, `{"a":nul}`, `{"a":falsey}`, `{"a":truex}`, "\ufeff{}", `{"a":"unterminated}`, `{"a":1`,
	`{"a":` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 600) + `1` + strings.Repeat(`}`, 600) + `}`,
	`{"a":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `}`,
}

// TestDecodeEventMatchesEncodingJSON holds DecodeEvent to encoding/json on eventCorpus and a
// sample event; FuzzDecodeEvent does the same on whatever the fuzzer makes of them.
func TestDecodeEventMatchesEncodingJSON(t *testing.T) {
	sample, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range append(eventCorpus, string(sample)) {
		checkDecodeEvent(t, []byte(in))
	}
}

// FuzzDecodeEvent checks DecodeEvent differentially against encoding/json (see checkDecodeEvent).
// Seeds: eventCorpus, and testdata/fuzz/FuzzDecodeEvent (the sample events of configs/samples and
// rules/testdata).
func FuzzDecodeEvent(f *testing.F) {
	for _, in := range eventCorpus {
		f.Add([]byte(in))
	}
	f.Fuzz(checkDecodeEvent)
}

// checkDecodeEvent holds DecodeEvent to encoding/json. For every input, DecodeEvent accepts it
// exactly when json.Valid does, except that it also rejects
//   - a top-level value that is not an object (an array, a scalar, null), and
//   - a string, key or value, that encoding/json would decode with a U+FFFD of its own making:
//     bytes that are not UTF-8, or \u escapes that are not well-formed UTF-16 (an unpaired
//     surrogate). Those errors, and only those, wrap ErrInvalidUTF8 and point at the bad byte.
//
// Other errors have encoding/json's text. What both accept decodes to the same value under
// DecodeEvent's conventions (sameAsJSON). The fast path, when it accepts, agrees too.
func checkDecodeEvent(t *testing.T, in []byte) {
	got, gotErr := DecodeEvent(in)
	var want any
	accept := json.Valid(in)
	if accept {
		dec := json.NewDecoder(bytes.NewReader(in))
		dec.UseNumber()
		if err := dec.Decode(&want); err != nil {
			t.Fatalf("json.Valid(%q) but Decode: %v", in, err)
		}
	}
	_, object := want.(map[string]any)
	badString := accept && hasBadString(in)
	switch {
	case badString && object:
		if !errors.Is(gotErr, ErrInvalidUTF8) {
			t.Fatalf("DecodeEvent(%q) error %v, want ErrInvalidUTF8", in, gotErr)
		}
		checkUTF8Offset(t, in, gotErr)
		return
	case errors.Is(gotErr, ErrInvalidUTF8):
		t.Fatalf("DecodeEvent(%q) error %v, but the strings are valid UTF-8 (or the JSON is not an object)", in, gotErr)
	case !accept || !object:
		if gotErr == nil {
			t.Fatalf("DecodeEvent(%q) accepted what encoding/json rejects (or not an object): %#v", in, got.m)
		}
		if _, stdErr := decodeStd(in); stdErr == nil || gotErr.Error() != stdErr.Error() {
			t.Fatalf("DecodeEvent(%q) error %q, encoding/json %v", in, gotErr, stdErr)
		}
		if m, ok := decodeFast(in); ok {
			t.Fatalf("decodeFast(%q) accepted what encoding/json rejects: %#v", in, m)
		}
		return
	}
	if gotErr != nil {
		t.Fatalf("DecodeEvent(%q) error %v; encoding/json decodes %#v", in, gotErr, want)
	}
	if path, ok := sameAsJSON(got.m, want, "$"); !ok {
		t.Fatalf("DecodeEvent(%q) differs from encoding/json at %s:\n%#v\nencoding/json:\n%#v", in, path, got.m, want)
	}
	if m, ok := decodeFast(in); ok {
		if path, ok := sameAsJSON(m, want, "$"); !ok {
			t.Fatalf("decodeFast(%q) differs from encoding/json at %s:\n%#v\nencoding/json:\n%#v", in, path, m, want)
		}
	}
}

// sameAsJSON reports whether got, a value DecodeEvent built, is want, what encoding/json with
// UseNumber decodes, under DecodeEvent's conventions (see Event), and where they first differ:
//   - a json.Number becomes the int strconv.ParseInt reads from it; failing that, when it has a
//     fraction or an exponent, the float64 strconv.ParseFloat reads (the same bits, -0 included)
//     unless that overflows; failing both, it stays the same json.Number (big integers keep
//     every digit, 1e999 stays text);
//   - strings are equal byte for byte (no U+FFFD can be involved: those inputs are rejected);
//   - objects have the same keys (a repeated key: the last wins in both), arrays the same
//     elements, and an empty array is non-nil in both;
//   - true, false and null are themselves.
func sameAsJSON(got, want any, path string) (string, bool) {
	switch w := want.(type) {
	case json.Number:
		s := string(w)
		if i, err := strconv.ParseInt(s, 10, 64); err == nil {
			g, ok := got.(int)
			return path, ok && g == int(i)
		}
		if strings.ContainsAny(s, ".eE") {
			if f, err := strconv.ParseFloat(s, 64); err == nil {
				g, ok := got.(float64)
				return path, ok && math.Float64bits(g) == math.Float64bits(f)
			}
		}
		g, ok := got.(json.Number)
		return path, ok && g == w
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || g == nil || len(g) != len(w) {
			return path, false
		}
		for k, wv := range w {
			gv, ok := g[k]
			if !ok {
				return path + "." + k, false
			}
			if p, ok := sameAsJSON(gv, wv, path+"."+k); !ok {
				return p, false
			}
		}
		return path, true
	case []any:
		g, ok := got.([]any)
		if !ok || g == nil || len(g) != len(w) {
			return path, false
		}
		for i := range w {
			if p, ok := sameAsJSON(g[i], w[i], fmt.Sprintf("%s[%d]", path, i)); !ok {
				return p, false
			}
		}
		return path, true
	case string, bool, nil:
		return path, got == want
	}
	return path, false
}

// hasBadString reports whether a string of in, valid JSON, is one encoding/json decodes with a
// U+FFFD of its own: its bytes are not UTF-8 (outside strings, JSON is ASCII, so the whole input
// tells), or its UTF-16 code units (a \u escape is one unit, any other character its UTF-16
// encoding) are not well-formed UTF-16.
func hasBadString(in []byte) bool {
	if !utf8.Valid(in) {
		return true
	}
	var units []uint16
	inString := false
	for i := 0; i < len(in); i++ {
		c := in[i]
		switch {
		case !inString:
			if c == '"' {
				inString, units = true, units[:0]
			}
		case c == '"':
			inString = false
			if !wellFormedUTF16(units) {
				return true
			}
		case c == '\\' && in[i+1] == 'u':
			u, _ := strconv.ParseUint(string(in[i+2:i+6]), 16, 16)
			units = append(units, uint16(u))
			i += 5
		case c == '\\':
			units = append(units, uint16(in[i+1]))
			i++
		default:
			r, size := utf8.DecodeRune(in[i:])
			units = utf16.AppendRune(units, r)
			i += size - 1
		}
	}
	return false
}

func wellFormedUTF16(units []uint16) bool {
	for i := 0; i < len(units); i++ {
		switch u := units[i]; {
		case 0xD800 <= u && u < 0xDC00:
			if i+1 == len(units) || units[i+1] < 0xDC00 || units[i+1] >= 0xE000 {
				return false
			}
			i++
		case 0xDC00 <= u && u < 0xE000:
			return false
		}
	}
	return true
}

// checkUTF8Offset checks that an ErrInvalidUTF8 error names a path and a byte offset at which
// in has a byte that is not ASCII or the backslash of a \u escape.
func checkUTF8Offset(t *testing.T, in []byte, err error) {
	t.Helper()
	m := utf8ErrorRE.FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("DecodeEvent(%q) error %q does not name a path and a byte offset", in, err)
	}
	off, _ := strconv.Atoi(m[1])
	if off >= len(in) || !(in[off] >= utf8.RuneSelf || in[off] == '\\' && off+1 < len(in) && in[off+1] == 'u') {
		t.Fatalf("DecodeEvent(%q) error %q: byte %d is not a bad byte or a \\u escape", in, err, off)
	}
}

var utf8ErrorRE = regexp.MustCompile(`^decode event: invalid UTF-8 in (?:a key of )?\$.* at byte (\d+)(?: \(a \\u escape of an unpaired surrogate\))?$`)

// An event with a string that is not valid UTF-8 is rejected, never decoded with U+FFFD (which
// would then be sent): the error wraps ErrInvalidUTF8 and says where.
func TestDecodeEventInvalidUTF8(t *testing.T) {
	deep := strings.Repeat(`{"a":`, 600)
	for _, c := range []struct {
		name, in string
		want     map[string]any // valid: the decoded event
		err      string         // invalid: the error
	}{
		{name: "ASCII and Chinese", in: `{"openid":"oUpF8u","name":"王伟"}`, want: map[string]any{"openid": "oUpF8u", "name": "王伟"}},
		{name: "emoji, raw and as a surrogate pair", in: `{"a":"😀","b":"\ud83d\ude00"}`, want: map[string]any{"a": "😀", "b": "😀"}},
		{name: "U+FFFD sent on purpose", in: "{\"a\":\"\xef\xbf\xbd\",\"b\":\"\\ufffd\"}", want: map[string]any{"a": "\ufffd", "b": "\ufffd"}},
		{name: "an escaped backslash before u", in: `{"a":"\\ud83d"}`, want: map[string]any{"a": `\ud83d`}},
		{name: "U+10FFFF and U+E000", in: "{\"a\":\"\xf4\x8f\xbf\xbf\ue000\"}", want: map[string]any{"a": "\U0010FFFF\ue000"}},

		{name: "the openid of the issue", in: "{\"user\":{\"openid\":\"oBad\xc3(\"}}", err: "invalid UTF-8 in $.user.openid at byte 23"},
		{name: "a lone continuation byte", in: "{\"a\":\"x\x80\"}", err: "invalid UTF-8 in $.a at byte 7"},
		{name: "0xff", in: "{\"a\":\"\xff\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "cut short at the end of the string", in: "{\"a\":\"\xe4\xb8\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "overlong /", in: "{\"a\":\"\xc0\xaf\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "a UTF-8 encoded surrogate", in: "{\"a\":\"\xed\xa0\x80\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "beyond U+10FFFF", in: "{\"a\":\"\xf4\x90\x80\x80\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "after an escape", in: "{\"a\":\"\\n\xff\"}", err: "invalid UTF-8 in $.a at byte 8"},
		{name: "in a key", in: "{\"user\":{\"ok\":1,\"o\xffpenid\":\"x\"}}", err: "invalid UTF-8 in a key of $.user at byte 18"},
		{name: "in the first key", in: "{\"\xfe\":1}", err: "invalid UTF-8 in a key of $ at byte 2"},
		{name: "in an array", in: "{\"order\":{\"items\":[{\"name\":\"ok\"},{\"name\":\"x\xff\"}]}}", err: "invalid UTF-8 in $.order.items[1].name at byte 43"},
		{name: "a key that is not plain", in: "{\"a b\":{\"\\\"\":[\"\xff\"]}}", err: `invalid UTF-8 in $["a b"]["\""][0] at byte 15`},
		{name: "the first of two", in: "{\"a\":\"\xff\",\"b\":\"\xff\"}", err: "invalid UTF-8 in $.a at byte 6"},
		{name: "a lone high surrogate", in: `{"a":"x\ud83d"}`, err: `invalid UTF-8 in $.a at byte 7 (a \u escape of an unpaired surrogate)`},
		{name: "a lone low surrogate", in: `{"a":"\uDE00x"}`, err: `invalid UTF-8 in $.a at byte 6 (a \u escape of an unpaired surrogate)`},
		{name: "a high surrogate before a letter", in: `{"a":"\ud83d\u0041"}`, err: `invalid UTF-8 in $.a at byte 6 (a \u escape of an unpaired surrogate)`},
		{name: "two high surrogates", in: `{"a":"\ud83d\ud83d\ude00"}`, err: `invalid UTF-8 in $.a at byte 6 (a \u escape of an unpaired surrogate)`},
		{name: "a lone surrogate in a key", in: `{"\udc00":1}`, err: `invalid UTF-8 in a key of $ at byte 2 (a \u escape of an unpaired surrogate)`},
		{name: "a long key", in: "{\"" + strings.Repeat("k", 300) + "\":\"\xff\"}", err: "invalid UTF-8 in $… at byte 305"},
		{name: "nested deeper than the fast path goes", in: deep + "\"\xff\"" + strings.Repeat("}", 600),
			err: "invalid UTF-8 in $" + strings.Repeat(".a", 50) + "…" + strings.Repeat(".a", 50) + " at byte 3001"},
	} {
		t.Run(c.name, func(t *testing.T) {
			ev, err := DecodeEvent([]byte(c.in))
			if c.err != "" {
				if !errors.Is(err, ErrInvalidUTF8) || err.Error() != "decode event: "+c.err {
					t.Fatalf("error %v, want decode event: %s (wrapping ErrInvalidUTF8)", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if _, ok := sameAsJSON(ev.Fields(), c.want, "$"); !ok {
				t.Fatalf("decoded %#v, want %#v", ev.Fields(), c.want)
			}
		})
	}
}

// Broken JSON is a syntax error even when it also has bad bytes, and so is anything but an
// object: only a well-formed event is rejected for its strings.
func TestDecodeEventInvalidUTF8InBrokenJSON(t *testing.T) {
	for _, in := range []string{"{\"a\":\"\xff\"", "[\"\xff\"]", "\"\xff\"", "{\"a\":\"\xff\"} x", "{\"a\":1}\xff", "{\xff:1}"} {
		if _, err := DecodeEvent([]byte(in)); err == nil || errors.Is(err, ErrInvalidUTF8) {
			t.Errorf("DecodeEvent(%q) = %v, want an error that is not ErrInvalidUTF8", in, err)
		}
	}
}

// The fast path covers the usual event: nothing in it falls back to encoding/json.
func TestDecodeEventFastPathCoversSamples(t *testing.T) {
	for _, in := range []string{
		`{"s":"a\"b\\c\/d\be\ff\ng\rh\ti","v":"\u0041\u00e9\u4e2d\uD83D\uDE00","big":123456789012345678901234567890,"f":-1.5e3,"n":[1,true,null,{}]}`,
	} {
		if _, ok := decodeFast([]byte(in)); !ok {
			t.Errorf("decodeFast(%s) declined", in)
		}
	}
	sample, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := decodeFast(sample); !ok {
		t.Error("decodeFast declined testdata/order-paid.json")
	}
	if m, _ := decodeFast([]byte(`{"big":123456789012345678901234567890}`)); m["big"] != json.Number("123456789012345678901234567890") {
		t.Errorf("big = %#v", m["big"])
	}
}

// BenchmarkDecodeEventStd is BenchmarkDecodeEvent through encoding/json, for comparison.
func BenchmarkDecodeEventStd(b *testing.B) {
	data, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decodeStd(data); err != nil {
			b.Fatal(err)
		}
	}
}
