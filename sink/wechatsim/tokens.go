package wechatsim

import (
	"crypto/rand"
	"encoding/base64"
	"sync"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// tokenKind separates the two token families: WeChat keeps them fully isolated, so fetching one
// kind never invalidates the other.
type tokenKind uint8

const (
	classicToken tokenKind = iota
	stableToken
)

type tokenInfo struct {
	appid   string
	kind    tokenKind
	expires time.Time // natural end of life: 42001 after it
	dead    time.Time // zero, or when it stops working early (rotation, invalidation): 40001
}

// tokenStore issues and checks access tokens. Reads (every send call) take the read lock only.
type tokenStore struct {
	ttl, grace, window time.Duration
	prefix             string // Config.TokenPrefix

	mu        sync.RWMutex
	byToken   map[string]*tokenInfo
	current   map[tokenKey]string // latest token per (appid, kind)
	fetches   map[tokenKey]int64
	nextSweep int
}

type tokenKey struct {
	appid string
	kind  tokenKind
}

func newTokenStore(ttl, grace, window time.Duration) *tokenStore {
	return &tokenStore{
		ttl: ttl, grace: grace, window: window,
		byToken:   make(map[string]*tokenInfo),
		current:   make(map[tokenKey]string),
		fetches:   make(map[tokenKey]int64),
		nextSweep: 1024,
	}
}

// check returns the appid a token is bound to and 0, or the errcode a business API answers.
func (ts *tokenStore) check(tok string, now time.Time) (string, int) {
	ts.mu.RLock() // held through the checks: refetches and invalidations write dead and expires
	defer ts.mu.RUnlock()
	info := ts.byToken[tok]
	switch {
	case info == nil:
		return "", wxapi.ErrInvalidCredential
	case !info.dead.IsZero() && !now.Before(info.dead):
		return info.appid, wxapi.ErrInvalidCredential
	case !now.Before(info.expires):
		return info.appid, wxapi.ErrAccessTokenExpired
	}
	return info.appid, 0
}

// appidOf returns the appid a token was issued to, valid or not ("" if unknown).
func (ts *tokenStore) appidOf(tok string) string {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	if info := ts.byToken[tok]; info != nil {
		return info.appid
	}
	return ""
}

// classic mints a new token on every call; the previous one keeps working for the grace period.
func (ts *tokenStore) classic(appid string, now time.Time) (string, time.Duration) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	k := tokenKey{appid, classicToken}
	if prev := ts.byToken[ts.current[k]]; prev != nil && prev.dead.IsZero() {
		prev.dead = now.Add(ts.grace)
	}
	return ts.mintLocked(k, now), ts.ttl
}

// stable returns the current stable token and its remaining life, minting a new one when there is
// none, it is dying, or it is within the refresh window (the old one then lives out its TTL, so
// holders overlap). force kills the old token at once.
func (ts *tokenStore) stable(appid string, force bool, now time.Time) (string, time.Duration) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	k := tokenKey{appid, stableToken}
	cur := ts.current[k]
	prev := ts.byToken[cur]
	if prev != nil && !force && prev.dead.IsZero() && prev.expires.Sub(now) > ts.window {
		return cur, prev.expires.Sub(now)
	}
	if prev != nil && force && (prev.dead.IsZero() || now.Before(prev.dead)) {
		prev.dead = now
	}
	return ts.mintLocked(k, now), ts.ttl
}

func (ts *tokenStore) mintLocked(k tokenKey, now time.Time) string {
	if len(ts.byToken) >= ts.nextSweep {
		ts.sweepLocked(now)
	}
	tok := ts.prefix + newToken()
	ts.byToken[tok] = &tokenInfo{appid: k.appid, kind: k.kind, expires: now.Add(ts.ttl)}
	ts.current[k] = tok
	return tok
}

// sweepLocked forgets tokens that can only answer 40001 anyway. Expired ones are kept for another
// TTL so they still answer 42001 rather than 40001.
func (ts *tokenStore) sweepLocked(now time.Time) {
	for tok, info := range ts.byToken {
		if (!info.dead.IsZero() && now.After(info.dead)) || now.After(info.expires.Add(ts.ttl)) {
			delete(ts.byToken, tok)
		}
	}
	ts.nextSweep = max(1024, 2*len(ts.byToken))
}

// invalidate makes every token of appid answer 40001 from now on.
func (ts *tokenStore) invalidate(appid string, now time.Time) int {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	n := 0
	for _, info := range ts.byToken {
		if info.appid == appid && (info.dead.IsZero() || now.Before(info.dead)) {
			info.dead = now
			n++
		}
	}
	delete(ts.current, tokenKey{appid, classicToken})
	delete(ts.current, tokenKey{appid, stableToken})
	return n
}

func (ts *tokenStore) countFetch(appid string, kind tokenKind) {
	ts.mu.Lock()
	ts.fetches[tokenKey{appid, kind}]++
	ts.mu.Unlock()
}

// fetchCounts returns token-endpoint calls per appid and endpoint name.
func (ts *tokenStore) fetchCounts() map[string]map[string]int64 {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	out := make(map[string]map[string]int64)
	for k, n := range ts.fetches {
		if out[k.appid] == nil {
			out[k.appid] = make(map[string]int64)
		}
		name := APIToken
		if k.kind == stableToken {
			name = APIStableToken
		}
		out[k.appid][name] = n
	}
	return out
}

func (ts *tokenStore) resetCounts() {
	ts.mu.Lock()
	clear(ts.fetches)
	ts.mu.Unlock()
}

// newToken returns a long random token; real ones are opaque and callers must store ≥ 512 chars.
func newToken() string {
	var b [96]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go ≥ 1.24)
	return base64.RawURLEncoding.EncodeToString(b[:])
}
