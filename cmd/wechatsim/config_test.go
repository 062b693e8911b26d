package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func TestExampleConfigLoads(t *testing.T) {
	cfg, err := loadConfig("example.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Accounts["wx1234567890abcdef"] != "s3cret-fixture" || cfg.TokenTTL != 2*time.Hour ||
		cfg.Templates["TPL_SHIPPED"].Keywords["time3"] != "time" || cfg.QuotaByAPI["template.send"].Daily != 100000 ||
		cfg.MaxRecords != 100000 || len(cfg.Faults) != 2 || cfg.Faults[0].Latency != 200*time.Millisecond ||
		cfg.Faults[0].Kind != wechatsim.FaultLatency || cfg.Faults[1].ErrCode != -1 {
		t.Fatalf("loaded %+v", cfg)
	}
}

func TestBadConfigs(t *testing.T) {
	tests := []struct{ yaml, want string }{
		{"acounts: {}", "field acounts not found"},
		{"templates: {T: {keywords: {thing1: stuff}}}", `template T keyword thing1: unknown type "stuff"`},
		{"faults: [{kind: errcode}]", "fault 0: errcode fault needs a non-zero errcode"},
		{"quota_by_api: {nope.send: {daily: 1}}", `quota for "nope.send": not a send API`},
		{"latency: soon", "cannot unmarshal"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "c.yaml")
			if err := os.WriteFile(p, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := loadConfig(p)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestEmptyConfigIsValid(t *testing.T) {
	if _, err := loadConfig(""); err != nil {
		t.Fatal(err)
	}
}
