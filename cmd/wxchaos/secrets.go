package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"time"
)

// scrapeSecrets fetches /metrics and /readyz of every member and counts the sentinel in them.
func scrapeSecrets(ctx context.Context, ms []*member) int {
	n := 0
	for _, m := range ms {
		for _, path := range []string{"/metrics", "/readyz"} {
			body, err := httpGet(ctx, "http://"+m.ops+path)
			if err == nil {
				n += bytes.Count(body, []byte(sentinel))
			}
		}
	}
	return n
}

func httpGet(ctx context.Context, url string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	return io.ReadAll(resp.Body)
}

// scanLogs counts the sentinel in every member's log (its log lines and the error it exited
// with), and the data races a race-built member reported.
func scanLogs(paths []string) (secrets, races int) {
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		secrets += bytes.Count(b, []byte(sentinel))
		races += bytes.Count(b, []byte("WARNING: DATA RACE"))
	}
	return secrets, races
}
