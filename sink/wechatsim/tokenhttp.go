package wechatsim

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// Errcodes only the token endpoints answer.
const (
	errBadGrantType  = 40002
	errMissingAppID  = 41002
	errMissingSecret = 41004
	errMissingToken  = 41001
	errEmptyPostData = 44002
	classicBadSecret = wxapi.ErrInvalidCredential // the classic endpoint's documented code
	grantClientCreds = "client_credential"
	msgInvalidCred   = "invalid credential, access_token is invalid or not latest"
	msgClassicBadSec = "AppSecret error or AppSecret does not belong to this AppID"
	msgStableBadSec  = "invalid appsecret"
	msgInvalidAppID  = "invalid appid"
	msgBadGrant      = "invalid grant_type"
	msgMissingAppID  = "appid missing"
	msgMissingSecret = "appsecret missing"
	msgRequirePOST   = "require POST method"
	msgJSONParse     = "data format error"
	msgEmptyPostData = "empty post data"
	msgTokenExpired  = "access_token expired"
	msgTokenMissing  = "access_token missing"
	msgSystemBusy    = "system error"
)

// stableRequest is the stable_token body.
type stableRequest struct {
	GrantType    string `json:"grant_type"`
	AppID        string `json:"appid"`
	Secret       string `json:"secret"`
	ForceRefresh bool   `json:"force_refresh"`
}

func (s *Server) serveClassicToken(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	creds := stableRequest{GrantType: q.Get("grant_type"), AppID: q.Get("appid"), Secret: q.Get("secret")}
	s.serveToken(w, r, APIToken, creds, 0, "")
}

func (s *Server) serveStableToken(w http.ResponseWriter, r *http.Request) {
	var creds stableRequest
	code, msg := 0, ""
	if r.Method != http.MethodPost {
		code, msg = wxapi.ErrMustPOST, msgRequirePOST
	} else if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, s.cfg.MaxBodyBytes)).Decode(&creds); err != nil {
		code, msg = wxapi.ErrJSONParse, msgJSONParse
	}
	s.serveToken(w, r, APIStableToken, creds, code, msg)
}

// serveToken answers either token endpoint; code is a pre-check failure (0 if none).
func (s *Server) serveToken(w http.ResponseWriter, r *http.Request, api string, c stableRequest, code int, msg string) {
	now := s.now()
	kind := classicToken
	if api == APIStableToken {
		kind = stableToken
	}
	if c.AppID != "" {
		s.tokens.countFetch(c.AppID, kind)
	}
	extra, f := s.faults.pick(api, c.AppID, "", now)
	if f != nil {
		// Token faults never "deliver": there is nothing to deliver.
		s.rec.countCall(api, f.outcome())
		s.sleep(r, extra)
		s.answerFault(w, r, f)
		return
	}
	if code == 0 {
		code, msg = s.checkCredentials(api, c)
	}
	s.sleep(r, extra)
	if code != 0 {
		s.rec.countCall(api, outcome{errcode: code})
		writeBody(w, http.StatusOK, s.rids.appendError(nil, code, msg))
		return
	}
	var tok string
	var life time.Duration
	if kind == classicToken {
		tok, life = s.tokens.classic(c.AppID, now)
	} else {
		tok, life = s.tokens.stable(c.AppID, c.ForceRefresh, now)
	}
	s.rec.countCall(api, outcome{})
	// Success has no errcode field, as on WeChat.
	b := make([]byte, 0, len(tok)+48)
	b = append(b, `{"access_token":"`...)
	b = append(b, tok...)
	b = append(b, `","expires_in":`...)
	b = strconv.AppendInt(b, int64(life/time.Second), 10)
	b = append(b, '}')
	writeBody(w, http.StatusOK, b)
}

func (s *Server) checkCredentials(api string, c stableRequest) (int, string) {
	switch {
	case c.GrantType != grantClientCreds:
		return errBadGrantType, msgBadGrant
	case c.AppID == "":
		return errMissingAppID, msgMissingAppID
	case c.Secret == "":
		return errMissingSecret, msgMissingSecret
	}
	secret, ok := s.cfg.Accounts[c.AppID]
	switch {
	case !ok:
		return wxapi.ErrInvalidAppID, msgInvalidAppID
	case secret != c.Secret && api == APIToken:
		return classicBadSecret, msgClassicBadSec
	case secret != c.Secret:
		return wxapi.ErrInvalidAppSecret, msgStableBadSec
	}
	return 0, ""
}
