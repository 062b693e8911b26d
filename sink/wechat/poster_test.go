package wechat

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// countingServer counts the TCP connections its clients open.
func countingServer(t *testing.T, h http.HandlerFunc) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(h)
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	return srv, &conns
}

func TestPosterReusesConnectionsAndReadsAnswers(t *testing.T) {
	var got []string
	var mu sync.Mutex
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		b := new(bytes.Buffer)
		_, _ = b.ReadFrom(r.Body)
		mu.Lock()
		got = append(got, r.Method+" "+r.URL.RequestURI()+" "+r.Header.Get("Content-Type")+" "+b.String())
		mu.Unlock()
		if r.URL.Query().Get("chunked") != "" {
			w.(http.Flusher).Flush() // forces chunked transfer encoding
		}
		_, _ = w.Write([]byte(`{"errcode":0,"errmsg":"ok","msgid":7}`))
	})
	p := newPoster(srv.URL, 4, 5*time.Second, noProxy)
	if p == nil {
		t.Fatal("no poster for a plain http URL")
	}
	defer p.close()
	for i, u := range []string{"/cgi-bin/message/subscribe/send?access_token=T1", "/x?chunked=1", "/cgi-bin/message/subscribe/send?access_token=T2"} {
		var dst bytes.Buffer
		a, err := p.post(context.Background(), srv.URL+u, []byte(`{"touser":"o"}`), &dst)
		if err != nil || a.status != 200 || dst.String() != `{"errcode":0,"errmsg":"ok","msgid":7}` {
			t.Fatalf("call %d: %+v %v %q", i, a, err, dst.String())
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("sequential calls opened %d connections, want 1 (keep-alive)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	if got[0] != `POST /cgi-bin/message/subscribe/send?access_token=T1 application/json {"touser":"o"}` {
		t.Errorf("server saw %q", got[0])
	}
}

func TestPosterBoundsConnections(t *testing.T) {
	release := make(chan struct{})
	var inFlight, peak atomic.Int64
	srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		n := inFlight.Add(1)
		for {
			m := peak.Load()
			if n <= m || peak.CompareAndSwap(m, n) {
				break
			}
		}
		<-release
		inFlight.Add(-1)
		_, _ = w.Write([]byte(`{}`))
	})
	p := newPoster(srv.URL, 3, 5*time.Second, noProxy)
	defer p.close()
	var wg sync.WaitGroup
	for i := 0; i < 10; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var dst bytes.Buffer
			if _, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err != nil {
				t.Error(err)
			}
		}()
	}
	time.Sleep(200 * time.Millisecond)
	close(release)
	wg.Wait()
	if peak.Load() > 3 || conns.Load() > 3 {
		t.Errorf("peak in flight %d, connections %d; want at most 3 (MaxConns)", peak.Load(), conns.Load())
	}
}

