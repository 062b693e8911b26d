package kafkaio

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

type metrics struct {
	fetches  prometheus.Counter
	produces prometheus.Counter
	written  *prometheus.CounterVec
	failures *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		fetches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxnotify_kafka_fetch_requests_total",
			Help: "Fetch requests sent (one per leader broker covers all its assigned partitions).",
		}),
		produces: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "wxnotify_kafka_produce_requests_total",
			Help: "Produce requests sent; records written / requests is the batching achieved.",
		}),
		written: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_kafka_records_written_total",
			Help: "Records acknowledged by the broker, by topic (outcome, dead-letter and delay topics).",
		}, []string{"topic"}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_kafka_write_failures_total",
			Help: "Produce attempts that failed, by topic: retried with backoff when retriable, otherwise the record's writer reports a permanent error.",
		}, []string{"topic"}),
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.fetches, m.produces, m.written, m.failures} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("register kafka metrics: %w", err)
			}
		}
	}
	return m, nil
}

// topicsSeen makes the per-topic series exist at 0 before the first write, so that an alert on
// their rate sees them from the start.
func (m *metrics) topicsSeen(topics ...string) {
	for _, t := range topics {
		m.written.WithLabelValues(t)
		m.failures.WithLabelValues(t)
	}
}
