package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/processor"
	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// reloadRule is a one-rule file whose template id and text carry a version marker, so the body
// at the simulator shows which rule set evaluated the event.
func reloadRule(marker string) string {
	return fmt.Sprintf(`rules:
  - name: paid
    when: event.type == "order.paid"
    account: weapp
    api: subscribeMessage.send
    message:
      touser: ${event.user.openid}
      template_id: TPL_%s
      data:
        thing1: {value: "%s ${event.order.id}"}
`, marker, marker)
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// rulesDir writes content as orders.yaml in a new directory, makes that directory the
// config's rules path (read and watched by Run when Options.Rules is nil) and returns the
// file's path.
func (h *harness) rulesDir(content string) string {
	h.t.Helper()
	path := filepath.Join(h.t.TempDir(), "orders.yaml")
	writeFile(h.t, path, content)
	h.cfg.Rules.Path = filepath.Dir(path)
	return path
}

func rulesVersion(t *testing.T, r *running) string {
	t.Helper()
	_, v := series(t, r.reg, "wxnotify_rules_info")
	return v
}

func waitForVersionChange(t *testing.T, r *running, from string) string {
	t.Helper()
	var v string
	waitFor(t, 10*time.Second, "the rules to be reloaded", func() bool { v = rulesVersion(t, r); return v != from })
	return v
}

// bodiesByEvent returns, for each event id, the bodies the simulator received for it.
func bodiesByEvent(h *harness) map[string][]string {
	out := map[string][]string{}
	for _, q := range h.sim.Requests() {
		for _, id := range []string{"e-1", "e-2", "e-3"} {
			if strings.Contains(string(q.Body), "9"+strings.TrimPrefix(id, "e-")+`"`) {
				out[id] = append(out[id], string(q.Body))
			}
		}
	}
	return out
}

// exactlyOneOutcomeEach fails unless every event id has exactly one outcome.
func exactlyOneOutcomeEach(t *testing.T, outs []processor.Outcome, ids ...string) map[string]processor.Outcome {
	t.Helper()
	byID := map[string]processor.Outcome{}
	count := map[string]int{}
	for _, o := range outs {
		count[o.EventID]++
		byID[o.EventID] = o
	}
	for _, id := range ids {
		if count[id] != 1 {
			t.Errorf("%s has %d outcomes, want 1", id, count[id])
		}
	}
	if len(outs) != len(ids) {
		t.Errorf("%d outcomes, want %d", len(outs), len(ids))
	}
	return byID
}

// A valid change is picked up between two events: the first is evaluated by the old set, the
// second by the new one, each exactly once.
func TestReloadSwitchesRulesBetweenEvents(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	path := h.rulesDir(reloadRule("v1"))
	r := h.startWith(Options{})
	h.produce("events", event("e-1", "order.paid", "u1"))
	h.outcomes(1, 20*time.Second)
	v1 := rulesVersion(t, r)
	if ok, _ := series(t, r.reg, "wxnotify_rules_last_reload_successful"); ok != 1 {
		t.Fatalf("last_reload_successful = %v after startup, want 1", ok)
	}
	before, _ := series(t, r.reg, "wxnotify_rules_last_reload_success_timestamp_seconds")

	writeFile(t, path, reloadRule("v2")) // in place, as `cat >` would
	v2 := waitForVersionChange(t, r, v1)
	h.produce("events", event("e-2", "order.paid", "u2"))
	outs := exactlyOneOutcomeEach(t, h.outcomes(2, 20*time.Second), "e-1", "e-2")

	bodies := bodiesByEvent(h)
	if len(bodies["e-1"]) != 1 || !strings.Contains(bodies["e-1"][0], `"TPL_v1"`) || !strings.Contains(bodies["e-1"][0], `"v1 91"`) {
		t.Errorf("e-1 bodies %q, want one with the v1 template", bodies["e-1"])
	}
	if len(bodies["e-2"]) != 1 || !strings.Contains(bodies["e-2"][0], `"TPL_v2"`) || !strings.Contains(bodies["e-2"][0], `"v2 92"`) {
		t.Errorf("e-2 bodies %q, want one with the v2 template", bodies["e-2"])
	}
	if outs["e-1"].RuleVersion != v1 || outs["e-2"].RuleVersion != v2 {
		t.Errorf("rule versions %s, %s; want %s, %s", outs["e-1"].RuleVersion, outs["e-2"].RuleVersion, v1, v2)
	}
	if ts, _ := series(t, r.reg, "wxnotify_rules_last_reload_success_timestamp_seconds"); ts <= before {
		t.Errorf("last_reload_success_timestamp_seconds = %v after the reload, want later than %v", ts, before)
	}
	if !strings.Contains(h.logBuf.String(), `"previous_version":"`+v1+`"`) {
		t.Error("no log line for the reload")
	}
}

// A broken file is rejected with check's messages, the old set keeps running and the metric
// says so; fixing the file recovers.
func TestReloadRejectsBrokenRulesAndKeepsTheOldSet(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	path := h.rulesDir(reloadRule("v1"))
	r := h.startWith(Options{})
	v1 := rulesVersion(t, r)

	broken := strings.Replace(reloadRule("v2"), "event.type ==", "event.type ===", 1)
	writeFile(t, path, broken)
	waitFor(t, 10*time.Second, "last_reload_successful to drop to 0", func() bool {
		v, _ := series(t, r.reg, "wxnotify_rules_last_reload_successful")
		return v == 0
	})
	if got := rulesVersion(t, r); got != v1 {
		t.Fatalf("rules_info version %s after a rejected reload, want %s", got, v1)
	}
	logs := h.logBuf.String()
	if !strings.Contains(logs, path+`:3:24: rule \"paid\": when: unexpected token`) || !strings.Contains(logs, "rules reload rejected; the current rules stay in force") {
		t.Errorf("log lacks the problem as check prints it:\n%s", logs)
	}
	h.produce("events", event("e-1", "order.paid", "u1"))
	exactlyOneOutcomeEach(t, h.outcomes(1, 20*time.Second), "e-1")
	if b := bodiesByEvent(h)["e-1"]; len(b) != 1 || !strings.Contains(b[0], "TPL_v1") {
		t.Errorf("e-1 bodies %q, want the old set's", b)
	}

	writeFile(t, path, reloadRule("v2"))
	waitForVersionChange(t, r, v1)
	if v, _ := series(t, r.reg, "wxnotify_rules_last_reload_successful"); v != 1 {
		t.Errorf("last_reload_successful = %v after the fix, want 1", v)
	}
}

// A Kubernetes ConfigMap volume: the files are symlinks through ..data, and an update re-points
// ..data at a new timestamped directory with a rename.
func TestReloadFollowsConfigMapSymlinkSwap(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "..2026_11_23_10_00_00.1", "orders.yaml"), reloadRule("v1"))
	must(t, os.Symlink("..2026_11_23_10_00_00.1", filepath.Join(dir, "..data")))
	must(t, os.Symlink(filepath.Join("..data", "orders.yaml"), filepath.Join(dir, "orders.yaml")))
	h.cfg.Rules.Path = dir
	r := h.startWith(Options{})
	v1 := rulesVersion(t, r)

	// What the kubelet does: write the new dir, point ..data_tmp at it, rename over ..data,
	// remove the old dir.
	writeFile(t, filepath.Join(dir, "..2026_11_23_10_05_00.2", "orders.yaml"), reloadRule("v2"))
	must(t, os.Symlink("..2026_11_23_10_05_00.2", filepath.Join(dir, "..data_tmp")))
	must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
	must(t, os.RemoveAll(filepath.Join(dir, "..2026_11_23_10_00_00.1")))
	waitForVersionChange(t, r, v1)

	h.produce("events", event("e-1", "order.paid", "u1"))
	exactlyOneOutcomeEach(t, h.outcomes(1, 20*time.Second), "e-1")
	if b := bodiesByEvent(h)["e-1"]; len(b) != 1 || !strings.Contains(b[0], "TPL_v2") {
		t.Errorf("e-1 bodies %q, want the new set's", b)
	}
}

