package main

//go:generate go run . schema -o ../../configs/rules.schema.json
//go:generate go run . schema -fixtures -o ../../configs/ruletest.schema.json

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

const schemaUsage = `usage: wxnotify schema [-fixtures] [-o FILE]

Prints the JSON Schema (draft-07) of rule files, generated from the WeChat API catalog this
binary was built with, or with -fixtures the schema of rule fixtures (*_test.yaml). Editors
with the YAML language server use it through a first line
  # yaml-language-server: $schema=../rules.schema.json
The committed copies are configs/rules.schema.json and configs/ruletest.schema.json
(go generate ./cmd/wxnotify).

`

func cmdSchema(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("schema", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, schemaUsage); fs.PrintDefaults() }
	fixtures := fs.Bool("fixtures", false, "the schema of rule fixtures instead of rule files")
	out := fs.String("o", "", "write to `file` instead of stdout")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	s := rulesSchema()
	if *fixtures {
		s = fixtureSchema()
	}
	b, err := encodeSchema(s)
	if err == nil && *out != "" {
		err = os.WriteFile(*out, b, 0o644)
	} else if err == nil {
		_, err = stdout.Write(b)
	}
	if err != nil {
		fmt.Fprintf(stderr, "wxnotify schema: %v\n", err)
		return 1
	}
	return 0
}

// object is a JSON object that keeps its keys in the order written, so the generated schema
// reads top-down like a rule file and diffs stay small.
type object []member

type member struct {
	key string
	val any
}

// obj builds an object from key, value pairs.
func obj(kv ...any) object {
	o := make(object, 0, len(kv)/2)
	for i := 0; i+1 < len(kv); i += 2 {
		o = append(o, member{kv[i].(string), kv[i+1]})
	}
	return o
}

func (o object) MarshalJSON() ([]byte, error) {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, m := range o {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := json.Marshal(m.key)
		buf.Write(k)
		buf.WriteByte(':')
		v, err := marshal(m.val)
		if err != nil {
			return nil, err
		}
		buf.Write(v)
	}
	buf.WriteByte('}')
	return buf.Bytes(), nil
}