func TestPosterErrors(t *testing.T) {
	t.Run("connection dropped: error carries the URL for scrubbing, not reused", func(t *testing.T) {
		srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
			c, _, _ := w.(http.Hijacker).Hijack()
			c.Close()
		})
		p := newPoster(srv.URL, 2, 5*time.Second, noProxy)
		var dst bytes.Buffer
		_, err := p.post(context.Background(), srv.URL+"/s?access_token=SECRET", []byte(`{}`), &dst)
		if err == nil || !strings.Contains(scrubErr(err), "REDACTED") || strings.Contains(scrubErr(err), "SECRET") {
			t.Fatalf("err %v, scrubbed %q", err, scrubErr(err))
		}
		if len(p.slots) != 0 {
			t.Fatalf("a failed connection still holds its slot (%d)", len(p.slots))
		}
	})
	t.Run("timeout", func(t *testing.T) {
		srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) { time.Sleep(500 * time.Millisecond) })
		p := newPoster(srv.URL, 2, 50*time.Millisecond, noProxy)
		var dst bytes.Buffer
		t0 := time.Now()
		a, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst)
		if !isTimeout(err) || time.Since(t0) > 400*time.Millisecond {
			t.Fatalf("err %v after %s, want a timeout after ~50ms", err, time.Since(t0))
		}
		if a.unsent || !a.written {
			t.Fatalf("answer %+v: the request went out whole before the timeout", a)
		}
	})
	t.Run("an answer that arrived while the process was stalled is read", func(t *testing.T) {
		answered := make(chan struct{})
		srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
			_, _ = w.Write([]byte(`{"errcode":0,"msgid":7}`))
			w.(http.Flusher).Flush()
			close(answered)
		})
		p := newPoster(srv.URL, 1, 100*time.Millisecond, noProxy)
		c, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		sc := &stalledConn{Conn: c, answered: answered}
		p.slots <- struct{}{}
		p.put(newPconn(sc))
		var dst bytes.Buffer
		a, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst)
		if err != nil || a.status != http.StatusOK || dst.String() != `{"errcode":0,"msgid":7}` {
			t.Fatalf("answer %+v, body %q, err %v; want WeChat's answer", a, dst.String(), err)
		}
		if !sc.stalled {
			t.Fatal("the connection was not read past its deadline: the test did not stall the call")
		}
	})
	t.Run("no free connection within the timeout: unsent", func(t *testing.T) {
		srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {})
		p := newPoster(srv.URL, 1, 50*time.Millisecond, noProxy)
		p.slots <- struct{}{} // the only connection is busy
		var dst bytes.Buffer
		a, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst)
		if !isTimeout(err) || !a.unsent || conns.Load() != 0 {
			t.Fatalf("answer %+v, err %v, connections %d; want an unsent timeout and no connection", a, err, conns.Load())
		}
	})
	t.Run("write blocked until the timeout: unsent", func(t *testing.T) {
		// The handler never reads the body, so the socket buffers fill and the write stops
		// part-way: the server has an incomplete request it cannot act on.
		release := make(chan struct{})
		srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) { <-release })
		t.Cleanup(func() { close(release) }) // before srv.Close, which waits for the handler
		p := newPoster(srv.URL, 1, 200*time.Millisecond, noProxy)
		var dst bytes.Buffer
		a, err := p.post(context.Background(), srv.URL+"/s", bytes.Repeat([]byte("a"), 64<<20), &dst)
		if !isTimeout(err) || !a.unsent || a.written {
			t.Fatalf("answer %+v, err %v; want an unsent timeout", a, err)
		}
	})
	t.Run("cancel interrupts", func(t *testing.T) {
		srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) { time.Sleep(time.Second) })
		p := newPoster(srv.URL, 2, 5*time.Second, noProxy)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(50*time.Millisecond, cancel)
		var dst bytes.Buffer
		t0 := time.Now()
		_, err := p.post(ctx, srv.URL+"/s", []byte(`{}`), &dst)
		if !errors.Is(err, context.Canceled) || time.Since(t0) > 500*time.Millisecond {
			t.Fatalf("err %v after %s, want context.Canceled soon after 50ms", err, time.Since(t0))
		}
	})
	t.Run("server says close", func(t *testing.T) {
		srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Connection", "close")
			_, _ = w.Write([]byte(`{}`))
		})
		p := newPoster(srv.URL, 2, 5*time.Second, noProxy)
		for i := 0; i < 3; i++ {
			var dst bytes.Buffer
			if _, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err != nil {
				t.Fatal(err)
			}
		}
		if conns.Load() != 3 {
			t.Fatalf("connections = %d, want 3: a connection the server closes is not reused", conns.Load())
		}
	})
	t.Run("idle connection past the idle timeout is not reused", func(t *testing.T) {
		srv, conns := countingServer(t, func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{}`)) })
		p := newPoster(srv.URL, 2, 5*time.Second, noProxy)
		var dst bytes.Buffer
		if _, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err != nil {
			t.Fatal(err)
		}
		pc := <-p.idle
		pc.used = time.Now().Add(-2 * idleTimeout)
		p.idle <- pc
		if _, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err != nil {
			t.Fatal(err)
		}
		if conns.Load() != 2 || len(p.slots) != 1 {
			t.Fatalf("connections %d, open slots %d; want 2 and 1", conns.Load(), len(p.slots))
		}
	})
}

func noProxy(*http.Request) (*url.URL, error) { return nil, nil }

func TestNewPosterFallsBackToNetHTTP(t *testing.T) {
	proxied := func(r *http.Request) (*url.URL, error) {
		if r.URL.Hostname() == "127.0.0.1" {
			return nil, nil // as NO_PROXY would
		}
		return url.Parse("http://proxy.internal:3128")
	}
	if p := newPoster("https://api.weixin.qq.com", 4, time.Second, proxied); p != nil {
		t.Error("a proxy is configured: business calls must go through net/http")
	}
	if p := newPoster("http://127.0.0.1:8090", 4, time.Second, proxied); p == nil {
		t.Error("no proxy applies to a loopback http URL")
	}
	if p := newPoster("ftp://x", 4, time.Second, noProxy); p != nil {
		t.Error("only http and https")
	}
	p := newPoster("https://api.weixin.qq.com", 4, time.Second, noProxy)
	if p == nil || p.addr != "api.weixin.qq.com:443" || p.tls == nil || p.tls.ServerName != "api.weixin.qq.com" {
		t.Fatalf("poster for https: %+v", p)
	}
	if p.serves("https://api.weixin.qq.com.evil/x") || !p.serves("https://api.weixin.qq.com/cgi-bin/x?access_token=t") {
		t.Error("serves must match the host exactly")
	}
}

// The production path: https with certificate verification, connection reuse included.
func TestPosterTLS(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"errcode":0,"msgid":9}`))
	}))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.StartTLS()
	defer srv.Close()
	p := newPoster(srv.URL, 2, 5*time.Second, noProxy)
	if p == nil || p.tls == nil {
		t.Fatal("no TLS poster for an https URL")
	}
	var dst bytes.Buffer
	if _, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err == nil {
		t.Fatal("a certificate from an unknown authority was accepted")
	}
	p.tls.RootCAs = srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs
	p.tls.ServerName = "example.com" // httptest's certificate names example.com
	for i := 0; i < 3; i++ {
		dst.Reset()
		if a, err := p.post(context.Background(), srv.URL+"/s", []byte(`{}`), &dst); err != nil || a.status != 200 || dst.String() != `{"errcode":0,"msgid":9}` {
			t.Fatalf("call %d: %+v %v %q", i, a, err, dst.String())
		}
	}
	if conns.Load() != 2 { // the rejected handshake, then one reused connection
		t.Errorf("connections = %d, want 2", conns.Load())
	}
}

