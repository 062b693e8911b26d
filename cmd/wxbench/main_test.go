package main

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

// TestMain lets the test binary be the processor child, as the wxbench binary is.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "processor" {
		os.Exit(childMain())
	}
	os.Exit(m.Run())
}

// TestSmoke runs small benches end to end, with the processor in a child process (the default)
// and in this process, and checks that every event got exactly one delivery and one outcome.
func TestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a broker, a simulator and a processor")
	}
	for _, c := range []struct {
		name string
		args []string
	}{
		{"backlog/child", []string{"-n", "2000"}},
		{"steady/inprocess", []string{"-inprocess", "-mode", "steady", "-rate", "2000", "-duration", "1s", "-latency", "5ms"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := run(append(c.args, "-progress=false", "-users", "500"), &out, &errOut)
			t.Logf("stdout:\n%s\nstderr:\n%s", out.String(), errOut.String())
			if code != 0 {
				t.Fatalf("exit status %d", code)
			}
			for _, want := range []string{"missing=0 dup=0", "duplicates 0, error answers 0", "missing 0, duplicated 0, not sent 0"} {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output lacks %q", want)
				}
			}
		})
	}
}

func TestField(t *testing.T) {
	v := []byte(`{"schema":"wxnotify.outcome/v1","event_id":"e-42","rule":"r","status":"sent","errcode":0}`)
	if got := string(field(v, eventIDField)); got != "e-42" {
		t.Errorf("event_id = %q", got)
	}
	if got := string(field(v, statusField)); got != "sent" {
		t.Errorf("status = %q", got)
	}
	if got := field([]byte(`{"x":1}`), statusField); got != nil {
		t.Errorf("absent field = %q", got)
	}
}

func TestTallyCountsDuplicatesAndMarks(t *testing.T) {
	tl := newTally(10)
	for i := range 10 {
		tl.observe([]byte(`{"event_id":"e-`+string(rune('0'+i))+`","status":"sent"}`), int64(i+1))
	}
	tl.observe([]byte(`{"event_id":"e-3","status":"failed"}`), 20)
	tl.observe([]byte(`{"event_id":"x-1","status":"sent"}`), 21)
	select {
	case <-tl.allDone:
	default:
		t.Fatal("allDone not closed after every event's outcome")
	}
	if tl.count[3] != 2 || tl.notSent.Load() != 1 || tl.foreign.Load() != 1 || tl.complete.Load() != 10 {
		t.Errorf("count[3]=%d notSent=%d foreign=%d complete=%d", tl.count[3], tl.notSent.Load(), tl.foreign.Load(), tl.complete.Load())
	}
	if tl.recv[3] != 4 {
		t.Errorf("recv[3] = %d, want the first outcome's time 4", tl.recv[3])
	}
}

// -fetch-linger and -produce-linger reach the processor's config as the kafka keys; unset
// leaves the config defaults.
func TestLingerFlagsReachTheConfig(t *testing.T) {
	pc := procConfig{Broker: "127.0.0.1:9092", SimURL: "http://127.0.0.1:1", WeappAppID: "wxa", WeappSecret: "s1",
		MPAppID: "wxb", MPSecret: "s2", MaxInFlight: 10, LogLevel: "warn"}
	cfg, err := appConfig(pc)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Kafka.FetchLinger != nil || cfg.Kafka.ProduceLinger != nil {
		t.Errorf("unset flags set lingers: %v %v", cfg.Kafka.FetchLinger, cfg.Kafka.ProduceLinger)
	}
	pc.FetchLinger, pc.ProduceLinger = "7ms", "0s"
	if cfg, err = appConfig(pc); err != nil {
		t.Fatal(err)
	}
	if f, p := cfg.Kafka.FetchLinger, cfg.Kafka.ProduceLinger; f == nil || *f != 7*time.Millisecond || p == nil || *p != 0 {
		t.Errorf("lingers = %v, %v; want 7ms, 0s", f, p)
	}
}
