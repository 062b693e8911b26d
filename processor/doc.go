// Package processor owns the flow from a Kafka event to its outcome records: it consumes the
// events topics in a consumer group, evaluates the current rule set, schedules the WeChat sends
// (many in flight, ordered per Kafka key, one at a time per recipient), publishes one outcome per
// notification, and commits each partition's offsets only up to the longest prefix of events
// whose outcomes the broker has acknowledged.
//
// It also enforces the per-rule notification controls that package rules parses (controls.go:
// expire_after, quiet_hours, dedupe, throttle; dry_run) and delivers notifications delayed by
// quiet hours through a delay topic it consumes in the same group (delay.go).
//
// It is the only package that knows the whole flow. What it consumes it names by small
// interfaces (Sender, Publisher, RuleSource); it does not know HTTP, token handling or how the
// outcome writer batches.
package processor
