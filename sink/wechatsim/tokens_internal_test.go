package wechatsim

import (
	"sync"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Sends check tokens while another caller refetches or invalidates them: the store is shared
// (go test -race reports any unguarded read), and a revoked token is refused.
func TestTokenStoreChecksWhileTokensChange(t *testing.T) {
	ts := newTokenStore(time.Hour, 5*time.Minute, time.Second)
	now := time.Now()
	tok, _ := ts.classic("wxa", now)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		for range 200 {
			ts.check(tok, now)
		}
	}()
	go func() {
		defer wg.Done()
		for range 200 {
			ts.classic("wxa", now) // a refetch moves the old token's end of life
			ts.invalidate("wxa", now)
		}
	}()
	wg.Wait()
	if _, code := ts.check(tok, now.Add(time.Hour)); code != wxapi.ErrInvalidCredential && code != wxapi.ErrAccessTokenExpired {
		t.Errorf("a revoked token checks as %d", code)
	}
}
