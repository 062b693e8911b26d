package wechat

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Token sources an Account can use.
const (
	// SourceStable is POST /cgi-bin/stable_token in normal mode (never force_refresh). Replicas
	// calling it get the same token, so no shared cache or lock is needed. The default.
	SourceStable = "stable"
	// SourceClassic is GET /cgi-bin/token. Every call mints a new token and kills the previous
	// one after ~5 minutes: only for a single replica that owns the account.
	SourceClassic = "classic"
	// SourceURL is GET Account.TokenURL (a central token service) answering
	// {"access_token": "...", "expires_in": N}.
	SourceURL = "url"
	// SourceNone is the WeChat Cloud Hosting open-API sidecar: no token, and no access_token
	// parameter on the request.
	SourceNone = "none"
)

// Account holds the credentials of one Mini Program or Official Account.
type Account struct {
	AppID  string
	Secret string
	// TokenSource is one of "stable" (default), "classic", "url", "none".
	TokenSource string
	// TokenURL is the endpoint of TokenSource "url".
	TokenURL string
}

// RetryPolicy bounds the retries of transient failures and quota pauses of one Send.
type RetryPolicy struct {
	// MaxAttempts is the number of tries of one Send, the first included; default 4. The single
	// refetch-and-retry after a token error does not count against it.
	MaxAttempts int
	// BaseDelay is the backoff cap before the first retry; it doubles per retry; default 100ms.
	// Each wait is uniformly random in [0, cap) (full jitter).
	BaseDelay time.Duration
	// MaxDelay caps the backoff; default 5s.
	MaxDelay time.Duration
	// Deadline bounds one Send, waits included: no attempt or wait starts that would end after
	// Send began + Deadline; default 30s. An attempt in flight may overrun it by up to Timeout.
	Deadline time.Duration
}

// Config configures a Client. The zero value of every optional field means its default.
type Config struct {
	// BaseURL is the WeChat API origin, e.g. https://api.weixin.qq.com (http://api.weixin.qq.com
	// inside Cloud Hosting).
	BaseURL string
	// Accounts maps an account name (what rules write in `account:`) to its credentials.
	Accounts map[string]Account
	// Timeout bounds one HTTP attempt (token fetches included); default 5s.
	Timeout time.Duration
	// MaxConns is the connection pool size per host (MaxConnsPerHost and MaxIdleConnsPerHost);
	// default 256. Set it to the number of sends in flight: Go's default of 2 idle connections
	// per host closes and redials almost every connection under load.
	MaxConns int
	// Retry bounds retries; see RetryPolicy for defaults.
	Retry RetryPolicy
	// RateLimits maps "account/api" (an API of the wxapi catalog) or "account/*" (all APIs of
	// the account together) to sends per second. Both apply when both are set. Absent means
	// unlimited. The bucket holds a tenth of a second of sends (at least 1).
	RateLimits map[string]float64
	// BreakerCooldown is how long a circuit breaker stays open after a config fault; default 1m.
	BreakerCooldown time.Duration
	// Now is the clock; default time.Now. Injected by tests.
	Now func() time.Time
	// Sleep waits d or until ctx is done, returning ctx.Err() in that case; default a timer.
	// Injected by tests.
	Sleep func(ctx context.Context, d time.Duration) error
}

// Defaults.
const (
	DefaultTimeout         = 5 * time.Second
	DefaultMaxConns        = 256
	DefaultMaxAttempts     = 4
	DefaultBaseDelay       = 100 * time.Millisecond
	DefaultMaxDelay        = 5 * time.Second
	DefaultDeadline        = 30 * time.Second
	DefaultBreakerCooldown = time.Minute
)

func (c Config) withDefaults() Config {
	if c.Timeout == 0 {
		c.Timeout = DefaultTimeout
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.Retry.MaxAttempts == 0 {
		c.Retry.MaxAttempts = DefaultMaxAttempts
	}
	if c.Retry.BaseDelay == 0 {
		c.Retry.BaseDelay = DefaultBaseDelay
	}
	if c.Retry.MaxDelay == 0 {
		c.Retry.MaxDelay = DefaultMaxDelay
	}
	if c.Retry.Deadline == 0 {
		c.Retry.Deadline = DefaultDeadline
	}
	if c.BreakerCooldown == 0 {
		c.BreakerCooldown = DefaultBreakerCooldown
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Sleep == nil {
		c.Sleep = sleepCtx
	}
	c.BaseURL = strings.TrimRight(c.BaseURL, "/")
	return c
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Validate reports every problem of the config, each prefixed with the key it concerns, e.g.
// `wechat.accounts.weapp.secret: empty`. Zero optional fields are valid (they mean the default).
func (c Config) Validate() error {
	var errs []error
	bad := func(key, format string, args ...any) {
		errs = append(errs, fmt.Errorf("wechat.%s: %s", key, fmt.Sprintf(format, args...)))
	}
	if c.BaseURL == "" {
		bad("base_url", "empty")
	} else if u, err := url.Parse(c.BaseURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		bad("base_url", "%q is not an http(s) URL", c.BaseURL)
	}
	if len(c.Accounts) == 0 {
		bad("accounts", "empty")
	}
	for _, name := range sortedKeys(c.Accounts) {
		a := c.Accounts[name]
		key := "accounts." + name
		if name == "" || strings.Contains(name, "/") {
			bad(key, "account name must be non-empty and contain no '/'")
		}
		switch a.TokenSource {
		case "", SourceStable, SourceClassic:
			if a.AppID == "" {
				bad(key+".appid", "empty")
			}
			if a.Secret == "" {
				bad(key+".secret", "empty")
			}
		case SourceURL:
			if a.TokenURL == "" {
				bad(key+".token_url", "empty (token_source is url)")
			} else if u, err := url.Parse(a.TokenURL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
				bad(key+".token_url", "not an http(s) URL")
			}
		case SourceNone:
		default:
			bad(key+".token_source", "%q: want stable, classic, url or none", a.TokenSource)
		}
		if a.TokenURL != "" && a.TokenSource != SourceURL {
			bad(key+".token_url", "set but token_source is not url")
		}
	}
	if c.Timeout < 0 {
		bad("timeout", "negative")
	}
	if c.MaxConns < 0 {
		bad("max_conns", "negative")
	}
	if c.Retry.MaxAttempts < 0 {
		bad("retry.max_attempts", "negative")
	}
	if c.Retry.BaseDelay < 0 {
		bad("retry.base_delay", "negative")
	}
	if c.Retry.MaxDelay < 0 {
		bad("retry.max_delay", "negative")
	}
	if c.Retry.Deadline < 0 {
		bad("retry.deadline", "negative")
	}
	if c.BreakerCooldown < 0 {
		bad("breaker_cooldown", "negative")
	}
	for _, k := range sortedKeys(c.RateLimits) {
		v := c.RateLimits[k]
		key := fmt.Sprintf("rate_limits.%q", k)
		acct, api, ok := strings.Cut(k, "/")
		if !ok {
			bad(key, "want account/api or account/*")
			continue
		}
		if _, ok := c.Accounts[acct]; !ok {
			bad(key, "unknown account %q", acct)
		}
		if _, ok := wxapi.Lookup(api); !ok && api != "*" {
			bad(key, "unknown api %q (known: %s)", api, strings.Join(wxapi.Names(), ", "))
		}
		if !(v > 0) || math.IsInf(v, 0) {
			bad(key, "%v: want a positive number of sends per second", v)
		}
	}
	return errors.Join(errs...)
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
