package wechat

import (
	"strings"
	"testing"
	"time"
)

func TestValidate(t *testing.T) {
	good := func() Config {
		return Config{
			BaseURL: "https://api.weixin.qq.com",
			Accounts: map[string]Account{
				"weapp": {AppID: "wx1", Secret: "s"},
				"oa":    {AppID: "wx2", Secret: "s", TokenSource: "classic"},
				"svc":   {TokenSource: "url", TokenURL: "http://tokens.internal/wx2"},
				"cloud": {TokenSource: "none"},
			},
			RateLimits: map[string]float64{"weapp/subscribeMessage.send": 100, "oa/*": 50},
		}
	}
	tests := []struct {
		name string
		mod  func(*Config)
		want string // "" = valid
	}{
		{"good", func(*Config) {}, ""},
		{"empty secret", func(c *Config) { c.Accounts["weapp"] = Account{AppID: "wx1"} }, "wechat.accounts.weapp.secret: empty"},
		{"empty appid", func(c *Config) { c.Accounts["oa"] = Account{Secret: "s", TokenSource: "classic"} }, "wechat.accounts.oa.appid: empty"},
		{"bad source", func(c *Config) { c.Accounts["oa"] = Account{AppID: "a", Secret: "s", TokenSource: "redis"} },
			`wechat.accounts.oa.token_source: "redis": want stable, classic, url or none`},
		{"url without url", func(c *Config) { c.Accounts["svc"] = Account{TokenSource: "url"} }, "wechat.accounts.svc.token_url: empty (token_source is url)"},
		{"token_url without url source", func(c *Config) { c.Accounts["cloud"] = Account{TokenSource: "none", TokenURL: "http://x"} },
			"wechat.accounts.cloud.token_url: set but token_source is not url"},
		{"no base url", func(c *Config) { c.BaseURL = "" }, "wechat.base_url: empty"},
		{"bad base url", func(c *Config) { c.BaseURL = "api.weixin.qq.com" }, `wechat.base_url: "api.weixin.qq.com" is not an http(s) URL`},
		{"no accounts", func(c *Config) { c.Accounts = nil; c.RateLimits = nil }, "wechat.accounts: empty"},
		{"rate limit unknown account", func(c *Config) { c.RateLimits["nope/*"] = 1 }, `wechat.rate_limits."nope/*": unknown account "nope"`},
		{"rate limit unknown api", func(c *Config) { c.RateLimits["weapp/foo.send"] = 1 }, `wechat.rate_limits."weapp/foo.send": unknown api "foo.send"`},
		{"rate limit no slash", func(c *Config) { c.RateLimits["weapp"] = 1 }, `wechat.rate_limits."weapp": want account/api or account/*`},
		{"rate limit zero", func(c *Config) { c.RateLimits["oa/*"] = 0 }, `wechat.rate_limits."oa/*": 0: want a positive number of sends per second`},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "wechat.timeout: negative"},
		{"negative attempts", func(c *Config) { c.Retry.MaxAttempts = -1 }, "wechat.retry.max_attempts: negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := good()
			tt.mod(&c)
			err := c.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	_, err := New(Config{BaseURL: "https://api.weixin.qq.com", Accounts: map[string]Account{"weapp": {AppID: "wx1"}}}, nil, nil)
	if err == nil || err.Error() != "wechat.accounts.weapp.secret: empty" {
		t.Fatalf("New = %v", err)
	}
}

func TestTokenTTL(t *testing.T) {
	for _, tt := range []struct {
		expiresIn int64
		want      time.Duration
	}{
		{7200, 6900 * time.Second},
		{345, 45 * time.Second},
		{300, time.Second}, // stable token at rotation: clamp, never 0
		{120, time.Second},
		{1, 500 * time.Millisecond}, // TTL must stay below expires_in
		{0, time.Minute},            // no expires_in (url source): cache briefly
	} {
		if got := tokenTTL(tt.expiresIn); got != tt.want {
			t.Errorf("tokenTTL(%d) = %s, want %s", tt.expiresIn, got, tt.want)
		}
	}
}
