package wechat

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"
)

// answerConn is a connection to a server that answers whatever is written to it with data and
// then closes (io.EOF), or, endless, sends data over and over and never stops. Writes go nowhere
// and deadlines are ignored, so a reader that relied on a deadline to stop would read on: an
// endless answerConn fails its reads once it has handed out answerConnCap bytes.
type answerConn struct {
	data    []byte
	endless bool
	read    int // bytes handed out
	written int
}

const answerConnCap = 16 << 20

var errAnswerConnCap = errors.New("answerConn: the reader did not stop")

func (c *answerConn) Read(p []byte) (int, error) {
	if c.endless {
		if len(c.data) == 0 {
			return 0, io.EOF
		}
		if c.read >= answerConnCap {
			return 0, errAnswerConnCap
		}
		n := 0
		for n < len(p) {
			n += copy(p[n:], c.data[(c.read+n)%len(c.data):])
		}
		c.read += n
		return n, nil
	}
	if c.read >= len(c.data) {
		return 0, io.EOF
	}
	n := copy(p, c.data[c.read:])
	c.read += n
	return n, nil
}

func (c *answerConn) Write(p []byte) (int, error)      { c.written += len(p); return len(p), nil }
func (c *answerConn) Close() error                     { return nil }
func (c *answerConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *answerConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *answerConn) SetDeadline(time.Time) error      { return nil }
func (c *answerConn) SetReadDeadline(time.Time) error  { return nil }
func (c *answerConn) SetWriteDeadline(time.Time) error { return nil }

// posterOn returns a poster whose pool holds one keep-alive connection, already used once, to
// conn: the next post goes to it.
func posterOn(conn net.Conn) *poster {
	p := newPoster("http://wechat.test", 1, time.Second, noProxy)
	p.slots <- struct{}{}
	p.put(newPconn(conn))
	return p
}

// refAnswer is what net/http makes of data as the answer to a request, read the way the poster
// reads it: http.ReadResponse, at most maxBody bytes of the body, then up to 4 KiB more drained.
type refAnswer struct {
	err      error // from http.ReadResponse
	resp     *http.Response
	body     []byte
	bodyErr  error // reading the first maxBody bytes of the body
	drained  int64 // bytes of the body past maxBody (at most 4 KiB)
	consumed int   // bytes of data the answer took: status line, headers, body as read
}

func readRef(data []byte) (ref refAnswer) {
	r := bytes.NewReader(data)
	br := bufio.NewReaderSize(r, 4<<10)
	defer func() { ref.consumed = len(data) - r.Len() - br.Buffered() }()
	if ref.resp, ref.err = http.ReadResponse(br, nil); ref.err != nil {
		return ref
	}
	ref.body, ref.bodyErr = io.ReadAll(io.LimitReader(ref.resp.Body, maxBody))
	if ref.bodyErr == nil {
		ref.drained, _ = io.CopyN(io.Discard, ref.resp.Body, 4<<10)
	}
	ref.resp.Body.Close()
	return ref
}

// FuzzPosterAnswer gives the poster's answer reader arbitrary bytes as the answer to a send, from
// a server that sends them and closes, and from one that repeats them forever. It must not panic
// or hang, must not read more than maxAnswer, and must agree with net/http's
// http.ReadResponse: an answer net/http cannot read is an error (and "nothing at all came back"
// only when nothing did), one it can read gives the same status and the same body (its first
// maxBody bytes). The connection goes back to the pool only when the answer ended cleanly: the
// body was read to its end, the server did not ask to close, and nothing that came after the
// answer was left unread. Seeds: testdata/fuzz/FuzzPosterAnswer (WeChat answers as they come,
// chunked, with Connection: close, cut short, oversized).
func FuzzPosterAnswer(f *testing.F) {
	f.Fuzz(checkPosterAnswer)
}

