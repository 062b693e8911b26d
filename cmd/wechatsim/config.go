package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// fileConfig is the YAML file. Unknown keys are errors. The account secrets are simulator
// fixtures: never put a real AppSecret here.
type fileConfig struct {
	Accounts            map[string]string       `yaml:"accounts"`
	Templates           map[string]fileTemplate `yaml:"templates"`
	OpenIDs             []string                `yaml:"openids"`
	TokenTTL            time.Duration           `yaml:"token_ttl"`
	TokenGrace          time.Duration           `yaml:"token_grace"`
	StableRefreshWindow time.Duration           `yaml:"stable_refresh_window"`
	Latency             time.Duration           `yaml:"latency"`
	RetiredAPIs         bool                    `yaml:"retired_apis"`
	Quota               fileQuota               `yaml:"quota"`
	QuotaByAPI          map[string]fileQuota    `yaml:"quota_by_api"`
	DedupWindow         time.Duration           `yaml:"dedup_window"`
	AllowUnknownFields  bool                    `yaml:"allow_unknown_fields"`
	NoTypeInference     bool                    `yaml:"no_keyword_type_inference"`
	Record              *fileRecord             `yaml:"record"`
	MaxHold             time.Duration           `yaml:"max_hold"`
	Faults              []wechatsim.Fault       `yaml:"faults"`
}

type fileTemplate struct {
	Keywords map[string]string `yaml:"keywords"`
}

type fileQuota struct {
	Daily     int `yaml:"daily"`
	PerMinute int `yaml:"per_minute"`
}

// fileRecord controls what is stored. Default: requests and deliveries, capped at 100000 each,
// so a long-running staging simulator stays bounded.
type fileRecord struct {
	Off bool `yaml:"off"` // counters only (benchmark)
	Max int  `yaml:"max"`
}

const defaultMaxRecords = 100_000

// loadConfig reads path ("" = defaults) into a validated simulator config.
func loadConfig(path string) (wechatsim.Config, error) {
	var fc fileConfig
	if path != "" {
		b, err := os.ReadFile(path)
		if err != nil {
			return wechatsim.Config{}, fmt.Errorf("read config: %w", err)
		}
		dec := yaml.NewDecoder(bytes.NewReader(b))
		dec.KnownFields(true)
		if err := dec.Decode(&fc); err != nil && !errors.Is(err, io.EOF) {
			return wechatsim.Config{}, fmt.Errorf("parse config %s: %w", path, err)
		}
	}
	cfg := fc.toConfig()
	if err := cfg.Validate(); err != nil {
		return wechatsim.Config{}, fmt.Errorf("config %s: %w", path, err)
	}
	return cfg, nil
}

func (fc *fileConfig) toConfig() wechatsim.Config {
	cfg := wechatsim.Config{
		Accounts:               fc.Accounts,
		OpenIDs:                fc.OpenIDs,
		TokenTTL:               fc.TokenTTL,
		TokenGrace:             fc.TokenGrace,
		StableRefreshWindow:    fc.StableRefreshWindow,
		Latency:                fc.Latency,
		RetiredAPIs:            fc.RetiredAPIs,
		Quota:                  wechatsim.Quota(fc.Quota),
		DedupWindow:            fc.DedupWindow,
		AllowUnknownFields:     fc.AllowUnknownFields,
		NoKeywordTypeInference: fc.NoTypeInference,
		MaxRecords:             defaultMaxRecords,
		MaxHold:                fc.MaxHold,
		Faults:                 fc.Faults,
	}
	if fc.Record != nil {
		cfg.NoRecord = fc.Record.Off
		if fc.Record.Max != 0 {
			cfg.MaxRecords = fc.Record.Max
		}
	}
	if len(fc.Templates) > 0 {
		cfg.Templates = make(map[string]wechatsim.Template, len(fc.Templates))
		for id, t := range fc.Templates {
			cfg.Templates[id] = wechatsim.Template{Keywords: t.Keywords}
		}
	}
	if len(fc.QuotaByAPI) > 0 {
		cfg.QuotaByAPI = make(map[string]wechatsim.Quota, len(fc.QuotaByAPI))
		for api, q := range fc.QuotaByAPI {
			cfg.QuotaByAPI[api] = wechatsim.Quota(q)
		}
	}
	return cfg
}
