package wechat

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// poster POSTs JSON bodies to one host over a pool of keep-alive HTTP/1.1 connections, writing
// the request and reading the answer in the caller's goroutine.
//
// Why not net/http for business calls: its Transport runs a read loop and a write loop goroutine
// per connection and hands every request and answer between three goroutines; at thousands of
// sends a second that hand-off, not the network, was most of the processor's CPU (profiled with
// cmd/wxbench). A WeChat call is the simplest HTTP there is (one POST, a ~100-byte JSON answer),
// so the request is written by hand and the answer parsed by net/http's own http.ReadResponse
// (status line, headers, Content-Length or chunked body). Token fetches, and every call when an
// HTTP proxy is configured in the environment, still go through net/http.
type poster struct {
	addr    string      // host:port to dial
	host    string      // Host header
	prefix  string      // "scheme://host": post only takes URLs that start with it
	tls     *tls.Config // nil for plain HTTP
	timeout time.Duration
	dialer  net.Dialer

	idle   chan *pconn   // idle connections, most recently used last
	slots  chan struct{} // one token per open connection: at most MaxConns
	reqs   sync.Pool     // request buffers
	closed atomic.Bool   // set by close: connections coming back are closed, not pooled
}

// pconn is one pooled connection.
type pconn struct {
	c    net.Conn
	br   *bufio.Reader // reads c through the pconn, so within left
	left int           // bytes the answer being read may still take from c
	used time.Time     // when it was last returned to the pool
}

// maxAnswer bounds what one answer may take off the connection: status line, headers, body with
// its framing, trailers. http.ReadResponse bounds none of them (net/http's Transport adds
// MaxResponseHeaderBytes, 10 MB by default), so a server that kept sending a header would be
// read, and held in memory, until the timeout. A WeChat answer is a few hundred bytes, and the
// poster reads at most maxBody + 4 KiB of a body; past maxAnswer the call fails like an answer
// cut short.
const maxAnswer = 1 << 20

var errAnswerTooLong = errors.New("answer longer than 1 MiB")

func newPconn(c net.Conn) *pconn {
	pc := &pconn{c: c}
	pc.br = bufio.NewReaderSize(pc, 4<<10)
	return pc
}

// Read reads from the connection what is left of the answer's maxAnswer bytes.
func (pc *pconn) Read(p []byte) (int, error) {
	if pc.left <= 0 {
		return 0, errAnswerTooLong
	}
	if len(p) > pc.left {
		p = p[:pc.left]
	}
	n, err := pc.c.Read(p)
	pc.left -= n
	return n, err
}

// idleTimeout: a connection idle longer is closed rather than reused; servers (WeChat's nginx
// included) close idle keep-alive connections after about a minute, and a request written to a
// connection the server is closing gets no answer.
const idleTimeout = 30 * time.Second

// lateAnswerWait is how long a call whose deadline passed with nothing read looks once more for
// an answer that arrived meanwhile: long enough to read what is in the socket, too short to
// extend a call that WeChat did not answer.
const lateAnswerWait = 5 * time.Millisecond

// newPoster returns a poster for baseURL, or nil when calls must go through net/http: proxy
// (http.ProxyFromEnvironment in production) names a proxy for it, or the scheme is not http or
// https.
func newPoster(baseURL string, maxConns int, timeout time.Duration, proxy func(*http.Request) (*url.URL, error)) *poster {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil
	}
	if p, err := proxy(&http.Request{URL: u}); err != nil || p != nil {
		return nil
	}
	p := &poster{
		host:    u.Host,
		addr:    u.Host,
		prefix:  u.Scheme + "://" + u.Host,
		timeout: timeout,
		dialer:  net.Dialer{Timeout: timeout, KeepAlive: 30 * time.Second},
		idle:    make(chan *pconn, maxConns),
		slots:   make(chan struct{}, maxConns),
	}
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		p.addr = net.JoinHostPort(u.Hostname(), port)
	}
	if u.Scheme == "https" {
		p.tls = &tls.Config{ServerName: u.Hostname(), MinVersion: tls.VersionTLS12}
	}
	p.reqs.New = func() any { return bytes.NewBuffer(make([]byte, 0, 1024)) }
	return p
}

