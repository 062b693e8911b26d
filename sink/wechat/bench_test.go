package wechat

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// BenchmarkSend measures the client's cost per send against a local server that answers at once,
// with 64 goroutines per core in flight (hundreds on a 2-core box), like the processor.
func BenchmarkSend(b *testing.B) {
	answer := []byte(`{"errcode":0,"errmsg":"ok","msgid":2938475610293}`)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/cgi-bin/stable_token" {
			io.WriteString(w, `{"access_token":"ACCESSTOKEN-bench","expires_in":7200}`)
			return
		}
		_, _ = io.Copy(io.Discard, r.Body)
		w.Header().Set("Content-Type", "application/json")
		w.Write(answer)
	}))
	defer srv.Close()
	c, err := New(Config{
		BaseURL:  srv.URL,
		Accounts: map[string]Account{"weapp": {AppID: "wxWEAPP", Secret: "s"}},
		Timeout:  5 * time.Second,
		MaxConns: 256,
	}, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	req := subscribe("weapp")
	if r := c.Send(context.Background(), req); !r.OK() {
		b.Fatal(r)
	}
	b.ReportAllocs()
	b.SetParallelism(64)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if r := c.Send(ctx, req); !r.OK() {
				b.Error(r)
				return
			}
		}
	})
}

// BenchmarkSendClientOnly isolates the client's own work (guards, token, classification) from
// HTTP by answering through an in-memory RoundTripper.
func BenchmarkSendClientOnly(b *testing.B) {
	c, err := New(Config{
		BaseURL:  "https://api.weixin.qq.com",
		Accounts: map[string]Account{"weapp": {AppID: "wxWEAPP", Secret: "s"}},
	}, prometheus.NewRegistry(), nil)
	if err != nil {
		b.Fatal(err)
	}
	// In memory, so only the client's own work is measured: that needs the net/http path (the
	// one used behind a proxy). BenchmarkSend measures the production poster over loopback.
	c.fast = nil
	c.http.Transport = roundTripFunc(func(r *http.Request) (*http.Response, error) {
		body := `{"errcode":0,"errmsg":"ok","msgid":2938475610293}`
		if r.URL.Path == "/cgi-bin/stable_token" {
			body = `{"access_token":"ACCESSTOKEN-bench","expires_in":7200}`
		}
		return &http.Response{StatusCode: 200, Status: "200 OK", Body: io.NopCloser(strings.NewReader(body)), Header: http.Header{}}, nil
	})
	req := subscribe("weapp")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		ctx := context.Background()
		for pb.Next() {
			if r := c.Send(ctx, req); !r.OK() {
				b.Error(r)
				return
			}
		}
	})
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
