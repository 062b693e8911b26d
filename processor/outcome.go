package processor

import (
	"encoding/json"
	"time"
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
