package wechatsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

const (
	msgInvalidOpenID   = "invalid openid"
	msgInvalidTemplate = "invalid template_id"
	msgDailyQuota      = "reach max api daily quota limit"
	msgMinuteQuota     = "api minute-quota reach limit, must slower, retry next minute"
	msgConcurrentUser  = "too many concurrent requests for the same user, send serially"
	msgRetired45103    = "This API has been unsupported"
	msgRetired45109    = "This API has been withdrawn"
)

var bufPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// call is one send request on its way through the server.
type call struct {
	api    *wxapi.API
	token  string
	appid  string
	touser string
	raw    []byte         // body as read; valid until the handler returns
	body   map[string]any // nil if raw is not a JSON object
	at     time.Time
}

// verdict is the answer computed for a call.
type verdict struct {
	rej       *rejection
	msgid     int64
	duplicate bool
	release   func() // frees the subscribe per-user slot after the latency
}

func (s *Server) serveSend(w http.ResponseWriter, r *http.Request, api *wxapi.API) {
	c := call{api: api, at: s.now(), token: r.URL.Query().Get("access_token")}
	buf := bufPool.Get().(*bytes.Buffer)
	buf.Reset()
	defer bufPool.Put(buf)
	if r.Method == http.MethodPost {
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)); err != nil {
			var tooBig *http.MaxBytesError
			if !errors.As(err, &tooBig) {
				return // the client went away mid-body: nobody to answer
			}
			buf.Reset()
			buf.WriteString("<body too large>")
		}
		c.raw = buf.Bytes()
		if err := json.Unmarshal(c.raw, &c.body); err != nil {
			c.body = nil
		}
		c.touser, _ = c.body["touser"].(string)
	}
	if c.token != "" {
		c.appid = s.tokens.appidOf(c.token)
	}

	extra, f := s.faults.pick(api.Name, c.appid, c.touser, c.at)
	var v verdict
	if f == nil || f.Deliver {
		v = s.process(r, &c)
	}
	if v.release != nil {
		defer v.release()
	}
	req := Request{API: api.Name, AppID: c.appid, ToUser: c.touser, Duplicate: v.duplicate, At: c.at}
	if f != nil {
		o := f.outcome()
		req.ErrCode, req.Fault, req.HTTPStatus = o.errcode, f.Kind, o.status
		if f.Kind == FaultErrcode {
			req.Fault, req.HTTPStatus = FaultErrcode, http.StatusOK
		}
		s.rec.request(req, o, c.raw)
		s.sleep(r, s.cfg.Latency+extra)
		s.answerFault(w, r, f)
		return
	}
	req.HTTPStatus = http.StatusOK
	if v.rej != nil {
		req.ErrCode = v.rej.code
	}
	s.rec.request(req, outcome{errcode: req.ErrCode}, c.raw)
	s.sleep(r, s.cfg.Latency+extra)
	out := buf.AvailableBuffer()[:0] // the body bytes are recorded; reuse the buffer's tail
	if v.rej != nil {
		out = s.rids.appendError(out, v.rej.code, v.rej.msg)
	} else {
		out = appendOK(out, v.msgid)
	}
	writeBody(w, http.StatusOK, out)
}

// process runs WeChat's checks in order and delivers the message if they pass.
func (s *Server) process(r *http.Request, c *call) verdict {
	if r.Method != http.MethodPost {
		return verdict{rej: &rejection{wxapi.ErrMustPOST, msgRequirePOST}}
	}
	if c.token == "" {
		return verdict{rej: &rejection{errMissingToken, msgTokenMissing}}
	}
	if _, code := s.tokens.check(c.token, c.at); code == wxapi.ErrAccessTokenExpired {
		return verdict{rej: &rejection{code, msgTokenExpired}}
	} else if code != 0 {
		return verdict{rej: &rejection{code, msgInvalidCred}}
	}
	if s.cfg.RetiredAPIs && c.api.Retired != 0 {
		msg := msgRetired45103
		if c.api.Retired == wxapi.ErrAPIWithdrawn {
			msg = msgRetired45109
		}
		return verdict{rej: &rejection{c.api.Retired, msg}}
	}
	switch s.quotas.take(c.appid, c.api.Name, c.at) {
	case wxapi.ErrDailyQuota:
		return verdict{rej: &rejection{wxapi.ErrDailyQuota, msgDailyQuota}}
	case wxapi.ErrMinuteQuota:
		return verdict{rej: &rejection{wxapi.ErrMinuteQuota, msgMinuteQuota}}
	}
	if rej := s.validate(c); rej != nil {
		return verdict{rej: rej}
	}
	var release func()
	if c.api.Name == "subscribeMessage.send" {
		k := inflightKey{c.appid, c.touser}
		if !s.inflight.acquire(k) {
			return verdict{rej: &rejection{wxapi.ErrConcurrentSameUser, msgConcurrentUser}}
		}
		release = func() { s.inflight.release(k) }
	}
	d := Delivery{
		API: c.api.Name, AppID: c.appid, ToUser: c.touser, TemplateID: c.api.TemplateID(c.body),
		MsgID: s.msgid.Add(1), Body: c.raw, At: c.at,
	}
	bodyKey := ""
	if c.api.IdempotencyField != "" {
		d.ClientMsgID, _ = c.body[c.api.IdempotencyField].(string)
		bodyKey = d.ClientMsgID
	}
	if bodyKey == "" {
		bodyKey = "body:" + strconv.FormatUint(fnv64a(c.raw), 16)
	}
	msgid, fresh := s.rec.deliver(d, bodyKey, c.at)
	return verdict{msgid: msgid, duplicate: !fresh, release: release}
}

