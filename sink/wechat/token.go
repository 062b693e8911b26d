package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/time/rate"
)

// TokenError is a failure to obtain an access token for an account. It names the account and
// carries the token endpoint's errcode (ErrNoAnswer for transport failures). It never contains
// the secret.
type TokenError struct {
	Account string
	ErrCode int
	ErrMsg  string
	// Class is ClassTransient (worth retrying: -1, 45011, transport) or ClassConfig (an operator
	// must act: wrong appid/secret, IP whitelist, frozen secret, token quota, ...).
	Class Class
	// Refused is set when no fetch was made because the account's token breaker is open.
	Refused bool
}

func (e *TokenError) Error() string {
	s := fmt.Sprintf("access token for account %s: errcode %d: %s", e.Account, e.ErrCode, e.ErrMsg)
	if e.Refused {
		s += " (token breaker open: not refetched)"
	}
	return s
}

// Temporary reports whether retrying may help.
func (e *TokenError) Temporary() bool { return e.Class == ClassTransient }

const (
	reasonInitial     = "initial"
	reasonExpired     = "expired"
	reasonInvalidated = "invalidated"

	// tokenMargin is how long before WeChat's expiry a token stops being used. Stable tokens
	// can come with expires_in ~300; tokenTTL clamps.
	tokenMargin = 5 * time.Minute
	// unknownTTL caches a token whose source gave no expires_in (a url source may not), the
	// worker cache time WeChat's own guidance suggests behind a central token service.
	unknownTTL = time.Minute
)

// tokenTTL is how long a token answered with expires_in seconds is used: expires_in minus the
// margin, at least 1 s and less than expires_in.
func tokenTTL(expiresIn int64) time.Duration {
	if expiresIn <= 0 {
		return unknownTTL
	}
	e := time.Duration(expiresIn) * time.Second
	ttl := e - tokenMargin
	if ttl < time.Second {
		ttl = time.Second
	}
	if ttl >= e {
		ttl = e / 2
	}
	return ttl
}

// token is one cached access token with the send URLs built from it, so a send does not
// re-encode the token. Immutable once published.
type token struct {
	value  string
	expiry time.Time // zero: never expires (source none)
	urls   []string  // per apiState.idx
}

func (t *token) valid(now time.Time) bool { return t.expiry.IsZero() || now.Before(t.expiry) }

// account is the per-account state.
type account struct {
	name    string
	cred    Account
	apis    map[string]*apiState
	apiList []*apiState
	limiter *rate.Limiter

	tok   atomic.Pointer[token]
	ready atomic.Bool // a token was obtained at least once
	// fault, while now < fault.until, refuses token fetches: the last fetch failed with a
	// config error and refetching would only burn the token quota.
	fault atomic.Pointer[tokenFault]

	breakers breakerSet

	tokenFetches map[string]prometheus.Counter // by reason
	tokenErrors  prometheus.Counter
	trips        prometheus.Counter
}

type tokenFault struct {
	until time.Time
	err   *TokenError
}

// invalidate drops the cached token only if it is still the one WeChat rejected: a concurrent
// send may already have fetched its successor, which must survive.
func (a *account) invalidate(failed *token) {
	a.tok.CompareAndSwap(failed, nil)
}

func (c *Client) newToken(a *account, value string, expiry time.Time) *token {
	t := &token{value: value, expiry: expiry, urls: make([]string, len(a.apiList))}
	for i, st := range a.apiList {
		if a.cred.TokenSource == SourceNone {
			t.urls[i] = c.cfg.BaseURL + st.api.Path
		} else {
			t.urls[i] = c.cfg.BaseURL + st.api.Path + "?access_token=" + url.QueryEscape(value)
		}
	}
	return t
}

// token returns a valid token for a, fetching one if needed. Concurrent callers share one fetch
// per account (singleflight); a caller whose ctx ends stops waiting but the fetch completes for
// the others.
func (c *Client) token(ctx context.Context, a *account) (*token, *TokenError) {
	if t := a.tok.Load(); t != nil && t.valid(c.now()) {
		return t, nil
	}
	ch := c.sf.DoChan(a.name, func() (any, error) {
		// The fetch outlives a cancelled first caller: others are waiting on it.
		return c.fetchLocked(context.WithoutCancel(ctx), a)
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			var te *TokenError
			if errors.As(res.Err, &te) {
				return nil, te
			}
			return nil, &TokenError{Account: a.name, ErrCode: ErrNoAnswer, ErrMsg: res.Err.Error(), Class: ClassTransient}
		}
		return res.Val.(*token), nil
	case <-ctx.Done():
		return nil, &TokenError{Account: a.name, ErrCode: ErrNoAnswer, ErrMsg: "waiting for token: " + ctx.Err().Error(), Class: ClassTransient}
	}
}

