package app

import (
	"context"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// demoRule is a rule for the demo's samples (configs/samples): one notification per paid order.
func demoRule(name, template string) string {
	return `rules:
  - name: ` + name + `
    when: event.type == "order.paid"
    account: mp
    api: template.send
    message:
      touser: ${event.user.openid}
      template_id: ` + template + `
      data:
        first: {value: "${event.order.id}"}
`
}

// `wxnotify demo -rules DIR`, as a rule author uses it: the samples go through the author's
// rules, the demo keeps running, and an edit reloads the rules and writes the samples again,
// so the outcomes of the new rules follow.
func TestDemoOnYourOwnRules(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mine.yaml")
	writeFile(t, path, demoRule("paid-v1", "TPL1"))
	out := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- Demo(ctx, DemoOptions{Out: out, HTTPAddr: "127.0.0.1:0", RulesPath: dir})
	}()
	waitFor(t, 60*time.Second, "the samples' outcomes and the demo still running", func() bool {
		return strings.Contains(out.String(), "still running")
	})
	// The samples hold four paid orders (configs/samples/events.jsonl).
	if n := strings.Count(out.String(), " paid-v1 "); n != 4 {
		t.Errorf("%d outcome lines of paid-v1 before the edit, want 4:\n%s", n, out)
	}
	if !strings.Contains(out.String(), "4 outcomes of 4 expected") {
		t.Errorf("summary:\n%s", out)
	}

	writeFile(t, path, demoRule("paid-v2", "TPL2"))
	deadline := time.Now().Add(30 * time.Second)
	for strings.Count(out.String(), " paid-v2 ") != 4 {
		if time.Now().After(deadline) {
			t.Fatalf("no outcomes of the edited rules within 30s:\n%s", out)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !regexp.MustCompile(`rules reloaded \(version [0-9a-f]{12}\): writing the 6 samples again`).MatchString(out.String()) {
		t.Errorf("no reload line:\n%s", out)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("demo: %v\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the demo did not stop within 30s of Ctrl-C")
	}
}
