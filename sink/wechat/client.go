// Package wechat is wxnotify's WeChat HTTP client: it owns access tokens (fetch, cache, refresh
// on rejection), the HTTP connection pool, the classification of every WeChat answer (Classify),
// retries with backoff, per-(account, API) quota stops and rate limits, and the per-(account,
// template) circuit breaker for configuration faults.
//
// It does not render request bodies (rules does), does not serialize sends per user (the
// processor does, which is what avoids 43108), and does not write outcomes (the processor turns
// a Result into an outcome record). Send never returns an error: every outcome, local refusals
// included, is a Result with a Class.
//
// The access token and the app secret never leave this package: not in a Result, an error, a
// log line or a metric.
package wechat

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/singleflight"
	"golang.org/x/time/rate"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Request is one message to send.
type Request struct {
	// Account is a key of Config.Accounts.
	Account string
	// API is a wxapi catalog name, e.g. "subscribeMessage.send".
	API string
	// Body is the JSON body, ready to POST.
	Body []byte
	// ToUser is the recipient openid; logged at debug level only.
	ToUser string
	// TemplateID scopes the circuit breaker and labels log lines.
	TemplateID string
	// RetryOnTimeout allows retrying after a timeout (or an unreadable answer) on an API with no
	// idempotency key, accepting that the user may get the message twice.
	RetryOnTimeout bool
	// MaxAttempts, when positive, bounds this send's attempts below the retry policy's (a probe
	// of an (account, API) that keeps failing makes one).
	MaxAttempts int
}

// Result is the outcome of a Send.
type Result struct {
	// ErrCode is WeChat's final errcode (0 on success), or ErrNoAnswer (-2) when there is no
	// WeChat answer: transport error, timeout, HTTP non-200, cancelled context, unknown
	// account/API.
	ErrCode int
	// ErrMsg is WeChat's final errmsg with its rid, or the local reason. It never contains the
	// access token or the secret.
	ErrMsg string
	// MsgID is WeChat's msgid on success.
	MsgID int64
	// Attempts counts HTTP attempts to the send API (token fetches excluded); 0 when the send was
	// refused locally (quota stop, open breaker, no token).
	Attempts int
	// Class says what the outcome means; see Classify.
	Class Class
	// Ambiguous is set on a transient Result that must not be retried: the request may have
	// reached WeChat (a timeout, a connection cut after the request went out) and the API has
	// no idempotency key, so a retry could deliver the message twice.
	Ambiguous bool
}

// OK reports whether WeChat accepted the message.
func (r Result) OK() bool { return r.Class == ClassOK }

// Client sends requests to WeChat. It is safe for concurrent use.
type Client struct {
	cfg      Config
	http     *http.Client
	tr       *http.Transport
	fast     *poster // business calls without net/http's per-connection goroutines; nil behind a proxy
	log      logrus.FieldLogger
	m        *metrics
	accounts map[string]*account
	names    []string // sorted account names
	sf       singleflight.Group
	// jitter returns a uniform random duration in [0, n); replaced by tests.
	jitter func(n int64) int64
}

// apiState is the per-(account, API) state: quota stops, rate limit, pre-resolved metrics.
type apiState struct {
	idx     int
	api     *wxapi.API
	acct    *account
	limiter *rate.Limiter

	// Unix nanoseconds until which sends are stopped (45009) or paused (45011); 0 = never set.
	dailyUntil  atomicPause
	minuteUntil atomicPause

	duration prometheus.Observer
	okResp   prometheus.Counter
}

const (
	maxBody     = 64 << 10 // a WeChat answer is ~100 bytes; anything bigger is not an answer
	contentType = "application/json"
)

var jsonContentType = []string{contentType}

