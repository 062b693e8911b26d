package processor

import (
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
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

	// notificationCounters caches notifications' children by notificationLabels: an outcome
	// is counted for every notification, and WithLabelValues hashes and validates its labels
	// under a lock each time. Rule names and APIs are few, so it stays small.
	notificationCounters sync.Map
}

type notificationLabels struct{ rule, api, status string }

// notified counts one outcome of the rule's notification.
func (m *metrics) notified(rule, api, status string) {
	k := notificationLabels{rule, api, status}
	if c, ok := m.notificationCounters.Load(k); ok {
		c.(prometheus.Counter).Inc()
		return
	}
	c := m.notifications.WithLabelValues(rule, api, status)
	m.notificationCounters.Store(k, c)
	c.Inc()
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
		controlEvicted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_control_keys_evicted_total",
			Help: "Dedupe or throttle keys forgotten before their window ended because a rule's state reached processor.control_max_keys.",
		}, []string{"control"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.consumed, m.unmatched, m.deadLettered, m.notifications, m.ruleErrors,
			m.inFlight, m.lag, m.lastCommit, m.commitErrors, m.assigned, m.rebalances, m.eventSeconds,
			m.delayed, m.delayedHeld, m.controlEvicted, m.wechatHeld, m.notificationsHeld, m.heldEvents} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register processor metrics: %w", err)
			}
		}
	}
	return m, nil
}
