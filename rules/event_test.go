package rules

import (
	"encoding/json"
	"os"
	"reflect"
	"strings"
	"testing"
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
	"{\"inv\":\"\xff\"}", "{\"inv\":\"a\xc3\"}", "{\"inv\":\"\xed\xa0\x80\"}", "{\"inv\":\"\\n\xff\"}", "{\"\xfe\":1}",
	`{"esc":"\'"}`, `{"esc":"\x"}`, `{"esc":"\u12"}`, `{"esc":"\u12G4"}`, "{\"ctl\":\"a\tb\"}", "{\"ctl\":\"a\x01\"}",
	`[1]`, `"x"`, `null`, `1`, `true`, ``, ` `, `{`, `}`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,"a":1}`, `{"a":1 "b":2}`,
	`{"a":[1,]}`, `{"a":[,1]}`, `{"a":[1 2]}`, `{a:1}`, `{'a':1}`, `{"a":1} {}`, `{"a":1}x`, `{"a":1}}`,
	`{"a":01}`, `{"a":-}`, `{"a":1.}`, `{"a":.5}`, `{"a":1e}`, `{"a":1e+}`, `{"a":+1}`, `{"a":0x10}`, `{"a":NaN}`,
	`{"a":tru}`, `{"a":nul}`, `{"a":falsey}`, `{"a":truex}`, "\ufeff{}", `{"a":"unterminated}`, `{"a":1`,
	`{"a":` + strings.Repeat(`[`, 600) + strings.Repeat(`]`, 600) + `}`,
	`{"a":` + strings.Repeat(`{"b":`, 600) + `1` + strings.Repeat(`}`, 600) + `}`,
	`{"a":` + strings.Repeat(`[`, 10001) + strings.Repeat(`]`, 10001) + `}`,
}

// TestDecodeEventMatchesEncodingJSON holds DecodeEvent to its encoding/json reference: the same
// values, the same error text.
func TestDecodeEventMatchesEncodingJSON(t *testing.T) {
	sample, err := os.ReadFile("testdata/order-paid.json")
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range append(eventCorpus, string(sample)) {
		checkDecodeEvent(t, []byte(in))
	}
}

func FuzzDecodeEvent(f *testing.F) {
	for _, in := range eventCorpus {
		f.Add([]byte(in))
	}
	f.Fuzz(checkDecodeEvent)
}

func checkDecodeEvent(t *testing.T, in []byte) {
	got, gotErr := DecodeEvent(in)
	want, wantErr := decodeStd(in)
	if (gotErr == nil) != (wantErr == nil) || gotErr != nil && gotErr.Error() != wantErr.Error() {
		t.Fatalf("DecodeEvent(%q) error %v, encoding/json %v", in, gotErr, wantErr)
	}
	if !reflect.DeepEqual(got.m, want.m) {
		t.Fatalf("DecodeEvent(%q) =\n%#v\nencoding/json:\n%#v", in, got.m, want.m)
	}
	if m, ok := decodeFast(in); ok && !reflect.DeepEqual(m, want.m) {
		t.Fatalf("decodeFast(%q) =\n%#v\nencoding/json:\n%#v", in, m, want.m)
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
