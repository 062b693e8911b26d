package app

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"
)

// The demo, as a newcomer runs it: it exits nil with every sample's outcome, at least one sent
// notification per API, and shows the rejection and the failure the samples contain.
func TestDemo(t *testing.T) {
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := Demo(ctx, DemoOptions{Out: &out, HTTPAddr: "127.0.0.1:0"}); err != nil {
		t.Fatalf("demo: %v\n%s", err, out.String())
	}
	s := out.String()
	for _, api := range []string{"templateMessage.send", "uniformMessage.send", "subscribeMessage.send", "template.send"} {
		if !strings.Contains(s, "  "+api+" ") || !strings.Contains(s, api+"  ") {
			t.Errorf("demo output has no line for %s", api)
		}
	}
	for _, want := range []string{"12 outcomes of 12 expected", "failed=1 rejected=1 sent=10", "simulator delivered 10 messages", "kcat -b 127.0.0.1:"} {
		if !strings.Contains(s, want) {
			t.Errorf("demo output lacks %q:\n%s", want, s)
		}
	}
}
