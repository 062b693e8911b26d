package wechatsim

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Names under which the token endpoints appear in stats and in Fault.API (WeChat's own names).
const (
	APIToken       = "getAccessToken"       // GET /cgi-bin/token
	APIStableToken = "getStableAccessToken" // POST /cgi-bin/stable_token
)

// Config configures a Server. The zero value is usable: no accounts (so no tokens), any template,
// any openid, no quotas, no faults.
type Config struct {
	// Accounts maps appid to secret. Token endpoints only issue tokens for these. The secrets are
	// simulator fixtures, not real AppSecrets.
	Accounts map[string]string
	// Templates maps template_id to its definition. Empty accepts any template_id; otherwise an
	// unknown template_id answers 40037.
	Templates map[string]Template
	// OpenIDs, if non-empty, lists the only touser values accepted (else 40003).
	OpenIDs []string

	// TokenPrefix starts every access token the simulator mints (default none: opaque random
	// text). A sentinel prefix lets a test count tokens that leak into logs, outcomes or metrics.
	TokenPrefix string

	// TokenTTL is the lifetime of an access token. Default 7200s.
	TokenTTL time.Duration
	// TokenGrace is how long the previous classic (/cgi-bin/token) token keeps working after a new
	// one is minted. Default 5m.
	TokenGrace time.Duration
	// StableRefreshWindow: a stable_token call in normal mode mints a new token once the current
	// one has less than this left; the old one lives out its TTL. Default 5m; if it is not below
	// TokenTTL it becomes TokenTTL/2 so short test TTLs still return the same token.
	StableRefreshWindow time.Duration

	// Latency is added to every send call (before answering). Default 0.
	Latency time.Duration
	// RetiredAPIs makes the retired APIs answer as production WeChat does today:
	// templateMessage.send 45103, uniformMessage.send 45109. Default off so the seed APIs work.
	RetiredAPIs bool
	// Quota applies to every (appid, send API) pair; QuotaByAPI overrides it per API name.
	Quota      Quota
	QuotaByAPI map[string]Quota
	// DedupWindow is how long a template.send client_msg_id is remembered per (appid, openid).
	// Default 10m.
	DedupWindow time.Duration

	// AllowUnknownFields accepts body fields the API does not define. Off by default: an unknown
	// field answers 47001, which catches misspelt fields in rules (WeChat itself ignores them).
	AllowUnknownFields bool
	// NoKeywordTypeInference turns off checking subscribeMessage.send values whose template has no
	// declared keyword types by the type prefix of the keyword name ("thing1" -> thing), which is
	// how WeChat names keywords.
	NoKeywordTypeInference bool

	// NoRecord keeps only counters (stats, per-key delivery counts, dedup): Requests and
	// Deliveries return nothing. For the benchmark.
	NoRecord bool
	// MaxRecords caps the stored requests and deliveries each (0 = unlimited); the oldest half is
	// dropped when the cap is reached, so a long-running staging server stays bounded.
	MaxRecords int
	// MaxHold is how long a "timeout" fault holds a request when the client does not give up.
	// Default 30s.
	MaxHold time.Duration
	// MaxBodyBytes limits a request body. Default 1 MiB.
	MaxBodyBytes int64

	// Faults are installed at start, as by SetFault.
	Faults []Fault

	// Now is the clock for token lifetimes, quotas, dedup and fault schedules. Default time.Now.
	// Latency and holds always use real time.
	Now func() time.Time
	// Logger receives lifecycle and admin events, never per-request lines, secrets or tokens.
	// Default discards.
	Logger logrus.FieldLogger
}

// Template describes one template the simulated account owns.
type Template struct {
	// Keywords maps keyword name (e.g. "thing1") to its type ("thing", "number", "letter",
	// "symbol", "character_string", "time", "date", "amount", "phone_number", "car_number",
	// "name", "phrase", "enum", "const"). subscribeMessage.send values are checked against it;
	// every declared keyword must be present. Empty means "infer from the keyword name".
	Keywords map[string]string
}

// Quota limits calls per (appid, API). Zero means unlimited. The day starts at 00:00 China
// Standard Time (UTC+8).
type Quota struct {
	Daily     int // calls per day, then 45009
	PerMinute int // calls per clock minute, then 45011
}

// Validate reports the first problem in c.
func (c *Config) Validate() error {
	for id, t := range c.Templates {
		for kw, typ := range t.Keywords {
			if wxapi.ValueRule(typ) == "" {
				return fmt.Errorf("template %s keyword %s: unknown type %q", id, kw, typ)
			}
		}
	}
	if c.Quota.Daily < 0 || c.Quota.PerMinute < 0 {
		return errors.New("quota: negative limit")
	}
	for api, q := range c.QuotaByAPI {
		if !isSendAPI(api) {
			return fmt.Errorf("quota for %q: not a send API", api)
		}
		if q.Daily < 0 || q.PerMinute < 0 {
			return fmt.Errorf("quota for %s: negative limit", api)
		}
	}
	for _, d := range []time.Duration{c.TokenTTL, c.TokenGrace, c.StableRefreshWindow, c.Latency, c.DedupWindow, c.MaxHold} {
		if d < 0 {
			return fmt.Errorf("negative duration %s", d)
		}
	}
	if c.MaxRecords < 0 || c.MaxBodyBytes < 0 {
		return errors.New("negative MaxRecords or MaxBodyBytes")
	}
	for i := range c.Faults {
		if err := c.Faults[i].Validate(); err != nil {
			return fmt.Errorf("fault %d: %w", i, err)
		}
	}
	return nil
}

// withDefaults returns c with zero fields set to their documented defaults.
func (c Config) withDefaults() Config {
	if c.TokenTTL == 0 {
		c.TokenTTL = 7200 * time.Second
	}
	if c.TokenGrace == 0 {
		c.TokenGrace = 5 * time.Minute
	}
	if c.StableRefreshWindow == 0 {
		c.StableRefreshWindow = 5 * time.Minute
	}
	if c.StableRefreshWindow >= c.TokenTTL {
		c.StableRefreshWindow = c.TokenTTL / 2
	}
	if c.DedupWindow == 0 {
		c.DedupWindow = 10 * time.Minute
	}
	if c.MaxHold == 0 {
		c.MaxHold = 30 * time.Second
	}
	if c.MaxBodyBytes == 0 {
		c.MaxBodyBytes = 1 << 20
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		l := logrus.New()
		l.SetOutput(io.Discard)
		c.Logger = l
	}
	return c
}
