package processor

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechat"
	"github.com/wxnotify/wxnotify/sink/wxapi"
)

type metrics struct {
	consumed      *prometheus.CounterVec
	unmatched     prometheus.Counter
	deadLettered  *prometheus.CounterVec
	notifications *prometheus.CounterVec
	ruleErrors    *prometheus.CounterVec
	inFlight      prometheus.Gauge
	lag           *prometheus.GaugeVec
	lastCommit    prometheus.Gauge
	commitErrors  prometheus.Counter
	assigned      prometheus.Gauge
	rebalances    prometheus.Counter
	eventSeconds  prometheus.Histogram

	delayed        *prometheus.CounterVec
	delayedHeld    prometheus.Gauge
	controlEvicted *prometheus.CounterVec

	wechatHeld        *prometheus.GaugeVec
	notificationsHeld prometheus.Gauge
	heldEvents        prometheus.Gauge

	// outcomes counts the same outcomes as notifications, by API, status and class.
	outcomes *prometheus.CounterVec

	// notificationCounters caches the children of notifications and outcomes by
	// notificationLabels: an outcome is counted for every notification, and WithLabelValues
	// hashes and validates its labels under a lock each time. Rule names, APIs, statuses and
	// classes are few, so it stays small.
	notificationCounters sync.Map
}

type notificationLabels struct{ rule, api, status, class string }

type notificationCounters struct{ byRule, byClass prometheus.Counter }

// classNone is the class label of an outcome for which no WeChat call was made.
const classNone = "none"

// notified counts one outcome of the rule's notification; class is the WeChat answer's class,
// "" when no call was made.
func (m *metrics) notified(rule, api, status, class string) {
	k := notificationLabels{rule, api, status, class}
	if c, ok := m.notificationCounters.Load(k); ok {
		c := c.(notificationCounters)
		c.byRule.Inc()
		c.byClass.Inc()
		return
	}
	if class == "" {
		class = classNone
	}
	c := notificationCounters{m.notifications.WithLabelValues(rule, api, status), m.outcomes.WithLabelValues(api, status, class)}
	m.notificationCounters.Store(k, c)
	c.byRule.Inc()
	c.byClass.Inc()
}

// Pre-created series. Counters with labels appear only at their first increment, so an alert
// on their rate, or a dashboard panel, would see nothing until then; the label values known at
// start are therefore created at 0: from the config (topics), from the rule set (rules, their
// APIs and accounts, again for each set a reload installs) and from fixed lists (reasons,
// controls, statuses, classes). Only small sets are multiplied: rules x 6 statuses, the
// rules' (account, API) pairs, and 4 APIs x the 10 (status, class) pairs an outcome can have:
// about 10 series per rule plus 50.
// Series of a rule that a reload removed stay (they stop growing), as any counter would.

var (
	deadLetterReasons = []string{"undecodable", "invalid_utf8"}
	controlNames      = []string{"dedupe", "throttle"}
	allStatuses       = []string{StatusSent, StatusFailed, StatusRejected, StatusDryRun, StatusSkipped, StatusExpired}
	// outcomeClasses are the (status, class) pairs of outcomes: sent after an ok answer,
	// failed after any other answer class, the rest without a call (the rare expired-after-
	// 45009 of on_daily_quota: delay appears when it happens).
	outcomeClasses = [][2]string{
		{StatusSent, string(wechat.ClassOK)},
		{StatusFailed, string(wechat.ClassTransient)}, {StatusFailed, string(wechat.ClassToken)},
		{StatusFailed, string(wechat.ClassQuota)}, {StatusFailed, string(wechat.ClassPermanent)},
		{StatusFailed, string(wechat.ClassConfig)},
		{StatusRejected, classNone}, {StatusDryRun, classNone}, {StatusSkipped, classNone}, {StatusExpired, classNone},
	}
)

// prepare creates the series known from the config.
func (m *metrics) prepare(cfg Config) {
	for _, t := range cfg.Topics {
		m.consumed.WithLabelValues(t)
	}
	if cfg.DelayTopic != "" {
		m.consumed.WithLabelValues(cfg.DelayTopic)
	}
	for _, r := range deadLetterReasons {
		m.deadLettered.WithLabelValues(r)
	}
	for _, c := range controlNames {
		m.controlEvicted.WithLabelValues(c)
	}
	for _, api := range wxapi.Names() {
		for _, sc := range outcomeClasses {
			m.outcomes.WithLabelValues(api, sc[0], sc[1])
		}
	}
}

