// Command httpprobe is the container health check of the wxnotify and wechatsim images: the
// images have no shell, curl or wget, so compose's healthcheck runs this instead. It GETs each
// URL given and exits 0 when every answer is 2xx within the timeout, 1 otherwise (the reason on
// stderr, which docker inspect shows), 2 on bad usage. It uses only the standard library so the
// Dockerfile builds it without the deploy module's dependencies.
//
//	httpprobe [-timeout 2s] http://127.0.0.1:9464/readyz
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"time"
)

func main() { os.Exit(run(os.Args[1:], os.Stderr)) }

func run(args []string, stderr io.Writer) int {
	fs := flag.NewFlagSet("httpprobe", flag.ContinueOnError)
	fs.SetOutput(stderr)
	timeout := fs.Duration("timeout", 2*time.Second, "for each URL: connect, send, and read the status")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: httpprobe [-timeout 2s] URL...")
		return 2
	}
	for _, url := range fs.Args() {
		if err := probe(url, *timeout); err != nil {
			fmt.Fprintf(stderr, "httpprobe: %v\n", err)
			return 1
		}
	}
	return 0
}

func probe(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// /readyz says what is missing in its body: keep a line of it for docker inspect.
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("GET %s: %s: %s", url, resp.Status, body)
	}
	return nil
}
