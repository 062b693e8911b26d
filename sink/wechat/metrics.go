package wechat

import (
	"strconv"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are registered on the Registerer given to New. Labels are bounded: account names come
// from config, api from the wxapi catalog, errcode from WeChat's finite list; never an openid.
type metrics struct {
	duration      *prometheus.HistogramVec
	responses     *prometheus.CounterVec
	tokenFetches  *prometheus.CounterVec
	tokenErrors   *prometheus.CounterVec
	retries       *prometheus.CounterVec
	breakerTrips  *prometheus.CounterVec
	quotaTrips    *prometheus.CounterVec
	quotaPaused   *prometheus.Desc
	breakerOpen   *prometheus.Desc
	stateSnapshot func(emit func(desc *prometheus.Desc, v float64, labels ...string))
}

func newMetrics() *metrics {
	return &metrics{
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "wxnotify_wechat_request_duration_seconds",
			Help:    "Duration of one HTTP attempt to a WeChat send API, by API.",
			Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
		}, []string{"api"}),
		responses: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_wechat_responses_total",
			Help: "HTTP attempts to WeChat send APIs by API and errcode (-2: no WeChat answer; http_NNN: HTTP status other than 200).",
		}, []string{"api", "errcode"}),
		tokenFetches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_token_fetches_total",
			Help: "Access token fetches by account and reason (initial, expired, invalidated).",
		}, []string{"account", "reason"}),
		tokenErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_token_fetch_errors_total",
			Help: "Failed access token fetches by account.",
		}, []string{"account"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_wechat_retries_total",
			Help: "Retries of WeChat sends by API and the class of the failure retried (transient, token, quota).",
		}, []string{"api", "class"}),
		breakerTrips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_breaker_trips_total",
			Help: "Circuit breaker openings (config faults) by account.",
		}, []string{"account"}),
		quotaTrips: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "wxnotify_quota_trips_total",
			Help: "Quota stops (kind daily: 45009) and pauses (kind minute: 45011) by account and API.",
		}, []string{"account", "api", "kind"}),
		quotaPaused: prometheus.NewDesc("wxnotify_quota_paused",
			"1 while sends of (account, api) are stopped by a quota: kind daily (45009, until 00:00 Asia/Shanghai) or minute (45011).",
			[]string{"account", "api", "kind"}, nil),
		breakerOpen: prometheus.NewDesc("wxnotify_breaker_open",
			"Circuit breakers of the account currently refusing sends (per template, plus the account's token breaker).",
			[]string{"account"}, nil),
	}
}

func (m *metrics) register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.duration, m.responses, m.tokenFetches, m.tokenErrors, m.retries, m.breakerTrips, m.quotaTrips, m} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Describe and Collect make the state gauges (quota_paused, breaker_open) a collector computed at
// scrape time from the client's state, so they are exact even when no send passes by to clear
// an expired pause.
func (m *metrics) Describe(ch chan<- *prometheus.Desc) {
	ch <- m.quotaPaused
	ch <- m.breakerOpen
}

func (m *metrics) Collect(ch chan<- prometheus.Metric) {
	if m.stateSnapshot == nil {
		return
	}
	m.stateSnapshot(func(desc *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(desc, prometheus.GaugeValue, v, labels...)
	})
}

// errcodeLabel avoids an allocation for the common answers.
func errcodeLabel(code int) string {
	switch code {
	case 0:
		return "0"
	case -1:
		return "-1"
	case ErrNoAnswer:
		return "-2"
	}
	return strconv.Itoa(code)
}
