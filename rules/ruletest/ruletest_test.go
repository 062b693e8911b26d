package ruletest_test

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/rules/ruletest"
)

// TestShippedFixtures runs every configs/rules/*_test.yaml, so `go test ./...` fails when a
// rule change breaks what ops wrote down about it.
func TestShippedFixtures(t *testing.T) {
	const dir = "../../configs/rules"
	set, err := rules.Load(dir, rules.Options{})
	if err != nil {
		t.Fatalf("shipped rules: %v", err)
	}
	files, err := ruletest.Files(dir)
	if err != nil || len(files) == 0 {
		t.Fatalf("fixtures in %s: %v %v", dir, files, err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			fx, err := ruletest.Load(file)
			if err != nil {
				t.Fatal(err)
			}
			for _, res := range fx.Run(set) {
				t.Run(res.Name, func(t *testing.T) {
					for _, f := range res.Failures {
						t.Error(f)
					}
				})
			}
		})
	}
}

const ruleFile = `rules:
  - name: paid
    when: event.type == "order.paid"
    account: oa
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: TPL
      data:
        id: {value: "${event.order.id}"}
        topic: {value: "${default(kafka.topic, '-')}"}
  - name: big
    when: event.type == "order.paid" && event.order.amount_fen > 10000
    account: oa
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: TPL_BIG
      data: {id: {value: "${event.order.id}"}}
`

func mustSet(t *testing.T) *rules.Set {
	t.Helper()
	set, err := rules.Parse(map[string][]byte{"r.yaml": []byte(ruleFile)}, rules.Options{})
	if err != nil {
		t.Fatal(err)
	}
	return set
}

// clientMsgID is template.send's idempotency key as the rules package derives it.
func clientMsgID(eventID, rule string) string {
	sum := sha256.Sum256([]byte(eventID + "/" + rule))
	return "wxn-" + hex.EncodeToString(sum[:12])
}

func TestRun(t *testing.T) {
	set := mustSet(t)
	for _, tc := range []struct {
		name, fixture string
		want          []string // failures
	}{
		{"numbers stay numbers: ids are strings only when quoted", `
tests:
  - name: c
    event: {type: order.paid, order: {id: 339208499, amount_fen: 1}, user: {openid: o}}
    expect: {bodies: {paid: {data.id.value: "339208499", data.topic.value: "-"}}}`, nil},
		{"kafka metadata reaches expressions and the event id", `
tests:
  - name: c
    event: {type: order.paid, order: {id: "1", amount_fen: 1}, user: {openid: o}}
    kafka: {topic: events, partition: 3, offset: 42}
    expect:
      bodies:
        paid: {data.topic.value: events, client_msg_id: ` + clientMsgID("events/3/42", "paid") + `}`, nil},
		{"a whole object compares as JSON", `
tests:
  - name: c
    event: {type: order.paid, order: {id: "1", amount_fen: 1}, user: {openid: o}}
    expect: {bodies: {paid: {data.id: {value: "2"}}}}`,
			[]string{`paid: data.id = {"value":"1"}, want {"value":"2"}`}},
		{"a failing when is a failure", `
tests:
  - name: c
    event: {type: order.paid, order: {id: "1", amount_fen: "a lot"}, user: {openid: o}}
    expect: {matched: [paid]}`, []string{"big: when: failed: invalid operation: string > int"}},
		{"an expected when failure", `
tests:
  - name: c
    event: {type: order.paid, order: {id: "1", amount_fen: "a lot"}, user: {openid: o}}
    expect: {matched: [paid], rejected: {big: "when: failed"}}`, nil},
		{"rules under bodies must match", `
tests:
  - name: c
    event: {type: order.paid, order: {id: "1", amount_fen: 1}, user: {openid: o}}
    expect: {bodies: {big: {touser: o}}}`, []string{"big: did not match, want a body"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fx, err := ruletest.Parse("f_test.yaml", []byte(tc.fixture))
			if err != nil {
				t.Fatal(err)
			}
			res := fx.Run(set)
			if len(res) != 1 {
				t.Fatalf("%d results, want 1", len(res))
			}
			if strings.Join(res[0].Failures, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("failures:\n%s\nwant:\n%s", strings.Join(res[0].Failures, "\n"), strings.Join(tc.want, "\n"))
			}
		})
	}
}