// A send cancelled just as its answer arrives must not hand a poisoned connection (deadline
// moved into the past by the cancellation) to the next send.
func TestPosterCancelledSendDoesNotPoisonThePool(t *testing.T) {
	srv, _ := countingServer(t, func(w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"errcode":0,"errmsg":"ok"}`))
	})
	p := newPoster(srv.URL, 1, 5*time.Second, noProxy) // one connection: every send reuses it
	defer p.close()
	failures := 0
	for i := range 2000 {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { // cancel somewhere around the end of the call
			time.Sleep(time.Duration(i%100) * 2 * time.Microsecond)
			cancel()
			close(done)
		}()
		var dst bytes.Buffer
		_, _ = p.post(ctx, srv.URL+"/a", []byte(`{}`), &dst)
		<-done
		dst.Reset()
		if _, err := p.post(context.Background(), srv.URL+"/b", []byte(`{}`), &dst); err != nil {
			failures++
		}
	}
	if failures > 0 {
		t.Errorf("%d of 2000 sends after a cancelled one failed on the pooled connection", failures)
	}
}

// A pooled connection the server had closed (nothing at all comes back, a clean EOF) is stale,
// not an answer cut short: the request was not acted on, so even subscribeMessage.send (no
// idempotency key) is retried, on a new connection. http.ReadResponse reports that EOF as
// io.ErrUnexpectedEOF, which the poster took for a cut answer, so the send failed as "may have
// been sent" (found by FuzzPosterAnswer, seed "nothing").
func TestStaleConnectionIsRetried(t *testing.T) {
	e := newEnv(t, nil)
	e.c.fast = newPoster(e.f.srv.URL, 4, 2*time.Second, noProxy)
	stale := &answerConn{} // answers nothing: EOF at once
	e.c.fast.slots <- struct{}{}
	e.c.fast.put(newPconn(stale))
	r := e.c.Send(context.Background(), subscribe("weapp"))
	if !r.OK() || r.Attempts != 2 || stale.written == 0 || len(e.f.seen()) != 1 {
		t.Fatalf("Send = %+v after a stale connection (request written: %v), WeChat saw %d sends; want a retry that succeeds",
			r, stale.written > 0, len(e.f.seen()))
	}
}

// A server that never stops sending its answer is read up to maxAnswer, not until the timeout
// with the header held in memory (found by FuzzPosterAnswer: a server repeating "0").
func TestPosterBoundsAnswer(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if _, err := c.Write([]byte("HTTP/1.1 200 OK\r\n")); err != nil {
			return
		}
		line := []byte("X-Padding: " + strings.Repeat("a", 1000) + "\r\n")
		for {
			if _, err := c.Write(line); err != nil {
				return // the poster closed the connection
			}
		}
	}()
	p := newPoster("http://"+ln.Addr().String(), 1, 10*time.Second, noProxy)
	var dst bytes.Buffer
	t0 := time.Now()
	_, err = p.post(context.Background(), "http://"+ln.Addr().String()+"/s", []byte(`{}`), &dst)
	if !errors.Is(err, errAnswerTooLong) || time.Since(t0) > 5*time.Second {
		t.Fatalf("err %v after %s; want errAnswerTooLong long before the 10s timeout", err, time.Since(t0))
	}
	endless := &answerConn{data: []byte("0"), endless: true}
	_, err = posterOn(endless).post(context.Background(), "http://wechat.test/s", []byte(`{}`), &dst)
	if !errors.Is(err, errAnswerTooLong) || endless.read != maxAnswer {
		t.Fatalf("a status line that never ends: err %v after %d bytes, want errAnswerTooLong after %d", err, endless.read, maxAnswer)
	}
}

// stalledConn stands for a process stalled during a call (SIGSTOP, a frozen VM, a long GC
// pause): its first Read starts only once the server has answered and the read deadline has
// passed, so the answer waits in the socket while the deadline says the call timed out.
type stalledConn struct {
	net.Conn
	answered <-chan struct{}
	deadline time.Time
	stalled  bool
}

func (c *stalledConn) SetDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetDeadline(t)
}

func (c *stalledConn) SetReadDeadline(t time.Time) error {
	c.deadline = t
	return c.Conn.SetReadDeadline(t)
}

func (c *stalledConn) Read(p []byte) (int, error) {
	if !c.stalled {
		c.stalled = true
		<-c.answered
		for time.Now().Before(c.deadline) {
			time.Sleep(time.Until(c.deadline))
		}
	}
	return c.Conn.Read(p)
}