// New builds a Client. reg receives the metrics (nil: not registered); log receives decision
// lines (nil: discarded). No network call is made; use CheckTokens for a readiness probe.
func New(cfg Config, reg prometheus.Registerer, log logrus.FieldLogger) (*Client, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	if log == nil {
		l := logrus.New()
		l.Out = io.Discard
		log = l
	}
	tr := &http.Transport{
		Proxy: http.ProxyFromEnvironment,
		DialContext: (&net.Dialer{
			Timeout:   cfg.Timeout,
			KeepAlive: 30 * time.Second,
		}).DialContext,
		// HTTP/1.1 with a pool of MaxConns connections: one HTTP/2 connection would cap the
		// sends in flight at the server's stream limit and put them all behind one TCP window.
		MaxIdleConns:          2 * cfg.MaxConns,
		MaxIdleConnsPerHost:   cfg.MaxConns,
		MaxConnsPerHost:       cfg.MaxConns,
		IdleConnTimeout:       90 * time.Second,
		TLSHandshakeTimeout:   cfg.Timeout,
		ResponseHeaderTimeout: cfg.Timeout,
		ExpectContinueTimeout: time.Second,
	}
	c := &Client{
		cfg: cfg,
		tr:  tr,
		http: &http.Client{
			Transport: tr,
			// No Client.Timeout: attempt and fetch set a per-call context deadline of cfg.Timeout.
			// WeChat does not redirect; a redirect is a misconfigured BaseURL or proxy, and
			// following it would carry the token elsewhere.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		fast:     newPoster(cfg.BaseURL, cfg.MaxConns, cfg.Timeout, http.ProxyFromEnvironment),
		log:      log.WithField("component", "wechat"),
		m:        newMetrics(),
		accounts: make(map[string]*account, len(cfg.Accounts)),
		names:    sortedKeys(cfg.Accounts),
		jitter:   rand.Int64N,
	}
	apiNames := wxapi.Names()
	for _, an := range apiNames {
		for _, class := range []Class{ClassTransient, ClassToken, ClassQuota} { // the classes retried
			c.m.retries.WithLabelValues(an, string(class))
		}
	}
	for _, name := range c.names {
		acc := cfg.Accounts[name]
		if acc.TokenSource == "" {
			acc.TokenSource = SourceStable
		}
		a := &account{
			name:         name,
			cred:         acc,
			apis:         make(map[string]*apiState, len(apiNames)),
			tokenFetches: map[string]prometheus.Counter{},
			tokenErrors:  c.m.tokenErrors.WithLabelValues(name),
			trips:        c.m.breakerTrips.WithLabelValues(name),
		}
		a.breakers.m = map[string]*breaker{}
		for _, reason := range []string{reasonInitial, reasonExpired, reasonInvalidated} {
			a.tokenFetches[reason] = c.m.tokenFetches.WithLabelValues(name, reason)
		}
		if r, ok := cfg.RateLimits[name+"/*"]; ok {
			a.limiter = newLimiter(r)
		}
		for i, an := range apiNames {
			api, _ := wxapi.Lookup(an)
			// Series an alert rates over exist at 0 from the start: accounts x APIs x 2 kinds,
			// all three from config and the catalog, so the product stays small.
			for _, kind := range []string{"daily", "minute"} {
				c.m.quotaTrips.WithLabelValues(name, an, kind)
			}
			st := &apiState{
				idx:      i,
				api:      api,
				acct:     a,
				duration: c.m.duration.WithLabelValues(an),
				okResp:   c.m.responses.WithLabelValues(an, "0"),
			}
			if r, ok := cfg.RateLimits[name+"/"+an]; ok {
				st.limiter = newLimiter(r)
			}
			a.apis[an] = st
			a.apiList = append(a.apiList, st)
		}
		if acc.TokenSource == SourceNone {
			a.tok.Store(c.newToken(a, "", time.Time{}))
			a.ready.Store(true)
		}
		c.accounts[name] = a
	}
	c.m.stateSnapshot = c.snapshot
	if reg != nil {
		if err := c.m.register(reg); err != nil {
			return nil, fmt.Errorf("wechat: register metrics: %w", err)
		}
	}
	return c, nil
}

func newLimiter(perSecond float64) *rate.Limiter {
	burst := int(perSecond / 10)
	if burst < 1 {
		burst = 1
	}
	return rate.NewLimiter(rate.Limit(perSecond), burst)
}

// Close closes idle connections. In-flight sends are not interrupted: cancel their contexts.
func (c *Client) Close() {
	c.tr.CloseIdleConnections()
	if c.fast != nil {
		c.fast.close()
	}
}

func (c *Client) now() time.Time { return c.cfg.Now() }

// Send sends one request, retrying as the errcode's Class allows, and returns the final outcome.
// It never panics on bad input and never returns an error: see Result.
func (c *Client) Send(ctx context.Context, req Request) Result {
	a := c.accounts[req.Account]
	if a == nil {
		return Result{ErrCode: ErrNoAnswer, ErrMsg: "unknown account " + strconv.Quote(req.Account), Class: ClassConfig}
	}
	st := a.apis[req.API]
	if st == nil {
		return Result{ErrCode: ErrNoAnswer, ErrMsg: "unknown api " + strconv.Quote(req.API), Class: ClassConfig}
	}
	start := c.now()
	if r, stopped := c.dailyStopped(st, start, 0); stopped {
		c.logSend(&req, r, logrus.DebugLevel)
		return r
	}
	trial, refused := a.breakers.admit(start, req.TemplateID)
	if refused != nil {
		c.logSend(&req, *refused, logrus.DebugLevel)
		return *refused
	}
	r, answered := c.send(ctx, a, st, &req, start)
	if trial || (answered && r.Class == ClassConfig) {
		c.breakerReport(a, &req, trial, answered, r)
	}
	// Trips, stops and token faults have their own error line, logged once where they are
	// decided; the per-send line stays quiet for the sends they then refuse.
	var lvl logrus.Level
	switch {
	case r.Class == ClassOK, r.Class == ClassPermanent, r.Class == ClassQuota:
		lvl = logrus.DebugLevel
	case r.Class == ClassConfig && r.Attempts == 0:
		lvl = logrus.DebugLevel
	case r.Class == ClassToken: // a token we just fetched was rejected: someone must act
		lvl = logrus.ErrorLevel
	default:
		lvl = logrus.WarnLevel
	}
	c.logSend(&req, r, lvl)
	return r
}

// send runs the attempt loop. answered reports whether r is WeChat's answer to the send API
// (as opposed to a local refusal, a token failure or a transport failure).
func (c *Client) send(ctx context.Context, a *account, st *apiState, req *Request, start time.Time) (r Result, answered bool) {
	deadline := start.Add(c.cfg.Retry.Deadline)
	tokenRetried := false
	failures := 0 // retryable failures so far; bounded by maxAttempts
	maxAttempts := c.cfg.Retry.MaxAttempts
	if req.MaxAttempts > 0 && req.MaxAttempts < maxAttempts {
		maxAttempts = req.MaxAttempts
	}
	for {
		if err := ctx.Err(); err != nil {
			return gaveUp(r, err), false
		}
		if failures > 0 || r.Attempts > 0 {
			if res, stopped := c.dailyStopped(st, c.now(), r.Attempts); stopped {
				return res, false
			}
		}
		if res, ok := c.waitMinute(ctx, st, deadline, r); !ok {
			return res, false
		}
		if res, ok := c.waitLimit(ctx, st, deadline, r); !ok {
			return res, false
		}
		tok, terr := c.token(ctx, a)
		if terr != nil {
			r = Result{ErrCode: terr.ErrCode, ErrMsg: terr.Error(), Attempts: r.Attempts, Class: terr.Class}
			if terr.Class != ClassTransient {
				return r, false
			}
			failures++
			if res, ok := c.backoff(ctx, st, failures, maxAttempts, deadline, r); !ok {
				return res, false
			}
			continue
		}

		r.Attempts++
		o := c.attempt(ctx, st, tok, req.Body)
		r.ErrCode, r.ErrMsg, r.MsgID, r.Class = o.code, o.msg, o.msgID, o.class
		switch o.class {
		case ClassOK, ClassPermanent, ClassConfig:
			return r, true
		case ClassToken:
			if tokenRetried || a.cred.TokenSource == SourceNone {
				if a.cred.TokenSource != SourceNone {
					r.ErrMsg += " (rejected again after refetching the token)"
				}
				return r, true
			}
			tokenRetried = true
			a.invalidate(tok)
			c.m.retries.WithLabelValues(st.api.Name, string(ClassToken)).Inc()
			continue // at once: the token, not WeChat's load, was the problem
		case ClassQuota:
			if o.code == wxapi.ErrDailyQuota {
				c.stopDaily(st, o.msg)
				return r, true
			}
			c.pauseMinute(st, o.msg)
			failures++
			if failures >= maxAttempts {
				return r, true
			}
			c.m.retries.WithLabelValues(st.api.Name, string(ClassQuota)).Inc()
			continue // the loop top waits for the pause
		default: // transient
			if ctx.Err() != nil {
				return r, false
			}
			if o.ambiguous && st.api.IdempotencyField == "" && !req.RetryOnTimeout {
				r.ErrMsg += "; the message may have been sent: " + st.api.Name + " has no idempotency key, not retried"
				r.Ambiguous = true
				return r, !o.noAnswer
			}
			failures++
			if res, ok := c.backoff(ctx, st, failures, maxAttempts, deadline, r); !ok {
				return res, !o.noAnswer
			}
		}
	}
}

// backoff waits before retry number failures (full jitter), or says why not.
func (c *Client) backoff(ctx context.Context, st *apiState, failures, maxAttempts int, deadline time.Time, r Result) (Result, bool) {
	if failures >= maxAttempts {
		return r, false
	}
	ceiling := c.cfg.Retry.MaxDelay
	if shift := failures - 1; shift < 32 {
		if d := c.cfg.Retry.BaseDelay << shift; d > 0 && d < ceiling {
			ceiling = d
		}
	}
	var d time.Duration
	if ceiling > 0 {
		d = time.Duration(c.jitter(int64(ceiling)))
	}
	if c.now().Add(d).After(deadline) {
		r.ErrMsg += fmt.Sprintf(" (gave up: retry deadline %s reached)", c.cfg.Retry.Deadline)
		return r, false
	}
	c.m.retries.WithLabelValues(st.api.Name, string(r.Class)).Inc()
	if err := c.cfg.Sleep(ctx, d); err != nil {
		return gaveUp(r, err), false
	}
	return r, true
}

// gaveUp is the Result of a Send abandoned because ctx ended: the last failure if there was one.
func gaveUp(r Result, err error) Result {
	if r.Class == "" || r.Class == ClassOK {
		return Result{ErrCode: ErrNoAnswer, ErrMsg: "not sent: " + err.Error(), Attempts: r.Attempts, Class: ClassTransient}
	}
	r.ErrMsg += " (gave up: " + err.Error() + ")"
	return r
}

// outcome is one HTTP attempt's answer.
type outcome struct {
	code      int
	msg       string
	msgID     int64
	class     Class
	ambiguous bool // the message may or may not have been sent (timeout, cut answer)
	noAnswer  bool // no WeChat errcode
}

// wxResponse is every send API's answer. An absent errcode is a success.
type wxResponse struct {
	ErrCode int    `json:"errcode"`
	ErrMsg  string `json:"errmsg"`
	MsgID   int64  `json:"msgid"`
}

// errNullAnswer: a 200 answer whose body is JSON null, not an answer to a send.
var errNullAnswer = errors.New("null is not a WeChat answer")

var bufPool = sync.Pool{New: func() any { return bytes.NewBuffer(make([]byte, 0, 512)) }}

// attempt makes one HTTP call to the send API.
func (c *Client) attempt(ctx context.Context, st *apiState, tok *token, body []byte) outcome {
	api := st.api.Name
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	t0 := time.Now()
	var a answer
	var err error
	if u := tok.urls[st.idx]; c.fast != nil && c.fast.serves(u) {
		a, err = c.fast.post(ctx, u, body, buf)
	} else {
		a, err = c.postHTTP(ctx, tok.urls[st.idx], body, buf)
	}
	st.duration.Observe(time.Since(t0).Seconds())
	if err != nil {
		c.m.responses.WithLabelValues(api, "-2").Inc()
		o := outcome{code: ErrNoAnswer, class: ClassTransient, noAnswer: true}
		// Ambiguous: the request may have reached WeChat. Only the poster knows when it did not
		// (a.unsent); an error through net/http (a proxy) counts as possibly sent.
		switch {
		case ctx.Err() != nil && a.unsent:
			o.msg = "not sent: " + ctx.Err().Error()
		case ctx.Err() != nil:
			o.msg, o.ambiguous = "send interrupted ("+ctx.Err().Error()+"): the message may have been sent", true
		case isTimeout(err) && a.unsent:
			o.msg = fmt.Sprintf("timeout after %s before the request went out: %s", c.cfg.Timeout, scrubErr(err))
		case isTimeout(err):
			o.msg, o.ambiguous = fmt.Sprintf("timeout after %s: %s", c.cfg.Timeout, scrubErr(err)), true
		case a.started:
			o.msg, o.ambiguous = "read answer: "+scrubErr(err), true
		case a.written && !a.staleConn: // e.g. a reset after the request went out
			o.msg, o.ambiguous = "no answer after the request was sent: "+scrubErr(err)+": the message may have been sent", true
		default:
			o.msg = scrubErr(err)
		}
		return o
	}
	if a.status != http.StatusOK {
		c.m.responses.WithLabelValues(api, "http_"+strconv.Itoa(a.status)).Inc()
		return outcome{code: ErrNoAnswer, msg: "http status " + a.statusText, class: ClassTransient, noAnswer: true}
	}
	var wr wxResponse
	err = json.Unmarshal(buf.Bytes(), &wr)
	if err == nil && bytes.TrimLeft(buf.Bytes(), " \t\r\n")[0] != '{' {
		err = errNullAnswer // JSON null decodes into a struct as nothing, which would read as errcode 0
	}
	if err != nil {
		c.m.responses.WithLabelValues(api, "-2").Inc()
		return outcome{code: ErrNoAnswer, msg: "unreadable answer: " + err.Error(), class: ClassTransient, ambiguous: true, noAnswer: true}
	}
	if wr.ErrCode == 0 {
		st.okResp.Inc()
		return outcome{msg: wr.ErrMsg, msgID: wr.MsgID, class: ClassOK}
	}
	c.m.responses.WithLabelValues(api, errcodeLabel(wr.ErrCode)).Inc()
	return outcome{code: wr.ErrCode, msg: scrubSecrets(wr.ErrMsg, tok.value, st.acct.cred.Secret), msgID: wr.MsgID, class: Classify(wr.ErrCode)}
}

// postHTTP is post through net/http: used when a proxy is configured for the base URL.
func (c *Client) postHTTP(ctx context.Context, fullURL string, body []byte, dst *bytes.Buffer) (answer, error) {
	actx, cancel := context.WithTimeout(ctx, c.cfg.Timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(actx, http.MethodPost, fullURL, bytes.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	hreq.Header["Content-Type"] = jsonContentType
	resp, err := c.http.Do(hreq) // follows no redirect: see New
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	a := answer{status: resp.StatusCode, statusText: resp.Status, started: true}
	if _, err := dst.ReadFrom(io.LimitReader(resp.Body, maxBody)); err != nil {
		return a, &url.Error{Op: "Post", URL: fullURL, Err: err}
	}
	// Drain a little more so the connection can be reused.
	_, _ = io.CopyN(io.Discard, resp.Body, 4<<10)
	return a, nil
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// scrubErr renders a transport error without its URL's query: a *url.Error carries the full
// URL, and ours carry ?access_token= (business calls) or &secret= (classic token fetch).
func scrubErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Op + " " + redactURL(ue.URL) + ": " + scrubQuery(ue.Err.Error())
	}
	return scrubQuery(err.Error())
}

func redactURL(s string) string {
	if i := strings.IndexByte(s, '?'); i >= 0 {
		return s[:i] + "?REDACTED"
	}
	return s
}

// scrubQuery blanks the values of access_token= and secret= wherever they appear in s: the last
// line of defence for error texts we do not control.
func scrubQuery(s string) string {
	for _, key := range []string{"access_token=", "secret="} {
		for off := 0; ; {
			i := strings.Index(s[off:], key)
			if i < 0 {
				break
			}
			i += off + len(key)
			j := i
			for j < len(s) && !strings.ContainsRune("& \t\r\n\"'", rune(s[j])) {
				j++
			}
			s = s[:i] + "REDACTED" + s[j:]
			off = i + len("REDACTED")
		}
	}
	return s
}

// scrubSecrets removes known secret values from text we did not write (WeChat's errmsg).
func scrubSecrets(s string, secrets ...string) string {
	for _, v := range secrets {
		if v != "" && strings.Contains(s, v) {
			s = strings.ReplaceAll(s, v, "REDACTED")
		}
	}
	return scrubQuery(s)
}

func levelEnabled(l logrus.FieldLogger, lv logrus.Level) bool {
	switch x := l.(type) {
	case *logrus.Entry:
		return x.Logger.IsLevelEnabled(lv)
	case *logrus.Logger:
		return x.IsLevelEnabled(lv)
	}
	return true
}

// logSend writes the one decision line of a Send. Openids appear at debug level only.
func (c *Client) logSend(req *Request, r Result, lvl logrus.Level) {
	if !levelEnabled(c.log, lvl) {
		return
	}
	f := logrus.Fields{
		"account":     req.Account,
		"api":         req.API,
		"template_id": req.TemplateID,
		"class":       string(r.Class),
		"errcode":     r.ErrCode,
		"attempts":    r.Attempts,
	}
	if r.Class != ClassOK {
		f["errmsg"] = r.ErrMsg
	} else {
		f["msgid"] = r.MsgID
	}
	if lvl == logrus.DebugLevel {
		f["to_user"] = req.ToUser
	}
	msg := "wechat send failed"
	if r.OK() {
		msg = "wechat send ok"
	}
	c.log.WithFields(f).Log(lvl, msg)
}
