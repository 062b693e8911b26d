package rules

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"strconv"
	"time"
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

// DecodeEvent decodes a JSON object into an Event. Anything else (an array, a scalar, trailing
// data) is an error.
func DecodeEvent(data []byte) (Event, error) {
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

// Meta is where an event came from in Kafka, the `kafka` of rule expressions.
type Meta struct {
	// EventID identifies the event for idempotency keys: its event_id, or "topic/partition/offset"
	// when it has none. The caller resolves it.
	EventID   string
	Topic     string
	Partition int
	Offset    int64
	Key       []byte
	Time      time.Time
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
