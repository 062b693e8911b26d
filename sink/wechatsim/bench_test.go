package wechatsim_test

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// BenchmarkServeSubscribe measures the handler alone: what the simulator costs per request.
func BenchmarkServeSubscribe(b *testing.B) {
	for _, rec := range []struct {
		name     string
		noRecord bool
	}{{"record", false}, {"counts-only", true}} {
		b.Run(rec.name, func(b *testing.B) {
			s := wechatsim.New(wechatsim.Config{Accounts: map[string]string{appID: secret}, NoRecord: rec.noRecord})
			w := httptest.NewRecorder()
			s.ServeHTTP(w, httptest.NewRequest("POST", "/cgi-bin/stable_token",
				strings.NewReader(`{"grant_type":"client_credential","appid":"`+appID+`","secret":"`+secret+`"}`)))
			tok := tokenFrom(b, w.Body.String())
			url := subPath + "?access_token=" + tok
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				w := httptest.NewRecorder()
				s.ServeHTTP(w, httptest.NewRequest("POST", url, strings.NewReader(subscribeBody)))
				if w.Code != 200 {
					b.Fatal(w.Code)
				}
			}
		})
	}
}

// BenchmarkHTTPSubscribe measures round trips over loopback with parallel clients.
func BenchmarkHTTPSubscribe(b *testing.B) {
	s, err := wechatsim.Start(wechatsim.Config{Accounts: map[string]string{appID: secret}, NoRecord: true})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	resp, err := http.Post(s.URL()+"/cgi-bin/stable_token", "application/json",
		strings.NewReader(`{"grant_type":"client_credential","appid":"`+appID+`","secret":"`+secret+`"}`))
	if err != nil {
		b.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	tok := tokenFrom(b, string(body))
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var seq atomic.Int64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			// distinct users so the 43108 rule does not fire between parallel clients
			user := fmt.Sprintf("oUpF8uMuAJO_M2px%012d", seq.Add(1))
			resp, err := client.Post(s.URL()+subPath+"?access_token="+tok, "application/json",
				strings.NewReader(strings.Replace(subscribeBody, userA, user, 1)))
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				b.Error(resp.Status)
				return
			}
		}
	})
	b.StopTimer()
	if n := s.Calls("", 0); n < b.N {
		b.Fatalf("%d successes for %d calls", n, b.N)
	}
}

func tokenFrom(tb testing.TB, body string) string {
	_, rest, ok := strings.Cut(body, `"access_token":"`)
	tok, _, ok2 := strings.Cut(rest, `"`)
	if !ok || !ok2 {
		tb.Fatalf("no token in %s", body)
	}
	return tok
}
