package deploy_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// liveStack is a running `wxnotify demo -keep` (built as the Dockerfile builds it) after its
// sample events, and a Prometheus server from Debian's package that scrapes it every second
// and evaluates deploy/prometheus's rules.
type liveStack struct {
	scrape     map[string]bool // series names of the demo's /metrics
	scrapeBody []byte          // the demo's /metrics, as scraped
	promURL    string
}

var (
	liveOnce sync.Once
	live     *liveStack
	liveErr  error
)

func startLive(t *testing.T) *liveStack {
	t.Helper()
	liveOnce.Do(func() {
		// Stays if a Fatal below ends Do early: later callers fail too instead of getting nil.
		liveErr = errors.New("the live stack did not start")
		live, liveErr = startLiveStack(t)
	})
	if liveErr != nil {
		t.Fatal(liveErr)
	}
	return live
}

func startLiveStack(t *testing.T) (*liveStack, error) {
	prometheus := requireTool(t, "prometheus")
	bin := filepath.Join(productBinaries(t), "wxnotify")

	addr := freeAddr(t)
	out := startProcess(t, exec.Command(bin, "demo", "-keep", "-http", addr))
	// The demo prints this once every sample has its outcomes.
	if err := waitFor(2*time.Minute, func() error {
		if !strings.Contains(out.String(), "still running") {
			return fmt.Errorf("the demo has not finished its samples")
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("wxnotify demo -keep -http %s: %v\n%s", addr, err, out)
	}
	ctx := context.Background()
	code, body, err := httpGet(ctx, "http://"+addr+"/metrics")
	if err != nil || code != 200 {
		return nil, fmt.Errorf("scrape the demo: %d %v", code, err)
	}
	scrape, err := seriesNames(body)
	if err != nil {
		return nil, fmt.Errorf("parse the demo's /metrics: %v", err)
	}

	dir := sharedTempDir(t)
	rules, err := filepath.Abs(rulesPath)
	if err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`global: {scrape_interval: 1s, evaluation_interval: 1s}
rule_files: [%q]
scrape_configs:
  - job_name: wxnotify
    static_configs: [{targets: [%q]}]
`, rules, addr)
	cfgPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return nil, err
	}
	promAddr := freeAddr(t)
	promOut := startProcess(t, exec.Command(prometheus, "--config.file="+cfgPath, "--storage.tsdb.path="+filepath.Join(dir, "data"),
		"--web.listen-address="+promAddr, "--log.level=warn"))
	promURL := "http://" + promAddr
	if err := waitFor(time.Minute, func() error {
		code, _, err := httpGet(ctx, promURL+"/-/ready")
		if err == nil && code != 200 {
			err = fmt.Errorf("/-/ready: %d", code)
		}
		return err
	}); err != nil {
		return nil, fmt.Errorf("prometheus: %v\n%s", err, promOut)
	}
	// Three scrapes of the demo, so rate() has samples and absent(up) has its answer.
	if err := waitFor(time.Minute, func() error {
		var v model.Vector
		if err := promQuery(ctx, promURL, `count_over_time(up{job="wxnotify"}[1m]) >= 3 and up{job="wxnotify"} == 1`, &v); err != nil {
			return err
		}
		if len(v) == 0 {
			return fmt.Errorf("the demo is not up in three scrapes")
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("prometheus scraping the demo: %v\n%s", err, promOut)
	}
	return &liveStack{scrape: scrape, scrapeBody: body, promURL: promURL}, nil
}

// seriesNames returns the names of the series in a text exposition, histograms and summaries
// with their _bucket, _sum and _count series.
func seriesNames(body []byte) (map[string]bool, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for name, f := range families {
		if len(f.Metric) == 0 {
			continue
		}
		names[name] = true
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			names[name+"_bucket"], names[name+"_sum"], names[name+"_count"] = true, true, true
		case dto.MetricType_SUMMARY:
			names[name+"_sum"], names[name+"_count"] = true, true
		}
	}
	return names, nil
}

// promAPI GETs a Prometheus HTTP API path and decodes its data into v.
func promAPI(ctx context.Context, base, path string, v any) error {
	code, body, err := httpGet(ctx, base+path)
	if err != nil {
		return err
	}
	var resp struct {
		Status    string          `json:"status"`
		ErrorType string          `json:"errorType"`
		Error     string          `json:"error"`
		Data      json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return fmt.Errorf("%s: HTTP %d: %v", path, code, err)
	}
	if resp.Status != "success" {
		return fmt.Errorf("%s: %s: %s", path, resp.ErrorType, resp.Error)
	}
	return json.Unmarshal(resp.Data, v)
}

func promQuery(ctx context.Context, base, query string, v *model.Vector) error {
	var data struct {
		ResultType string          `json:"resultType"`
		Result     json.RawMessage `json:"result"`
	}
	if err := promAPI(ctx, base, "/api/v1/query?query="+url.QueryEscape(query), &data); err != nil {
		return err
	}
	if v == nil || data.ResultType != "vector" {
		return nil
	}
	return json.Unmarshal(data.Result, v)
}

type apiRules struct {
	Groups []struct {
		Name  string `json:"name"`
		Rules []struct {
			Name           string    `json:"name"`
			Type           string    `json:"type"`
			Health         string    `json:"health"`
			LastError      string    `json:"lastError"`
			LastEvaluation time.Time `json:"lastEvaluation"`
		} `json:"rules"`
	} `json:"groups"`
}

func TestLive(t *testing.T) {
	s := startLive(t)
	ctx := context.Background()
	alerts, records := readRules(t)

	// Every metric the rules and the dashboard name must exist in a live scrape, taken after the
	// demo's samples. Fails while wxnotify lacks metrics these files use (the names are listed):
	// the product adds them (issue 13, item 3), the files keep using them.
	t.Run("every metric the rules and dashboard use is in the live scrape", func(t *testing.T) {
		recorded := map[string]bool{"up": true} // up: Prometheus's own series for each target
		for _, r := range records {
			recorded[r.Record] = true
		}
		usedBy := map[string][]string{}
		use := func(where, expr string) {
			names, err := metricNames(expr)
			if err != nil {
				t.Errorf("%s: %v", where, err)
			}
			for _, n := range names {
				usedBy[n] = append(usedBy[n], where)
			}
		}
		for _, r := range append(alerts, records...) {
			use("rule "+r.Alert+r.Record, r.Expr)
		}
		for where, q := range dashboardQueries(t) {
			use("dashboard "+where, q)
		}
		var missing []string
		for _, n := range slices.Sorted(maps.Keys(usedBy)) {
			if !s.scrape[n] && !recorded[n] {
				sort.Strings(usedBy[n])
				missing = append(missing, fmt.Sprintf("  %s (%d uses, e.g. %s)", n, len(usedBy[n]), usedBy[n][0]))
			}
		}
		if len(missing) > 0 {
			t.Errorf("%d metric names the deploy files use are not in the demo's /metrics:\n%s", len(missing), strings.Join(missing, "\n"))
		}
	})

	// Prometheus's own linter of expositions: names, units, suffixes, help texts.
	t.Run("promtool check metrics finds nothing in the live scrape", func(t *testing.T) {
		cmd := exec.Command(requireTool(t, "promtool"), "check", "metrics")
		cmd.Stdin = bytes.NewReader(s.scrapeBody)
		if out, err := cmd.CombinedOutput(); err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("promtool check metrics: %v\n%s", err, out)
		}
	})

	// Alerts rate over counters: the series of the label values known at start exist before
	// anything happens to them (issue 13, item 3), here where nothing went wrong in the demo.
	t.Run("counters the alerts and panels rate over exist at 0 before their first event", func(t *testing.T) {
		for _, want := range []string{
			`wxnotify_events_dead_lettered_total{reason="invalid_utf8"} 0`,
			`wxnotify_events_dead_lettered_total{reason="undecodable"} 0`,
			`wxnotify_rule_when_errors_total{rule="order-paid"} 0`,
			`wxnotify_notifications_total{api="subscribeMessage.send",rule="order-paid-subscribe",status="expired"} 0`,
			`wxnotify_control_keys_evicted_total{control="dedupe"} 0`,
			`wxnotify_wechat_retries_total{api="template.send",class="transient"} 0`,
			`wxnotify_quota_trips_total{account="mp",api="template.send",kind="daily"} 0`,
			`wxnotify_wechat_held{account="weapp",api="subscribeMessage.send"} 0`,
			`wxnotify_kafka_write_failures_total{topic="wxnotify.outcomes"} 0`,
			`wxnotify_outcomes_total{api="template.send",class="transient",status="failed"} 0`,
		} {
			if !bytes.Contains(s.scrapeBody, []byte(want+"\n")) {
				t.Errorf("the live scrape lacks %s", want)
			}
		}
		if !regexp.MustCompile(`(?m)^wxnotify_build_info\{goversion="go[^"]+",revision="[^"]+",version="[^"]+"\} 1$`).Match(s.scrapeBody) {
			t.Error("the live scrape lacks wxnotify_build_info{goversion,revision,version} 1")
		}
	})

	t.Run("Prometheus evaluates every rule without error", func(t *testing.T) {
		var rules apiRules
		err := waitFor(30*time.Second, func() error {
			if err := promAPI(ctx, s.promURL, "/api/v1/rules", &rules); err != nil {
				return err
			}
			for _, g := range rules.Groups {
				for _, r := range g.Rules {
					if r.LastEvaluation.IsZero() || r.LastEvaluation.Year() < 2000 {
						return fmt.Errorf("rule %s not evaluated yet", r.Name)
					}
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, g := range rules.Groups {
			for _, r := range g.Rules {
				n++
				if r.Health != "ok" || r.LastError != "" {
					t.Errorf("group %s rule %s: health %q, error %q", g.Name, r.Name, r.Health, r.LastError)
				}
			}
		}
		if n != len(alerts)+len(records) {
			t.Errorf("the server loaded %d rules, the file has %d", n, len(alerts)+len(records))
		}
		// Each recording rule makes series from the demo's metrics.
		for _, r := range records {
			var v model.Vector
			if err := promQuery(ctx, s.promURL, r.Record, &v); err != nil {
				t.Errorf("%s: %v", r.Record, err)
			} else if len(v) == 0 {
				t.Errorf("%s: no series from the demo", r.Record)
			}
		}
	})

	t.Run("a healthy demo raises no alert", func(t *testing.T) {
		var data struct {
			Alerts []struct {
				Labels map[string]string `json:"labels"`
				State  string            `json:"state"`
			} `json:"alerts"`
		}
		err := waitFor(15*time.Second, func() error {
			if err := promAPI(ctx, s.promURL, "/api/v1/alerts", &data); err != nil {
				return err
			}
			if len(data.Alerts) > 0 {
				return fmt.Errorf("%d alerts: %v", len(data.Alerts), data.Alerts)
			}
			return nil
		})
		if err != nil {
			t.Error(err)
		}
	})

	t.Run("every dashboard query runs on the server", func(t *testing.T) {
		queries := dashboardQueries(t)
		for _, where := range slices.Sorted(maps.Keys(queries)) {
			if err := promQuery(ctx, s.promURL, queries[where], nil); err != nil {
				t.Errorf("%s: %v\n%s", where, err, queries[where])
			}
		}
	})
}