// fetchLocked runs inside the account's singleflight: at most one per account at a time.
func (c *Client) fetchLocked(ctx context.Context, a *account) (*token, error) {
	now := c.now()
	cur := a.tok.Load()
	if cur != nil && cur.valid(now) {
		return cur, nil // fetched by the flight that just ended
	}
	if f := a.fault.Load(); f != nil {
		if now.Before(f.until) {
			e := *f.err
			e.Refused = true
			return nil, &e
		}
		// Cooldown over: this fetch is the trial.
	}
	reason := reasonExpired
	if cur == nil {
		reason = reasonInitial
		if a.ready.Load() {
			reason = reasonInvalidated
		}
	}
	a.tokenFetches[reason].Inc()
	value, expiresIn, terr := c.fetch(ctx, a)
	if terr != nil {
		a.tokenErrors.Inc()
		log := c.log.WithFields(logrus.Fields{"account": a.name, "token_source": a.cred.TokenSource, "reason": reason, "errcode": terr.ErrCode, "errmsg": terr.ErrMsg})
		if terr.Class == ClassConfig {
			until := c.now().Add(c.cfg.BreakerCooldown)
			a.fault.Store(&tokenFault{until: until, err: terr})
			a.trips.Inc()
			log.WithField("until", until.Format(time.RFC3339)).Error("wechat access token refused: account misconfigured; sends of this account fail until the token breaker's trial fetch succeeds")
		} else {
			log.Warn("wechat access token fetch failed")
		}
		return nil, terr
	}
	ttl := tokenTTL(expiresIn)
	t := c.newToken(a, value, c.now().Add(ttl))
	a.tok.Store(t)
	a.ready.Store(true)
	if a.fault.Swap(nil) != nil {
		c.log.WithField("account", a.name).Info("wechat access token obtained again: token breaker closed")
	}
	lvl := logrus.DebugLevel
	if reason == reasonInvalidated {
		lvl = logrus.InfoLevel // WeChat rejected a token we thought valid: worth seeing
	}
	c.log.WithFields(logrus.Fields{"account": a.name, "token_source": a.cred.TokenSource, "reason": reason, "expires_in": expiresIn, "ttl": ttl.String()}).Log(lvl, "wechat access token fetched")
	return t, nil
}

// tokenHints explain token endpoint errcodes whose errmsg misleads or says too little.
var tokenHints = map[int]string{
	40001: "wrong app secret",
	40013: "wrong app id",
	40125: "wrong app secret",
	40164: "egress IP not in the account's API IP whitelist",
	40243: "app secret frozen",
	45009: "daily token quota exhausted",
	89503: "egress IP awaits the admin's confirmation; whitelist it",
}

type tokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	ErrCode     int    `json:"errcode"`
	ErrMsg      string `json:"errmsg"`
}

// fetch asks the account's token source for a token. Errors never include the secret or token.
func (c *Client) fetch(ctx context.Context, a *account) (string, int64, *TokenError) {
	fail := func(code int, msg string) *TokenError {
		return &TokenError{Account: a.name, ErrCode: code, ErrMsg: scrubSecrets(msg, a.cred.Secret), Class: classifyTokenEndpoint(code)}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	var hreq *http.Request
	var err error
	switch a.cred.TokenSource {
	case SourceClassic:
		q := url.Values{"grant_type": {"client_credential"}, "appid": {a.cred.AppID}, "secret": {a.cred.Secret}}
		hreq, err = http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.BaseURL+"/cgi-bin/token?"+q.Encode(), nil)
	case SourceURL:
		hreq, err = http.NewRequestWithContext(ctx, http.MethodGet, a.cred.TokenURL, nil)
	default: // stable, normal mode: never force_refresh, it would kill every holder's token
		body, _ := json.Marshal(struct {
			GrantType string `json:"grant_type"`
			AppID     string `json:"appid"`
			Secret    string `json:"secret"`
		}{"client_credential", a.cred.AppID, a.cred.Secret})
		hreq, err = http.NewRequestWithContext(ctx, http.MethodPost, c.cfg.BaseURL+"/cgi-bin/stable_token", bytes.NewReader(body))
		if hreq != nil {
			hreq.Header["Content-Type"] = jsonContentType
		}
	}
	if err != nil {
		return "", 0, fail(ErrNoAnswer, "build token request: "+scrubErr(err))
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return "", 0, fail(ErrNoAnswer, scrubErr(err))
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxBody))
	if resp.StatusCode != http.StatusOK {
		return "", 0, fail(ErrNoAnswer, "token endpoint http status "+resp.Status)
	}
	if err != nil {
		return "", 0, fail(ErrNoAnswer, "read token answer: "+scrubErr(err))
	}
	var tr tokenResponse
	if err := json.Unmarshal(raw, &tr); err != nil {
		return "", 0, fail(ErrNoAnswer, "unreadable token answer: "+err.Error())
	}
	if tr.ErrCode != 0 {
		msg := scrubSecrets(tr.ErrMsg, tr.AccessToken)
		if h := tokenHints[tr.ErrCode]; h != "" {
			msg += " (" + h + ")"
		}
		return "", 0, fail(tr.ErrCode, msg)
	}
	if strings.TrimSpace(tr.AccessToken) == "" {
		e := fail(ErrNoAnswer, "token endpoint answered without access_token")
		e.Class = ClassConfig
		return "", 0, e
	}
	return tr.AccessToken, tr.ExpiresIn, nil
}

// CheckTokens obtains a token for each named account (all accounts when none are named), for a
// startup or readiness check. The error joins one *TokenError per failing account.
func (c *Client) CheckTokens(ctx context.Context, accounts []string) error {
	if len(accounts) == 0 {
		accounts = c.names
	}
	var errs []error
	for _, name := range accounts {
		a := c.accounts[name]
		if a == nil {
			errs = append(errs, fmt.Errorf("access token for account %s: unknown account", name))
			continue
		}
		if _, err := c.token(ctx, a); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Ready reports whether each of accounts (default: every configured account) has obtained a
// token at least once (accounts with token source none always have). An unknown name is not
// ready.
func (c *Client) Ready(accounts ...string) bool {
	if len(accounts) == 0 {
		accounts = c.names
	}
	for _, name := range accounts {
		if a := c.accounts[name]; a == nil || !a.ready.Load() {
			return false
		}
	}
	return true
}