// prepareRules creates the series of set's rules.
func (m *metrics) prepareRules(set *rules.Set) {
	if set == nil {
		return
	}
	for _, r := range set.Rules {
		for _, st := range allStatuses {
			m.notifications.WithLabelValues(r.Name, r.API, st)
		}
		m.ruleErrors.WithLabelValues(r.Name)
		// Every rule, not only those with quiet_hours or on_daily_quota delay: the series is one
		// per rule, and a panel or alert over delays then sees the rules from the start.
		m.delayed.WithLabelValues(r.Name, r.API)
		m.wechatHeld.WithLabelValues(r.Account, r.API)
	}
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		consumed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_events_consumed_total", Help: "Events fetched from Kafka, by topic.",
		}, []string{"topic"}),
		unmatched: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxnotify_events_unmatched_total", Help: "Events that matched no rule (no outcome is written for them).",
		}),
		deadLettered: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_events_dead_lettered_total", Help: "Events written to the dead-letter topic, by reason.",
		}, []string{"reason"}),
		notifications: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_notifications_total", Help: "Notifications by rule, api and outcome status.",
		}, []string{"rule", "api", "status"}),
		ruleErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_rule_when_errors_total", Help: "Evaluations of a rule's `when` that failed at run time (treated as no match).",
		}, []string{"rule"}),
		inFlight: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_inflight_events", Help: "Events fetched whose outcomes are not yet all acknowledged.",
		}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wxnotify_consumer_lag", Help: "Records between the partition's high watermark and the committed offset, per assigned partition.",
		}, []string{"topic", "partition"}),
		lastCommit: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_last_commit_timestamp_seconds", Help: "Unix time of the last successful offset commit.",
		}),
		commitErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxnotify_commit_errors_total", Help: "Offset commits that failed (retried on the next tick).",
		}),
		assigned: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_assigned_partitions", Help: "Partitions assigned to this process in the current generation.",
		}),
		rebalances: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxnotify_group_generations_total", Help: "Consumer group generations this process joined.",
		}),
		eventSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "wxnotify_event_duration_seconds",
			Help:    "From fetching an event to the acknowledgement of its last outcome.",
			Buckets: []float64{.005, .01, .025, .05, .075, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}),
		delayed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_notifications_delayed_total",
			Help: "Notifications written to the delay topic by quiet_hours (action delay); their outcome is counted when they are sent.",
		}, []string{"rule", "api"}),
		delayedHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_delayed_held", Help: "Delayed notifications read from the delay topic and not yet finished (waiting for their time or being sent).",
		}),
		wechatHeld: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "wxnotify_wechat_held",
			Help: "1 while the account's API keeps failing transiently and its notifications are held (probed with backoff) instead of failed.",
		}, []string{"account", "api"}),
		notificationsHeld: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_notifications_held", Help: "Notifications held (parked) while their account and API are held.",
		}),
		heldEvents: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "wxnotify_held_events", Help: "Events counted in the held budget (processor.max_held) instead of the in-flight budget.",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_outcomes_total",
			Help: "Outcomes by api, status and the class of WeChat's final answer (none: no call was made); the outcomes of wxnotify_notifications_total, by class instead of rule.",
		}, []string{"api", "status", "class"}),
		controlEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_control_keys_evicted_total",
			Help: "Dedupe or throttle keys forgotten before their window ended because a rule's state reached processor.control_max_keys.",
		}, []string{"control"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.consumed, m.unmatched, m.deadLettered, m.notifications, m.ruleErrors,
			m.inFlight, m.lag, m.lastCommit, m.commitErrors, m.assigned, m.rebalances, m.eventSeconds,
			m.delayed, m.delayedHeld, m.controlEvicted, m.wechatHeld, m.notificationsHeld, m.heldEvents, m.outcomes} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register processor metrics: %w", err)
			}
		}
	}
	return m, nil
}