// answer is an HTTP answer: the status and up to maxBody bytes of the body.
type answer struct {
	status     int
	statusText string
	// started: the status line arrived, so an error after it (reading the body) means WeChat
	// may have acted on the request.
	started bool
	// written: the whole request went out, so WeChat may have acted on it even without an
	// answer. staleConn: nothing at all came back on a pooled keep-alive connection (a clean
	// EOF), the sign of a server that had closed it: the request was not acted on.
	written, staleConn bool
	// unsent: the request never reached the server whole (no free connection within the
	// timeout, the dial or TLS handshake failed, or the write did), so WeChat cannot have acted
	// on it, whatever the error: a retry cannot deliver it twice. A server acts on an HTTP
	// request only once its whole body (Content-Length) has arrived.
	unsent bool
}

// serves reports whether fullURL is on the poster's host.
func (p *poster) serves(fullURL string) bool {
	return len(fullURL) >= len(p.prefix) && fullURL[:len(p.prefix)] == p.prefix &&
		(len(fullURL) == len(p.prefix) || fullURL[len(p.prefix)] == '/' || fullURL[len(p.prefix)] == '?')
}

// post sends body to fullURL (which must start with the poster's scheme://host) and reads the
// answer's body into dst. The call ends at the earlier of ctx's deadline and p.timeout; a
// cancelled ctx interrupts it. Errors are *url.Error, as net/http's client returns them.
func (p *poster) post(ctx context.Context, fullURL string, body []byte, dst *bytes.Buffer) (answer, error) {
	deadline := time.Now().Add(p.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	pc, err := p.get(ctx, deadline)
	if err != nil {
		return answer{unsent: true}, &url.Error{Op: "Post", URL: fullURL, Err: err}
	}
	a, err := p.roundTrip(ctx, pc, fullURL, body, dst, deadline)
	if err != nil {
		p.discard(pc)
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return a, &url.Error{Op: "Post", URL: fullURL, Err: err}
	}
	return a, nil
}

func (p *poster) roundTrip(ctx context.Context, pc *pconn, fullURL string, body []byte, dst *bytes.Buffer, deadline time.Time) (answer, error) {
	if err := pc.c.SetDeadline(deadline); err != nil {
		return answer{unsent: true}, err
	}
	// Cancellation unblocks the I/O by moving the deadline into the past.
	stop := context.AfterFunc(ctx, func() { _ = pc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()

	target := fullURL[len(p.prefix):]
	if target == "" || target[0] != '/' {
		target = "/" + target
	}
	req := p.reqs.Get().(*bytes.Buffer)
	req.Reset()
	req.WriteString("POST ")
	req.WriteString(target)
	req.WriteString(" HTTP/1.1\r\nHost: ")
	req.WriteString(p.host)
	req.WriteString("\r\nUser-Agent: wxnotify\r\nContent-Type: application/json\r\nContent-Length: ")
	req.Write(strconv.AppendInt(req.AvailableBuffer(), int64(len(body)), 10))
	req.WriteString("\r\n\r\n")
	req.Write(body)
	_, err := pc.c.Write(req.Bytes())
	if req.Cap() <= 64<<10 {
		p.reqs.Put(req)
	}
	if err != nil {
		return answer{unsent: true}, err // a write that failed left the request incomplete
	}

	pc.left = maxAnswer
	// Peek first: nothing at all coming back (a clean EOF) on a pooled connection is a server
	// that had closed it, and http.ReadResponse would report it as io.ErrUnexpectedEOF, like an
	// answer cut short.
	_, err = pc.br.Peek(1)
	if err != nil && isTimeout(err) && ctx.Err() == nil {
		// No byte before the deadline. If this process was stalled past it (a long GC pause, a
		// frozen VM, SIGSTOP), WeChat's answer may be waiting in the socket: read it rather than
		// report a send that WeChat answered as "may have been sent".
		if pc.c.SetReadDeadline(time.Now().Add(lateAnswerWait)) == nil {
			_, err = pc.br.Peek(1)
		}
	}
	if err != nil {
		return answer{written: true, staleConn: !pc.used.IsZero() && errors.Is(err, io.EOF)}, err
	}
	resp, err := http.ReadResponse(pc.br, nil)
	if err != nil {
		return answer{written: true}, err
	}
	_, err = dst.ReadFrom(io.LimitReader(resp.Body, maxBody))
	if err != nil {
		resp.Body.Close()
		return answer{started: true}, err
	}
	// The whole body must be consumed before the connection can carry another request.
	n, _ := io.CopyN(io.Discard, resp.Body, 4<<10)
	resp.Body.Close()
	a := answer{status: resp.StatusCode, statusText: resp.Status, started: true}
	// A cancellation that raced the end of the call has moved, or is about to move, the
	// connection's deadline into the past: pooled, it would fail the next caller's send.
	if n >= 4<<10 || resp.Close || pc.br.Buffered() > 0 || !stop() {
		p.discard(pc) // not reusable: an endless body, the server said close, stray bytes, or cancelled
		return a, nil
	}
	p.put(pc)
	return a, nil
}

// get returns an idle connection or dials a new one, waiting for a free slot until deadline.
func (p *poster) get(ctx context.Context, deadline time.Time) (*pconn, error) {
	for {
		select {
		case pc := <-p.idle:
			if pc = p.fresh(pc); pc != nil {
				return pc, nil
			}
			continue
		default:
		}
		select {
		case pc := <-p.idle:
			if pc = p.fresh(pc); pc != nil {
				return pc, nil
			}
		case p.slots <- struct{}{}:
			pc, err := p.dial(ctx, deadline)
			if err != nil {
				<-p.slots
				return nil, err
			}
			return pc, nil
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(time.Until(deadline)):
			return nil, errPoolTimeout
		}
	}
}

var errPoolTimeout = &timeoutError{"no free connection to WeChat within the timeout"}

type timeoutError struct{ msg string }

func (e *timeoutError) Error() string   { return e.msg }
func (e *timeoutError) Timeout() bool   { return true }
func (e *timeoutError) Temporary() bool { return true }

// fresh returns pc if it may be reused, else closes it (and frees its slot) and returns nil.
func (p *poster) fresh(pc *pconn) *pconn {
	if time.Since(pc.used) < idleTimeout {
		return pc
	}
	p.discard(pc)
	return nil
}

func (p *poster) dial(ctx context.Context, deadline time.Time) (*pconn, error) {
	dctx, cancel := context.WithDeadline(ctx, deadline)
	defer cancel()
	c, err := p.dialer.DialContext(dctx, "tcp", p.addr)
	if err != nil {
		return nil, err
	}
	if p.tls != nil {
		tc := tls.Client(c, p.tls)
		if err := tc.HandshakeContext(dctx); err != nil {
			c.Close()
			return nil, fmt.Errorf("tls handshake: %w", err)
		}
		c = tc
	}
	return newPconn(c), nil
}

func (p *poster) put(pc *pconn) {
	if p.closed.Load() {
		p.discard(pc)
		return
	}
	pc.used = time.Now()
	select {
	case p.idle <- pc:
		if p.closed.Load() { // close ran meanwhile: do not leave it in the pool
			p.close()
		}
	default: // cannot happen: idle holds as many as there are slots
		p.discard(pc)
	}
}

func (p *poster) discard(pc *pconn) {
	_ = pc.c.Close()
	<-p.slots
}

// close closes the idle connections; connections in use close when their call ends.
func (p *poster) close() {
	p.closed.Store(true)
	for {
		select {
		case pc := <-p.idle:
			p.discard(pc)
		default:
			return
		}
	}
}