// A single-file rules path replaced by an editor's write-to-temp-and-rename is picked up.
func TestReloadSingleFileReplacedByRename(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	dir := t.TempDir()
	path := filepath.Join(dir, "rules.yaml")
	writeFile(t, path, reloadRule("v1"))
	writeFile(t, filepath.Join(dir, "other.yaml"), "not: rules") // not the rules path: ignored
	h.cfg.Rules.Path = path
	r := h.startWith(Options{})
	v1 := rulesVersion(t, r)
	writeFile(t, path+".tmp", reloadRule("v2"))
	must(t, os.Rename(path+".tmp", path))
	waitForVersionChange(t, r, v1)
}

// Reload (SIGHUP in `wxnotify run`) reloads on demand, even when the watcher cannot see the
// change: here the rules path is a symlink re-pointed at another directory, which watching the
// old directory does not notice.
func TestReloadOnTrigger(t *testing.T) {
	h := newHarness(t, wechatsim.Config{})
	base := t.TempDir()
	writeFile(t, filepath.Join(base, "v1", "orders.yaml"), reloadRule("v1"))
	writeFile(t, filepath.Join(base, "v2", "orders.yaml"), reloadRule("v2"))
	link := filepath.Join(base, "current")
	must(t, os.Symlink(filepath.Join(base, "v1"), link))
	h.cfg.Rules.Path = link
	trigger := make(chan struct{})
	r := h.startWith(Options{Reload: trigger})
	v1 := rulesVersion(t, r)

	must(t, os.Symlink(filepath.Join(base, "v2"), link+".tmp"))
	must(t, os.Rename(link+".tmp", link))
	time.Sleep(2 * reloadDebounce)
	if got := rulesVersion(t, r); got != v1 {
		t.Fatalf("version changed to %s without a trigger; this test no longer exercises the trigger path", got)
	}
	trigger <- struct{}{}
	waitForVersionChange(t, r, v1)
	if !strings.Contains(h.logBuf.String(), `"trigger":"signal"`) {
		t.Error("the reload is not logged as triggered by the signal")
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// A rejected reload with more problems than /readyz lists shows the first maxReadyProblems and
// how many more the log has; the log has every one.
func TestReloadFailureListsAtMostMaxReadyProblems(t *testing.T) {
	dir := t.TempDir()
	var text strings.Builder
	text.WriteString("rules:\n")
	const n = maxReadyProblems + 5
	for i := range n {
		fmt.Fprintf(&text, "  - {name: r%d, when: 'event.type ===', account: weapp, api: subscribeMessage.send, message: {touser: x, template_id: T, data: {thing1: {value: x}}}}\n", i)
	}
	writeFile(t, filepath.Join(dir, "orders.yaml"), text.String())
	cfg := &Config{Rules: RulesConfig{Path: dir, Zone: "UTC"}, WeChat: WeChatConfig{Accounts: map[string]AccountConfig{"weapp": {}}}}
	buf := &syncBuffer{}
	log := logrus.New()
	log.SetOutput(buf)
	r := newReloader(cfg, &ruleHolder{}, prometheus.NewRegistry(), log)
	if err := r.reload("test"); err == nil {
		t.Fatal("reload of broken rules succeeded")
	}
	f := r.lastFailure()
	if f == nil || len(f.Problems) != maxReadyProblems+1 || f.Problems[maxReadyProblems] != "... and 5 more (see the log)" {
		t.Fatalf("failure = %+v, want %d problems and a line saying 5 more", f, maxReadyProblems)
	}
	if got := strings.Count(buf.String(), "when: unexpected token"); got != n {
		t.Errorf("the log has %d problems, want all %d", got, n)
	}
}
