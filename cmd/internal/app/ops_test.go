package app

import (
	"io"
	"net/http"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func getBody(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

// Before the first event /metrics has the build and, at 0, the series of the loaded rules; a
// rejected reload shows on /readyz (which stays ready: the old rules keep running) until a good
// reload clears it, and the new set's rules get their series at once.
func TestReadyzAndMetricsFollowReloads(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	path := h.rulesDir(reloadRule("v1"))
	var mu sync.Mutex
	var reloaded []string
	r := h.startWith(Options{
		Build:    Build{Version: "v1.2.3", Revision: "abc123", GoVersion: "go1.99"},
		Reloaded: func(s *rules.Set) { mu.Lock(); reloaded = append(reloaded, s.Version); mu.Unlock() },
	})
	_, metrics := getBody(t, "http://"+r.ops+"/metrics")
	for _, want := range []string{
		`wxnotify_build_info{goversion="go1.99",revision="abc123",version="v1.2.3"} 1`,
		`wxnotify_notifications_total{api="subscribeMessage.send",rule="paid",status="sent"} 0`,
		`wxnotify_notifications_total{api="subscribeMessage.send",rule="paid",status="failed"} 0`,
		`wxnotify_rule_when_errors_total{rule="paid"} 0`,
		`wxnotify_wechat_held{account="weapp",api="subscribeMessage.send"} 0`,
		`wxnotify_events_dead_lettered_total{reason="invalid_utf8"} 0`,
		`wxnotify_events_consumed_total{topic="events"} 0`,
		`wxnotify_quota_trips_total{account="mp",api="template.send",kind="daily"} 0`,
		`wxnotify_wechat_retries_total{api="template.send",class="transient"} 0`,
		`wxnotify_kafka_write_failures_total{topic="wxnotify.outcomes"} 0`,
		`wxnotify_outcomes_total{api="subscribeMessage.send",class="ok",status="sent"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics before the first event lacks %s", want)
		}
	}

	v1 := rulesVersion(t, r)
	writeFile(t, path, strings.Replace(reloadRule("v2"), "event.type ==", "event.type ===", 1))
	var ready readiness
	waitFor(t, 10*time.Second, "/readyz to show the rejected reload", func() bool {
		ready = readiness{}
		getJSON(t, "http://"+r.ops+"/readyz", &ready)
		return ready.RulesReloadError != nil
	})
	if f := ready.RulesReloadError; len(f.Problems) != 1 || !strings.Contains(f.Problems[0], path+`:3:24: rule "paid": when: unexpected token`) || f.At == "" {
		t.Errorf("rules_reload_error = %+v", f)
	}
	if ready.RulesVersion != v1 {
		t.Errorf("rules_version %s after a rejected reload, want %s", ready.RulesVersion, v1)
	}

	writeFile(t, path, reloadRule("v2")+`  - name: paid-oa
    when: event.type == "order.paid"
    account: mp
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: OA
      data: {first: {value: "${event.order.id}"}}
`)
	v2 := waitForVersionChange(t, r, v1)
	code, body := getBody(t, "http://"+r.ops+"/readyz")
	if strings.Contains(body, "rules_reload_error") {
		t.Errorf("/readyz still shows a reload error after a good reload: %d %s", code, body)
	}
	_, metrics = getBody(t, "http://"+r.ops+"/metrics")
	for _, want := range []string{
		`wxnotify_notifications_total{api="template.send",rule="paid-oa",status="sent"} 0`,
		`wxnotify_wechat_held{account="mp",api="template.send"} 0`,
	} {
		if !strings.Contains(metrics, want+"\n") {
			t.Errorf("/metrics after the reload lacks %s", want)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reloaded) != 1 || reloaded[0] != v2 {
		t.Errorf("Options.Reloaded saw %v, want [%s]", reloaded, v2)
	}
}

// Go's profiling endpoints are on the ops port only with http.pprof: true.
func TestPProfIsOffUnlessConfigured(t *testing.T) {
	for _, on := range []bool{false, true} {
		cfg := &Config{HTTP: HTTPConfig{PProf: on}}
		log := logrus.New()
		log.SetOutput(io.Discard)
		srv, addr, err := serveOps(cfg, newLocalListener(t), prometheus.NewRegistry(), func() readiness { return readiness{Ready: true} }, log)
		if err != nil {
			t.Fatal(err)
		}
		want := http.StatusNotFound
		if on {
			want = http.StatusOK
		}
		for _, path := range []string{"/debug/pprof/", "/debug/pprof/heap", "/debug/pprof/cmdline"} {
			if code, body := getBody(t, "http://"+addr+path); code != want {
				t.Errorf("pprof %v: GET %s = %d, want %d\n%.200s", on, path, code, want, body)
			}
		}
		if code, _ := getBody(t, "http://"+addr+"/healthz"); code != http.StatusOK {
			t.Errorf("pprof %v: /healthz = %d", on, code)
		}
		_ = srv.Close()
	}
}

func TestReadBuild(t *testing.T) {
	b := ReadBuild("v1.4.0", "0123abc")
	if b.Version != "v1.4.0" || b.Revision != "0123abc" || !strings.HasPrefix(b.GoVersion, "go") {
		t.Errorf("stamped: %+v", b)
	}
	if s := b.String(); !strings.HasPrefix(s, "wxnotify v1.4.0 (revision 0123abc, go") {
		t.Errorf("String() = %q", s)
	}
	// A test binary has no main module version and no VCS stamp.
	if b := ReadBuild("", ""); b.Version != "devel" || b.Revision != "unknown" {
		t.Errorf("unstamped: %+v", b)
	}
	// Unstamped, what the toolchain recorded: the module version of `go install ...@v1.2.3`
	// and the VCS revision of a build in a checkout, "-dirty" with uncommitted changes.
	vcs := func(modified string) []debug.BuildSetting {
		return []debug.BuildSetting{{Key: "vcs.revision", Value: "fedcba9"}, {Key: "vcs.modified", Value: modified}}
	}
	for _, tc := range []struct {
		name                      string
		version, revision         string
		info                      *debug.BuildInfo
		wantVersion, wantRevision string
	}{
		{"go install", "", "", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}}, "v1.2.3", "unknown"},
		{"checkout", "", "", &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}, Settings: vcs("false")}, "devel", "fedcba9"},
		{"dirty checkout", "", "", &debug.BuildInfo{Settings: vcs("true")}, "devel", "fedcba9-dirty"},
		{"stamps win", "v2.0.0", "0123abc", &debug.BuildInfo{Main: debug.Module{Version: "v1.2.3"}, Settings: vcs("true")}, "v2.0.0", "0123abc"},
	} {
		if b := readBuild(tc.version, tc.revision, tc.info); b.Version != tc.wantVersion || b.Revision != tc.wantRevision {
			t.Errorf("%s: %+v, want version %s, revision %s", tc.name, b, tc.wantVersion, tc.wantRevision)
		}
	}
}