// validate checks the body as WeChat does: JSON, escapes, shape, openid, template, values.
func (s *Server) validate(c *call) *rejection {
	if len(bytes.TrimSpace(c.raw)) == 0 {
		return &rejection{errEmptyPostData, msgEmptyPostData}
	}
	if c.body == nil {
		return &rejection{wxapi.ErrJSONParse, msgJSONParse}
	}
	if bytes.IndexByte(c.raw, '\\') >= 0 && hasForbiddenEscape(c.raw) {
		return errUnicodeEscape
	}
	if rej := checkShape(c.body, &c.api.Body, "", s.cfg.AllowUnknownFields); rej != nil {
		return rej
	}
	if !validOpenID(c.touser) {
		return &rejection{wxapi.ErrInvalidOpenID, msgInvalidOpenID}
	}
	if s.openids != nil {
		if _, ok := s.openids[c.touser]; !ok {
			return &rejection{wxapi.ErrInvalidOpenID, msgInvalidOpenID}
		}
	}
	tplID := c.api.TemplateID(c.body)
	if tplID == "" {
		return formatError(templatePaths(c.api) + " missing")
	}
	tpl, known := s.cfg.Templates[tplID]
	if len(s.cfg.Templates) > 0 && !known {
		return &rejection{wxapi.ErrInvalidTemplateID, msgInvalidTemplate}
	}
	if c.api.Name == "subscribeMessage.send" {
		data, _ := c.body["data"].(map[string]any)
		return checkSubscribeValues(data, tpl, !s.cfg.NoKeywordTypeInference)
	}
	return nil
}

// templatePaths names where the template id goes, e.g. "weapp_template_msg.template_id or
// mp_template_msg.template_id".
func templatePaths(a *wxapi.API) string {
	var b bytes.Buffer
	for i, p := range a.TemplateIDPaths {
		if i > 0 {
			b.WriteString(" or ")
		}
		for j, k := range p {
			if j > 0 {
				b.WriteByte('.')
			}
			b.WriteString(k)
		}
	}
	return b.String()
}

// answerFault writes what a terminal fault dictates.
func (s *Server) answerFault(w http.ResponseWriter, r *http.Request, f *activeFault) {
	switch f.Kind {
	case FaultErrcode:
		msg := f.ErrMsg
		if msg == "" {
			msg = msgSystemBusy
		}
		writeBody(w, http.StatusOK, s.rids.appendError(nil, f.ErrCode, msg))
	case FaultHTTPStatus:
		http.Error(w, http.StatusText(f.status()), f.status())
	case FaultReset:
		resetConn(w)
	case FaultTimeout:
		hold := f.MaxHold
		if hold == 0 {
			hold = s.cfg.MaxHold
		}
		t := time.NewTimer(hold)
		defer t.Stop()
		select {
		case <-r.Context().Done():
		case <-s.closing:
			http.Error(w, http.StatusText(http.StatusServiceUnavailable), http.StatusServiceUnavailable)
		case <-t.C:
			http.Error(w, http.StatusText(http.StatusGatewayTimeout), http.StatusGatewayTimeout)
		}
	}
}

// resetConn hijacks the connection and closes it with SO_LINGER 0, so the client sees a reset
// rather than an orderly EOF.
func resetConn(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "connection reset not supported", http.StatusInternalServerError)
		return
	}
	conn, _, err := hj.Hijack()
	if err != nil {
		return
	}
	if tc, ok := conn.(*net.TCPConn); ok {
		_ = tc.SetLinger(0)
	}
	_ = conn.Close()
}

// fnv64a hashes a body for the duplicate report without the allocation of hash/fnv's interface.
func fnv64a(b []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range b {
		h ^= uint64(c)
		h *= 1099511628211
	}
	return h
}