// marshal is json.Marshal without HTML escaping (descriptions may say <, > or &).
func marshal(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func encodeSchema(s object) ([]byte, error) {
	b, err := marshal(s)
	if err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if err := json.Indent(&buf, b, "", "  "); err != nil {
		return nil, err
	}
	buf.WriteByte('\n')
	return buf.Bytes(), nil
}

const (
	durationPattern = `^(([0-9]+(\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h))+$`
	clockPattern    = `^([01][0-9]|2[0-3]):[0-5][0-9]$`
	// A single ${...}: its value is the whole object (rules: "Message strings").
	wholeExprPattern = `^\$\{.*\}$`
	// Any string with an expression: its value is only known per event.
	exprPattern = `\$\{`
)

func ref(name string) object { return obj("$ref", "#/definitions/"+name) }

// rulesSchema is the schema of rule files. The rule keys and their meaning mirror the rules
// package doc; the message shapes come from wxapi, so a new API or field shows up here on
// go generate.
func rulesSchema() object {
	var cond []any
	defs := obj(
		"rule", nil, // filled below, after cond
		"expression", obj("type", "string", "minLength", 1,
			"description", "An expr-lang expression over `event` and `kafka`; helpers: yuan, cny, timefmt, timeparse, truncate, mask, default, has."),
		"keyExpression", obj("type", "string", "minLength", 1,
			"description", "An expression, or a string with ${...} pieces; its value must not be empty."),
		"duration", obj("type", "string", "pattern", durationPattern, "description", "A Go duration like 90s, 15m or 2h."),
		"wholeExpression", obj("type", "string", "pattern", wholeExprPattern,
			"description", "A single ${...} whose value (an object) is the whole field."),
		"dataEntry", obj("type", "object", "additionalProperties", false, "required", []string{"value"},
			"properties", obj(
				"value", obj("type", "string", "description", "Text, with ${...} expressions."),
				"color", obj("type", "string", "description", "Text colour like #173177 (legacy template APIs)."),
			)),
		"data", obj("type", "object", "description", "Template data: keyword name -> {value, color}. Keyword names are the template's.",
			"additionalProperties", obj("anyOf", []any{ref("dataEntry"), ref("wholeExpression")})),
	)
	names := wxapi.Names()
	for _, name := range names {
		api, _ := wxapi.Lookup(name)
		body := fieldSchema(&api.Body)
		desc := fmt.Sprintf("The %s request body (POST %s), field for field; strings may embed ${...}.", api.Name, api.Path)
		if api.Retired != 0 {
			desc += fmt.Sprintf(" WeChat retired this API on production accounts (errcode %d).", api.Retired)
		}
		if api.IdempotencyField != "" {
			desc += " wxnotify sets " + api.IdempotencyField + " when the rule does not."
		}
		body = append(obj("description", desc), body...)
		var halves []any
		for _, p := range api.TemplateIDPaths {
			if len(p) > 1 {
				halves = append(halves, obj("required", []string{p[0]}))
			}
		}
		if len(halves) > 0 {
			body = append(body, member{"anyOf", halves})
		}
		defs = append(defs, member{name, body})
		cond = append(cond, obj(
			"if", obj("properties", obj("api", obj("const", name)), "required", []string{"api"}),
			"then", obj("properties", obj("message", ref(name))),
		))
	}
	defs[0].val = obj(
		"type", "object",
		"additionalProperties", false,
		"required", []string{"name", "when", "account", "api", "message"},
		"properties", obj(
			"name", obj("type", "string", "minLength", 1, "description", "Unique across the whole rule set."),
			"description", obj("type", "string"),
			"when", obj("allOf", []any{ref("expression")}, "description", "A boolean expression: the rule applies when it is true."),
			"account", obj("type", "string", "minLength", 1, "description", "A WeChat account defined under wechat.accounts in the config."),
			"api", obj("enum", names, "description", "The WeChat send API."),
			"message", obj("type", "object", "description", "The request body of the api, field for field."),
			"retry_on_timeout", obj("type", "boolean", "default", false,
				"description", "Allow retrying a timed-out call on an API with no idempotency key (may send twice)."),
			"truncate", obj("type", "boolean", "default", false,
				"description", "Truncate over-long subscribe/OA values with … instead of rejecting."),
			"dry_run", obj("type", "boolean", "default", false, "description", "Do everything but the WeChat call."),
			"expire_after", obj("allOf", []any{ref("duration")}, "description", "Drop the notification if the event is older than this."),
			"dedupe", obj("type", "object", "additionalProperties", false, "required", []string{"key", "window"},
				"description", "Drop a notification whose key was already sent within window.",
				"properties", obj("key", ref("keyExpression"), "window", ref("duration"))),
			"throttle", obj("type", "object", "additionalProperties", false, "required", []string{"max", "per"},
				"description", "At most max notifications per period for each key (default key: the touser).",
				"properties", obj(
					"max", obj("type", "integer", "minimum", 1),
					"per", ref("duration"),
					"key", ref("keyExpression"))),
			"quiet_hours", obj("type", "object", "additionalProperties", false, "required", []string{"start", "end", "action"},
				"description", "A daily window (may wrap midnight) in which notifications are skipped or delayed.",
				"properties", obj(
					"start", obj("type", "string", "pattern", clockPattern, "description", "HH:MM"),
					"end", obj("type", "string", "pattern", clockPattern, "description", "HH:MM"),
					"zone", obj("type", "string", "minLength", 1, "description", "IANA zone; default rules.zone (Asia/Shanghai)."),
					"action", obj("enum", []string{"skip", "delay"}))),
			"on_daily_quota", obj("enum", []string{"fail", "delay"}, "default", "fail",
				"description", "What WeChat's daily quota (45009) means for this rule: fail, or delay until 00:00 Beijing time (in the delay topic; expire_after still applies)."),
		),
		"allOf", cond,
	)
	return obj(
		"$schema", "http://json-schema.org/draft-07/schema#",
		"$id", "https://github.com/wxnotify/wxnotify/configs/rules.schema.json",
		"title", "wxnotify rule file",
		"description", "Generated from the WeChat API catalog by `go generate ./cmd/wxnotify` (wxnotify schema); do not edit. Format: README \"Rule files\".",
		"type", "object",
		"additionalProperties", false,
		"required", []string{"rules"},
		"properties", obj("rules", obj("type", []string{"array", "null"}, "items", ref("rule"))),
		"definitions", defs,
	)
}

// fieldSchema is the schema of one wxapi body field, as written in a rule's message.
func fieldSchema(f *wxapi.Field) object {
	switch f.Kind {
	case wxapi.Object:
		props := make(object, 0, len(f.Fields))
		var required []string
		for i := range f.Fields {
			c := &f.Fields[i]
			props = append(props, member{c.Name, fieldSchema(c)})
			if c.Required {
				required = append(required, c.Name)
			}
		}
		s := obj("type", "object", "additionalProperties", false)
		if len(required) > 0 {
			s = append(s, member{"required", required})
		}
		s = append(s, member{"properties", props})
		if f.Name == "" {
			return s // the body itself: a ${...} cannot stand for the whole message
		}
		return obj("anyOf", []any{s, ref("wholeExpression")})
	case wxapi.Data:
		return ref("data")
	}
	s := obj("type", "string")
	if f.Required {
		s = append(s, member{"minLength", 1})
	}
	if len(f.Enum) > 0 {
		return obj("anyOf", []any{obj("enum", f.Enum), obj("type", "string", "pattern", exprPattern)})
	}
	return s
}

// fixtureSchema is the schema of rule fixtures (rules/ruletest).
func fixtureSchema() object {
	ruleMap := func(desc string, v any) object {
		return obj("type", "object", "description", desc, "additionalProperties", v)
	}
	return obj(
		"$schema", "http://json-schema.org/draft-07/schema#",
		"$id", "https://github.com/wxnotify/wxnotify/configs/ruletest.schema.json",
		"title", "wxnotify rule fixture (*_test.yaml)",
		"description", "Generated by `go generate ./cmd/wxnotify` (wxnotify schema -fixtures); do not edit. Format: README \"Rule fixtures\".",
		"type", "object",
		"additionalProperties", false,
		"required", []string{"tests"},
		"properties", obj("tests", obj("type", "array", "minItems", 1, "items", obj(
			"type", "object",
			"additionalProperties", false,
			"required", []string{"name", "expect"},
			"oneOf", []any{obj("required", []string{"event"}), obj("required", []string{"event_file"})},
			"properties", obj(
				"name", obj("type", "string", "minLength", 1, "description", "Unique in the file."),
				"event", obj("type", "object", "description", "The event, as its JSON object."),
				"event_file", obj("type", "string", "description", "A file holding the event's JSON object, relative to the fixture."),
				"kafka", obj("type", "object", "additionalProperties", false, "description", "Where the event came from (the `kafka` of expressions).",
					"properties", obj(
						"topic", obj("type", "string"),
						"partition", obj("type", "integer", "minimum", 0),
						"offset", obj("type", "integer", "minimum", 0),
						"key", obj("type", "string"),
						"time", obj("type", "string", "format", "date-time"))),
				"expect", obj("type", "object", "additionalProperties", false, "minProperties", 1,
					"properties", obj(
						"matched", obj("type", "array", "uniqueItems", true, "items", obj("type", "string"),
							"description", "Exactly the rules whose `when` is true (rendered or rejected)."),
						"bodies", ruleMap("Rule name -> expected body: dotted body paths -> values (null = absent), and/or body_file.",
							obj("type", "object", "minProperties", 1, "properties", obj(
								"body_file", obj("type", "string", "description", "The whole expected body (JSON; whitespace ignored), relative to the fixture."),
							))),
						"rejected", ruleMap("Rule name -> a substring of its rejection error (\"\" or null: any).",
							obj("type", []string{"string", "null"})),
					)),
			),
		))),
	)
}
