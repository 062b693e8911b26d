// Package processor owns the flow from a Kafka event to its outcome records: for each consumer
// group generation it takes the fetched records of the events topics, evaluates the current rule
// set, schedules the WeChat sends (many in flight; ordered per Kafka key through each account and
// API; one at a time per recipient and API), publishes one outcome per notification, and commits
// each partition's offsets only up to the longest prefix of events whose outcomes the broker has
// acknowledged, with the finished offsets beyond it in the commit metadata (commitmeta.go), so a
// restart redoes only unfinished work.
//
// It also enforces the per-rule notification controls that package rules parses (controls.go:
// expire_after, quiet_hours, dedupe, throttle; dry_run), delivers notifications delayed by quiet
// hours or by WeChat's daily quota through a delay topic it consumes in the same group (delay.go),
// and holds notifications through a WeChat outage instead of failing them (hold.go).
//
// It is the only package that knows the whole flow. What it consumes it names by small
// interfaces (Consumer, Publisher, Sender, RuleSource); it does not know HTTP, token handling,
// Kafka connections or how records are batched: package kafkaio does the Kafka I/O.
package processor