func checkPosterAnswer(t *testing.T, data []byte) {
	conn := &answerConn{data: data}
	p := posterOn(conn)
	var dst bytes.Buffer
	a, err := p.post(context.Background(), "http://wechat.test/cgi-bin/message/subscribe/send?access_token=T", []byte(`{}`), &dst)
	if conn.written == 0 {
		t.Fatal("no request written")
	}
	if conn.read > maxAnswer {
		t.Fatalf("read %d bytes of a %d-byte answer (limit %d)", conn.read, len(data), maxAnswer)
	}
	pooled := len(p.idle) == 1
	if len(p.slots) != len(p.idle) {
		t.Fatalf("%d slots held, %d idle connections: a slot leaked", len(p.slots), len(p.idle))
	}
	ref := readRef(data)
	switch {
	case ref.err != nil:
		if err == nil || a.started || !a.written {
			t.Fatalf("answer %q: net/http: %v; poster: %+v, %v", data, ref.err, a, err)
		}
		if a.staleConn != (len(data) == 0) {
			t.Fatalf("answer %q: staleConn %v (nothing came back: %v)", data, a.staleConn, len(data) == 0)
		}
	case ref.bodyErr != nil:
		if err == nil || !a.started {
			t.Fatalf("answer %q: net/http: body %v; poster: %+v, %v", data, ref.bodyErr, a, err)
		}
	case ref.consumed > maxAnswer:
		// Past the limit: net/http reads it, the poster must not (checked above).
	default:
		if err != nil || a.status != ref.resp.StatusCode || a.statusText != ref.resp.Status || !bytes.Equal(dst.Bytes(), ref.body) {
			t.Fatalf("answer %q:\nposter   %+v %v %q\nnet/http %d %q %q", data, a, err, dst.Bytes(), ref.resp.StatusCode, ref.resp.Status, ref.body)
		}
		clean := ref.drained < 4<<10 && !ref.resp.Close && conn.read == ref.consumed
		if pooled != clean {
			t.Fatalf("answer %q: pooled %v; body drained %d, close %v, %d of %d bytes read, the answer is %d",
				data, pooled, ref.drained, ref.resp.Close, conn.read, len(data), ref.consumed)
		}
	}
	if err != nil && pooled {
		t.Fatalf("answer %q: failed (%v) and pooled", data, err)
	}

	endless := &answerConn{data: data, endless: true}
	dst.Reset()
	_, _ = posterOn(endless).post(context.Background(), "http://wechat.test/s", []byte(`{}`), &dst)
	if endless.read > maxAnswer {
		t.Fatalf("a server repeating %q forever: read %d bytes (limit %d)", data, endless.read, maxAnswer)
	}
}

// FuzzSendAnswer gives Send arbitrary bytes as WeChat's HTTP answer (one attempt, no token) and
// checks the Result against what net/http and encoding/json make of them: an answer that cannot
// be read, or is not HTTP 200, is ErrNoAnswer (transient); a 200 whose body is not a JSON object
// that decodes into wxResponse is an unreadable answer (transient); otherwise the errcode (0
// when absent), its class (Classify), and on success the msgid and errmsg are WeChat's. Only a
// JSON object can be a success. Seeds: testdata/fuzz/FuzzSendAnswer (WeChat answers, and bodies
// that are not answers).
func FuzzSendAnswer(f *testing.F) {
	f.Fuzz(checkSendAnswer)
}

func checkSendAnswer(t *testing.T, data []byte) {
	c, err := New(Config{
		BaseURL:  "http://wechat.test",
		Accounts: map[string]Account{"weapp": {TokenSource: SourceNone}},
		Retry:    RetryPolicy{MaxAttempts: 1},
	}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.fast = posterOn(&answerConn{data: data}) // whatever the environment says of proxies
	r := c.Send(context.Background(), subscribe("weapp"))
	if r.Attempts != 1 {
		t.Fatalf("answer %q: %d attempts, want 1", data, r.Attempts)
	}

	ref := readRef(data)
	fail := func(want string) {
		t.Helper()
		t.Fatalf("answer %q: Send gave %+v, want %s", data, r, want)
	}
	switch {
	case ref.err != nil || ref.bodyErr != nil || ref.consumed > maxAnswer:
		if r.ErrCode != ErrNoAnswer || r.Class != ClassTransient {
			fail("no answer (transient)")
		}
		return
	case ref.resp.StatusCode != http.StatusOK:
		if r.ErrCode != ErrNoAnswer || r.Class != ClassTransient || r.ErrMsg != "http status "+ref.resp.Status {
			fail("http status " + ref.resp.Status + " (transient)")
		}
		return
	}
	var wr wxResponse
	err = json.Unmarshal(ref.body, &wr)
	if trimmed := bytes.TrimLeft(ref.body, " \t\r\n"); err != nil || len(trimmed) == 0 || trimmed[0] != '{' {
		if r.ErrCode != ErrNoAnswer || r.Class != ClassTransient || !strings.HasPrefix(r.ErrMsg, "unreadable answer: ") {
			fail("an unreadable answer (transient)")
		}
		return
	}
	switch {
	case wr.ErrCode == 0:
		if r.ErrCode != 0 || r.Class != ClassOK || r.MsgID != wr.MsgID || r.ErrMsg != wr.ErrMsg {
			fail("a success with WeChat's msgid and errmsg")
		}
	case r.ErrCode != wr.ErrCode || r.Class != Classify(wr.ErrCode) || !strings.HasPrefix(r.ErrMsg, scrubQuery(wr.ErrMsg)):
		fail("WeChat's errcode, its class and errmsg")
	}
}
