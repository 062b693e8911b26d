package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestProbe(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			w.WriteHeader(http.StatusOK)
		case "/slow":
			time.Sleep(500 * time.Millisecond)
		default:
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, `{"ready":false,"group_joined":false}`)
		}
	}))
	defer srv.Close()

	for _, tc := range []struct {
		name string
		args []string
		want int
		msg  string
	}{
		{"2xx", []string{srv.URL + "/ok"}, 0, ""},
		{"503 shows the body", []string{srv.URL + "/readyz"}, 1, `503 Service Unavailable: {"ready":false`},
		{"every URL must pass", []string{srv.URL + "/ok", srv.URL + "/readyz"}, 1, "503"},
		{"timeout", []string{"-timeout", "50ms", srv.URL + "/slow"}, 1, "deadline exceeded"},
		{"refused", []string{"http://127.0.0.1:1/"}, 1, "refused"},
		{"no URL", nil, 2, "usage"},
		{"unknown flag", []string{"-retries", "3", srv.URL + "/ok"}, 2, "flag provided but not defined: -retries"},
		{"malformed URL", []string{"://127.0.0.1/readyz"}, 1, "missing protocol scheme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stderr strings.Builder
			if got := run(tc.args, &stderr); got != tc.want {
				t.Fatalf("exit %d, want %d (stderr %q)", got, tc.want, stderr.String())
			}
			if tc.msg == "" && stderr.Len() > 0 {
				t.Errorf("stderr %q, want nothing", stderr.String())
			}
			if !strings.Contains(stderr.String(), tc.msg) {
				t.Errorf("stderr %q lacks %q", stderr.String(), tc.msg)
			}
		})
	}
}
