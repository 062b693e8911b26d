package wechatsim_test

import (
	"strings"
	"testing"
	"time"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func TestStableTokenIsSharedUntilInvalidated(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{Now: clk.Now})
	body := `{"grant_type":"client_credential","appid":"` + appID + `","secret":"` + secret + `"}`

	first := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body)
	if first.ExpiresIn != 7200 || len(first.AccessToken) < 100 || strings.Contains(first.raw, "errcode") {
		t.Fatalf("first fetch = %s", first.raw)
	}
	clk.Add(100 * time.Second)
	second := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body)
	if second.AccessToken != first.AccessToken || second.ExpiresIn != 7100 {
		t.Fatalf("second fetch: same=%v expires_in=%d, want same token with 7100", second.AccessToken == first.AccessToken, second.ExpiresIn)
	}
	if got := send(t, s, subPath, first.AccessToken, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("send with stable token: %s", got.raw)
	}

	s.InvalidateTokens(appID)
	if got := send(t, s, subPath, first.AccessToken, subscribeBody); got.ErrCode != 40001 || !strings.Contains(got.ErrMsg, " rid: ") {
		t.Fatalf("after invalidate: %s", got.raw)
	}
	third := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body)
	if third.AccessToken == first.AccessToken || third.ExpiresIn != 7200 {
		t.Fatalf("after invalidate fetch returned the old token or expires_in %d", third.ExpiresIn)
	}
	if got := s.TokenFetches(appID); got != 3 {
		t.Errorf("TokenFetches = %d, want 3", got)
	}
}

func TestStableTokenRotatesNearExpiryAndOnForce(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{Now: clk.Now})
	body := `{"grant_type":"client_credential","appid":"` + appID + `","secret":"` + secret + `"}`
	old := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body).AccessToken

	clk.Add(7200*time.Second - 4*time.Minute) // inside the last 5 minutes
	fresh := do(t, "POST", s.URL()+"/cgi-bin/stable_token", body)
	if fresh.AccessToken == old || fresh.ExpiresIn != 7200 {
		t.Fatalf("near expiry: want a new 7200 s token, got same=%v %d", fresh.AccessToken == old, fresh.ExpiresIn)
	}
	if got := send(t, s, subPath, old, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("old token during overlap: %s", got.raw)
	}
	clk.Add(5 * time.Minute)
	if got := send(t, s, subPath, old, subscribeBody); got.ErrCode != 42001 {
		t.Fatalf("old token after its TTL: %s, want 42001", got.raw)
	}

	forced := do(t, "POST", s.URL()+"/cgi-bin/stable_token", strings.TrimSuffix(body, "}")+`,"force_refresh":true}`)
	if forced.AccessToken == fresh.AccessToken {
		t.Fatal("force_refresh returned the same token")
	}
	if got := send(t, s, subPath, fresh.AccessToken, subscribeBody); got.ErrCode != 40001 {
		t.Fatalf("token killed by force_refresh: %s, want 40001", got.raw)
	}
}

func TestClassicTokenRotatesWithGrace(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{Now: clk.Now, TokenGrace: time.Minute})
	url := s.URL() + "/cgi-bin/token?grant_type=client_credential&appid=" + appID + "&secret=" + secret
	a := do(t, "GET", url, "")
	b := do(t, "GET", url, "")
	if a.AccessToken == "" || a.AccessToken == b.AccessToken || b.ExpiresIn != 7200 {
		t.Fatalf("classic fetches: %s / %s", a.raw, b.raw)
	}
	if got := send(t, s, subPath, a.AccessToken, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("previous token within grace: %s", got.raw)
	}
	clk.Add(61 * time.Second)
	if got := send(t, s, subPath, a.AccessToken, subscribeBody); got.ErrCode != 40001 {
		t.Fatalf("previous token after grace: %s, want 40001", got.raw)
	}
	if got := send(t, s, subPath, b.AccessToken, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("latest token: %s", got.raw)
	}
	// Classic and stable tokens are isolated: a stable fetch does not kill the classic token.
	stableToken(t, s)
	if got := send(t, s, subPath, b.AccessToken, subscribeBody); got.ErrCode != 0 {
		t.Fatalf("classic token after a stable fetch: %s", got.raw)
	}
}