func TestParseProblems(t *testing.T) {
	for _, tc := range []struct{ fixture, want string }{
		{"tests: [", "f_test.yaml:1:1: invalid YAML: did not find expected node content"},
		{"", "f_test.yaml:1:1: empty file (want a tests: list)"},
		{"cases: []", "f_test.yaml:1:1: cases: unknown field (known: tests)\nf_test.yaml:1:1: tests: missing"},
		{"tests: []", "f_test.yaml:1:8: tests: want a non-empty list of test cases"},
		{"tests: [{name: a, event: {}, expect: {bodies: {x: {touser: o}}, rejected: {x: ''}}, extra: 1}]",
			"f_test.yaml:1:38: tests[0].expect: rule \"x\" is under both bodies and rejected\n" +
				"f_test.yaml:1:85: tests[0].extra: unknown field (known: name, event, event_file, kafka, expect)"},
		{`tests:
  - name: a
    event: {type: x}
    event_file: e.json
    expect: {matched: []}
  - name: a
    event: [1]
    expect: {}`, `f_test.yaml:4:17: tests[0].event_file: give event or event_file, not both
f_test.yaml:6:5: tests[1].name: duplicate test name "a" (first at line 2)
f_test.yaml:7:12: tests[1].event: want a mapping (the event's JSON object)
f_test.yaml:8:13: tests[1].expect: empty (give matched, bodies or rejected)`},
		{`tests:
  - name: a
    event_file: nope.json
    kafka: {topic: t, partition: -1, time: yesterday}
    expect:
      matched: [x, x]
      bodies: {x: {"": 1}, y: {body_file: nope.json}}
      rejected: {x: 3}`, `f_test.yaml:3:17: tests[0].event_file: open nope.json: no such file or directory
f_test.yaml:4:34: tests[0].kafka.partition: want a non-negative integer
f_test.yaml:4:44: tests[0].kafka.time: want an RFC 3339 time like 2026-11-22T10:00:00Z
f_test.yaml:6:20: tests[0].expect.matched: rule "x" listed twice
f_test.yaml:7:20: tests[0].expect.bodies.x: invalid body path "" (want dotted field names like data.keyword1.value)
f_test.yaml:7:43: tests[0].expect.bodies.y.body_file: open nope.json: no such file or directory
f_test.yaml:8:21: tests[0].expect.rejected.x: want a string`},
	} {
		_, err := ruletest.Parse("f_test.yaml", []byte(tc.fixture))
		if err == nil || err.Error() != tc.want {
			t.Errorf("fixture:\n%s\nerror:\n%v\nwant:\n%s", tc.fixture, err, tc.want)
		}
	}
}

func TestDiscover(t *testing.T) {
	for _, tc := range []struct{ path, rules, fixtures string }{
		{"../../configs/rules", "../../configs/rules", "../../configs/rules/orders_test.yaml ../../configs/rules/shipments_test.yaml"},
		{"../../configs/rules/orders.yaml", "../../configs/rules/orders.yaml", "../../configs/rules/orders_test.yaml"},
		{"../../configs/rules/shipments_test.yaml", "../../configs/rules", "../../configs/rules/shipments_test.yaml"},
	} {
		r, f, err := ruletest.Discover(tc.path)
		if err != nil || r != tc.rules || strings.Join(f, " ") != tc.fixtures {
			t.Errorf("Discover(%s) = %s, %v, %v; want %s, %s", tc.path, r, f, err, tc.rules, tc.fixtures)
		}
	}
	if _, _, err := ruletest.Discover("testdata-none"); err == nil {
		t.Error("Discover of a missing path: no error")
	}
}

// A YAML float in a fixture event stays a float, as the same JSON from Kafka decodes: 1.0 is
// not the int 1.
func TestFixtureFloatsStayFloats(t *testing.T) {
	fx, err := ruletest.Parse("f_test.yaml", []byte(`
tests:
  - name: c
    event: {a: 1.0, b: 1e3, c: 2.5, d: 3}
    expect: {matched: []}
`))
	if err != nil {
		t.Fatal(err)
	}
	want, err := rules.DecodeEvent([]byte(`{"a": 1.0, "b": 1e3, "c": 2.5, "d": 3}`))
	if err != nil {
		t.Fatal(err)
	}
	got := fx.Cases[0].Event.Fields()
	for k, w := range want.Fields() {
		if g := got[k]; fmt.Sprintf("%T %v", g, g) != fmt.Sprintf("%T %v", w, w) {
			t.Errorf("%s: fixture gives %T %v, Kafka's JSON gives %T %v", k, g, g, w, w)
		}
	}
}
