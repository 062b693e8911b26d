package processor

import (
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"
)

// OutcomeSchema identifies version 1 of the outcome record.
const OutcomeSchema = "wxnotify.outcome/v1"

// Outcome statuses.
const (
	StatusSent     = "sent"     // WeChat accepted the message
	StatusFailed   = "failed"   // WeChat (or the client, after retries) refused or could not be reached
	StatusRejected = "rejected" // not sent: the rule could not build a valid body from the event
	StatusDryRun   = "dry_run"  // not sent: the rule or the process is in dry-run mode
	StatusSkipped  = "skipped"  // not sent: dedupe, throttle or quiet_hours (action skip); errmsg says which
	StatusExpired  = "expired"  // not sent: the event was older than the rule's expire_after
)

// Outcome is the record written to the outcomes topic, one per notification. Its JSON form is
// pinned (analytics consume it); add fields, never rename or retype them.
type Outcome struct {
	Schema      string          `json:"schema"`
	EventID     string          `json:"event_id"`
	Rule        string          `json:"rule"`
	RuleVersion string          `json:"rule_version"`
	Account     string          `json:"account"`
	API         string          `json:"api"`
	ToUser      string          `json:"touser"`
	TemplateID  string          `json:"template_id"`
	Status      string          `json:"status"`
	ErrCode     int             `json:"errcode"`
	ErrMsg      string          `json:"errmsg"`
	MsgID       int64           `json:"msgid,omitempty"`
	Attempts    int             `json:"attempts"`
	Class       string          `json:"class,omitempty"`
	Source      Source          `json:"source"`
	EventTime   string          `json:"event_time"`
	ProcessedAt string          `json:"processed_at"`
	LatencyMS   float64         `json:"latency_ms"`
	Body        json.RawMessage `json:"body,omitempty"` // dry_run only: what would have been sent
	// DelayedUntil is set when quiet_hours (action delay) held the notification: the end of the
	// quiet window it waited for.
	DelayedUntil string `json:"delayed_until,omitempty"`
}

// Source is where the event was read.
type Source struct {
	Topic     string `json:"topic"`
	Partition int    `json:"partition"`
	Offset    int64  `json:"offset"`
}

const timeLayout = "2006-01-02T15:04:05.000Z07:00" // RFC 3339 with milliseconds

func formatTime(t time.Time) string { return t.UTC().Format(timeLayout) }

// latencyMS is d in milliseconds rounded to microseconds.
func latencyMS(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// appendJSON appends o's JSON form, byte for byte what json.Marshal(o) writes (TestOutcomeJSON
// holds it to that), without reflection: an outcome is encoded for every notification. An
// outcome with a body (dry runs only) goes through json.Marshal, which compacts and escapes the
// raw body.
func (o *Outcome) appendJSON(b []byte) ([]byte, error) {
	if len(o.Body) > 0 {
		v, err := json.Marshal(o)
		return append(b, v...), err
	}
	b = append(b, `{"schema":`...)
	b = appendJSONString(b, o.Schema)
	b = append(b, `,"event_id":`...)
	b = appendJSONString(b, o.EventID)
	b = append(b, `,"rule":`...)
	b = appendJSONString(b, o.Rule)
	b = append(b, `,"rule_version":`...)
	b = appendJSONString(b, o.RuleVersion)
	b = append(b, `,"account":`...)
	b = appendJSONString(b, o.Account)
	b = append(b, `,"api":`...)
	b = appendJSONString(b, o.API)
	b = append(b, `,"touser":`...)
	b = appendJSONString(b, o.ToUser)
	b = append(b, `,"template_id":`...)
	b = appendJSONString(b, o.TemplateID)
	b = append(b, `,"status":`...)
	b = appendJSONString(b, o.Status)
	b = append(b, `,"errcode":`...)
	b = strconv.AppendInt(b, int64(o.ErrCode), 10)
	b = append(b, `,"errmsg":`...)
	b = appendJSONString(b, o.ErrMsg)
	if o.MsgID != 0 {
		b = append(b, `,"msgid":`...)
		b = strconv.AppendInt(b, o.MsgID, 10)
	}
	b = append(b, `,"attempts":`...)
	b = strconv.AppendInt(b, int64(o.Attempts), 10)
	if o.Class != "" {
		b = append(b, `,"class":`...)
		b = appendJSONString(b, o.Class)
	}
	b = append(b, `,"source":{"topic":`...)
	b = appendJSONString(b, o.Source.Topic)
	b = append(b, `,"partition":`...)
	b = strconv.AppendInt(b, int64(o.Source.Partition), 10)
	b = append(b, `,"offset":`...)
	b = strconv.AppendInt(b, o.Source.Offset, 10)
	b = append(b, `},"event_time":`...)
	b = appendJSONString(b, o.EventTime)
	b = append(b, `,"processed_at":`...)
	b = appendJSONString(b, o.ProcessedAt)
	b = append(b, `,"latency_ms":`...)
	var err error
	if b, err = appendJSONFloat(b, o.LatencyMS); err != nil {
		return b, err
	}
	if o.DelayedUntil != "" {
		b = append(b, `,"delayed_until":`...)
		b = appendJSONString(b, o.DelayedUntil)
	}
	return append(b, '}'), nil
}

// encodedLen is a capacity for o's JSON form that is exact unless strings need escapes.
func (o *Outcome) encodedLen() int {
	const fixed = 400 // names, punctuation and numbers
	return fixed + len(o.Schema) + len(o.EventID) + len(o.Rule) + len(o.RuleVersion) + len(o.Account) +
		len(o.API) + len(o.ToUser) + len(o.TemplateID) + len(o.Status) + len(o.ErrMsg) + len(o.Class) +
		len(o.Source.Topic) + len(o.EventTime) + len(o.ProcessedAt) + len(o.DelayedUntil)
}

// appendJSONString is encoding/json's string encoding with HTML escaping (json.Marshal's): <, >
// and & as \u003c..., control characters escaped, invalid UTF-8 as \ufffd, U+2028 and U+2029
// escaped.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xF])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hex[r&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// jsonSafe is encoding/json's htmlSafeSet: the ASCII bytes written as they are.
var jsonSafe = func() (safe [utf8.RuneSelf]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		safe[c] = c != '"' && c != '\\' && c != '<' && c != '>' && c != '&'
	}
	return safe
}()

// appendJSONFloat is encoding/json's float64 encoding (ES6 number to string).
func appendJSONFloat(b []byte, f float64) ([]byte, error) {
	if math.IsInf(f, 0) || math.IsNaN(f) {
		return b, fmt.Errorf("json: unsupported value: %v", f)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b, nil
}
