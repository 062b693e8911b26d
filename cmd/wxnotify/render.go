package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// stdin is what `render -event -` reads; tests replace it.
var stdin io.Reader = os.Stdin

const renderUsage = `usage: wxnotify render (-config FILE | -rules PATH) -event FILE [-explain] [-pretty]

Evaluates the rules against each event in FILE (one JSON object, or several one after another
as in a .jsonl file; - reads stdin) and prints, per event:

  == event ID (FILE:LINE)
  RULE: API POST PATH (account ACCOUNT[, dedupe key K][, throttle key K][, dry run])
  BODY                         the exact bytes that would be POSTed, on one line
  RULE: API REJECTED: FIELD: EXPR evaluated to nil
  RULE: no match: REASON       (with -explain)

No network, no token. Exit status: 0 all matching rules rendered, 1 a rule was rejected (or
its condition failed) or the input is bad, 2 usage.

`

func cmdRender(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("render", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, renderUsage); fs.PrintDefaults() }
	var src ruleSource
	src.flags(fs)
	eventPath := fs.String("event", "", "JSON event `file` (one object or a stream of objects); - reads stdin")
	explain := fs.Bool("explain", false, "also say why each rule that does not match does not")
	pretty := fs.Bool("pretty", false, "indent bodies (then they are no longer the exact bytes sent)")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if (src.config == "" && src.rules == "") || *eventPath == "" {
		fmt.Fprint(stderr, "wxnotify render: give -config FILE or -rules PATH, and -event FILE\n\n")
		fs.Usage()
		return 2
	}
	set, _, problems := src.load() // render needs no secrets: what run will need is check's to list
	if set == nil || len(problems) > 0 {
		for _, p := range problems {
			fmt.Fprintln(stderr, p)
		}
		return 1
	}
	var data []byte
	var err error
	name := *eventPath
	if name == "-" {
		name = "stdin"
		data, err = io.ReadAll(stdin)
	} else {
		data, err = os.ReadFile(name)
	}
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify render: %v\n", err)
		return 1
	}
	events, err := splitEvents(data)
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify render: %s:%v\n", name, err)
		return 1
	}
	r := renderer{set: set, out: stdout, explain: *explain, pretty: *pretty}
	for _, e := range events {
		ev, err := rules.DecodeEvent(e.raw)
		if err != nil {
			fmt.Fprintf(stderr, "wxnotify render: %s:%d: %v\n", name, e.line, err)
			return 1
		}
		id := ev.ID()
		if id == "" {
			id = "(no event_id)"
		}
		fmt.Fprintf(stdout, "== event %s (%s:%d)\n", id, name, e.line)
		r.event(ev)
	}
	if r.failed {
		return 1
	}
	return 0
}

type rawEvent struct {
	raw  []byte
	line int
}

// splitEvents splits a stream of JSON values, noting the line each starts on. An error starts
// with the line number.
func splitEvents(data []byte) ([]rawEvent, error) {
	dec := json.NewDecoder(bytes.NewReader(data))
	var out []rawEvent
	for {
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if err == io.EOF {
			break
		}
		if err != nil {
			off := dec.InputOffset()
			var se *json.SyntaxError
			if errors.As(err, &se) {
				off = se.Offset
			}
			return nil, fmt.Errorf("%d: %w", 1+bytes.Count(data[:min(int(off), len(data))], []byte("\n")), err)
		}
		start := int(dec.InputOffset()) - len(raw) // InputOffset is just past the value
		line := 1 + bytes.Count(data[:start], []byte("\n"))
		out = append(out, rawEvent{raw: raw, line: line})
	}
	if len(out) == 0 {
		return nil, errors.New("1: no events")
	}
	return out, nil
}

type renderer struct {
	set             *rules.Set
	out             io.Writer
	explain, pretty bool
	failed          bool
}

func (r *renderer) event(ev rules.Event) {
	meta := rules.Meta{EventID: ev.ID()}
	notes := map[*rules.Rule]rules.Notification{}
	for _, n := range r.set.Evaluate(ev, meta, nil) {
		notes[n.Rule] = n
	}
	var why map[*rules.Rule]string
	if r.explain {
		why = map[*rules.Rule]string{}
		for _, x := range r.set.Explain(ev, meta) {
			why[x.Rule] = x.Reason
		}
	}
	matched := 0
	for _, rule := range r.set.Rules {
		n, ok := notes[rule]
		switch {
		case !ok:
			if r.explain {
				fmt.Fprintf(r.out, "%s: no match: %s\n", rule.Name, why[rule])
			}
		case n.WhenErr:
			r.failed = true
			fmt.Fprintf(r.out, "%s: FAILED: %v\n", rule.Name, n.Err)
		case n.Err != nil:
			matched++
			r.failed = true
			fmt.Fprintf(r.out, "%s: %s REJECTED: %v\n", rule.Name, rule.API, n.Err)
		default:
			matched++
			r.body(n)
		}
	}
	if matched == 0 && !r.explain {
		fmt.Fprintln(r.out, "no rule matched (-explain says why)")
	}
}

func (r *renderer) body(n rules.Notification) {
	rule := n.Rule
	path := "?"
	if api, ok := wxapi.Lookup(rule.API); ok {
		path = api.Path
	}
	extra := ""
	if n.DedupeKey != "" {
		extra += ", dedupe key " + strconv.Quote(n.DedupeKey)
	}
	if n.ThrottleKey != "" {
		extra += ", throttle key " + strconv.Quote(n.ThrottleKey)
	}
	if rule.DryRun {
		extra += ", dry run"
	}
	fmt.Fprintf(r.out, "%s: %s POST %s (account %s%s)\n", rule.Name, rule.API, path, rule.Account, extra)
	body := n.Body
	if r.pretty {
		var buf bytes.Buffer
		if json.Indent(&buf, body, "", "  ") == nil {
			body = buf.Bytes()
		}
	}
	r.out.Write(body)
	io.WriteString(r.out, "\n")
}