func TestTokenErrors(t *testing.T) {
	s := start(t, wechatsim.Config{})
	classic := func(q string) func() answer {
		return func() answer { return do(t, "GET", s.URL()+"/cgi-bin/token?"+q, "") }
	}
	stable := func(body string) func() answer {
		return func() answer { return do(t, "POST", s.URL()+"/cgi-bin/stable_token", body) }
	}
	tests := []struct {
		name string
		call func() answer
		want int
	}{
		{"classic bad grant_type", classic("grant_type=password&appid=" + appID + "&secret=" + secret), 40002},
		{"classic missing appid", classic("grant_type=client_credential&secret=" + secret), 41002},
		{"classic missing secret", classic("grant_type=client_credential&appid=" + appID), 41004},
		{"classic unknown appid", classic("grant_type=client_credential&appid=wxnope&secret=" + secret), 40013},
		{"classic wrong secret", classic("grant_type=client_credential&appid=" + appID + "&secret=nope"), 40001},
		{"stable bad grant_type", stable(`{"grant_type":"x","appid":"` + appID + `","secret":"` + secret + `"}`), 40002},
		{"stable missing appid", stable(`{"grant_type":"client_credential","secret":"` + secret + `"}`), 41002},
		{"stable missing secret", stable(`{"grant_type":"client_credential","appid":"` + appID + `"}`), 41004},
		{"stable unknown appid", stable(`{"grant_type":"client_credential","appid":"wxnope","secret":"x"}`), 40013},
		{"stable wrong secret", stable(`{"grant_type":"client_credential","appid":"` + appID + `","secret":"nope"}`), 40125},
		{"stable not JSON", stable(`grant_type=client_credential`), 47001},
		{"stable via GET", func() answer { return do(t, "GET", s.URL()+"/cgi-bin/stable_token", "") }, 43002},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.call()
			if got.ErrCode != tt.want || got.AccessToken != "" || !strings.Contains(got.ErrMsg, " rid: ") {
				t.Fatalf("got %s, want errcode %d with rid", got.raw, tt.want)
			}
		})
	}
}

func TestSendTokenErrors(t *testing.T) {
	clk := &fakeClock{now: time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)}
	s := start(t, wechatsim.Config{Now: clk.Now, TokenTTL: time.Hour})
	tok := stableToken(t, s)
	if got := send(t, s, subPath, "", subscribeBody); got.ErrCode != 41001 {
		t.Errorf("missing token: %s", got.raw)
	}
	if got := send(t, s, subPath, "not-a-token", subscribeBody); got.ErrCode != 40001 {
		t.Errorf("unknown token: %s", got.raw)
	}
	clk.Add(time.Hour)
	if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != 42001 {
		t.Errorf("expired token: %s", got.raw)
	}
}

// A sentinel prefix marks every token minted, by both endpoints, and the tokens still work.
func TestTokenPrefixMarksEveryToken(t *testing.T) {
	s := start(t, wechatsim.Config{TokenPrefix: "SENTINEL-TOKEN-"})
	stable := do(t, "POST", s.URL()+"/cgi-bin/stable_token", `{"grant_type":"client_credential","appid":"`+appID+`","secret":"`+secret+`"}`)
	classic := do(t, "GET", s.URL()+"/cgi-bin/token?grant_type=client_credential&appid="+appID+"&secret="+secret, "")
	for _, tok := range []string{stable.AccessToken, classic.AccessToken} {
		if !strings.HasPrefix(tok, "SENTINEL-TOKEN-") || len(tok) < 100 {
			t.Fatalf("token %.40q... lacks the prefix or is short", tok)
		}
		if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != 0 {
			t.Fatalf("send with a prefixed token: %s", got.raw)
		}
	}
}
