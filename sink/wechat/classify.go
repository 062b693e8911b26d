package wechat

import "github.com/wxnotify/wxnotify/sink/wxapi"

// Class is what a send outcome means for the caller and for this client's own retry decision.
type Class string

// The classes a Result can carry. Section C of docs/wechat-api.md is the source of the mapping.
const (
	// ClassOK: WeChat accepted the message (errcode 0 or absent).
	ClassOK Class = "ok"
	// ClassTransient: no verdict on the message (system busy, HTTP 5xx, transport failure,
	// timeout, 43108). Retried here within RetryPolicy; a final transient Result may be retried
	// later by the caller.
	ClassTransient Class = "transient"
	// ClassToken: WeChat rejected the access token again after one refetch-and-retry.
	ClassToken Class = "token"
	// ClassQuota: a daily (45009) or per-minute (45011) quota of the (account, API) is exhausted.
	ClassQuota Class = "quota"
	// ClassPermanent: the message itself can never be delivered (bad openid, no consent,
	// content rejected, ...). Unknown errcodes land here too.
	ClassPermanent Class = "permanent"
	// ClassConfig: the account, API or template is misconfigured; every message like this one
	// will fail until an operator acts. Trips the circuit breaker.
	ClassConfig Class = "config"
)

// ErrNoAnswer is the errcode of a Result that carries no answer from WeChat: a transport error,
// a timeout, an HTTP status other than 200, an unreadable body, a cancelled context, or a local
// refusal (unknown account or API). WeChat's own errcodes are never -2.
const ErrNoAnswer = -2

// classes lists every errcode with a known class. Keep it in step with docs/wechat-api.md
// section C; classify_test.go pins every line.
var classes = map[int]Class{
	0: ClassOK,

	// Token: refetch (compare-and-invalidate) and retry once.
	wxapi.ErrInvalidCredential:  ClassToken, // 40001
	wxapi.ErrInvalidAccessToken: ClassToken, // 40014
	wxapi.ErrAccessTokenExpired: ClassToken, // 42001

	// Transient: backoff with full jitter.
	wxapi.ErrSystemBusy:         ClassTransient, // -1
	wxapi.ErrConcurrentSameUser: ClassTransient, // 43108: the caller should serialize per user
	ErrNoAnswer:                 ClassTransient, // -2: transport, timeout, HTTP non-200

	// Quota.
	wxapi.ErrDailyQuota:  ClassQuota, // 45009: stop (account, API) until 00:00 Beijing
	wxapi.ErrMinuteQuota: ClassQuota, // 45011: pause (account, API) until the next minute

	// Permanent for this message.
	wxapi.ErrInvalidOpenID:     ClassPermanent, // 40003
	43004:                      ClassPermanent, // user does not follow the OA
	43019:                      ClassPermanent, // user blacklisted the OA
	wxapi.ErrNoSubscription:    ClassPermanent, // 43101
	45168:                      ClassPermanent, // sensitive word
	wxapi.ErrJSONParse:         ClassPermanent, // 47001
	wxapi.ErrJSONUnicodeEscape: ClassPermanent, // 47002
	wxapi.ErrArgumentInvalid:   ClassPermanent, // 47003
	40036:                      ClassPermanent, // template_id length / field name
	wxapi.ErrFormIDInvalid:     ClassPermanent, // 41028 (legacy form_id)
	wxapi.ErrFormIDUsed:        ClassPermanent, // 41029 (legacy form_id)

	// Config: fail, and open the (account, template) circuit breaker.
	wxapi.ErrInvalidAppID:      ClassConfig, // 40013
	wxapi.ErrInvalidAppSecret:  ClassConfig, // 40125
	40164:                      ClassConfig, // caller IP not whitelisted
	40243:                      ClassConfig, // AppSecret frozen
	wxapi.ErrAPIUnauthorized:   ClassConfig, // 48001
	43107:                      ClassConfig, // subscription capability / template banned
	wxapi.ErrAPIUnsupported:    ClassConfig, // 45103 templateMessage.send retired
	wxapi.ErrAPIWithdrawn:      ClassConfig, // 45109 uniform_send withdrawn
	wxapi.ErrInvalidTemplateID: ClassConfig, // 40037: stop the template
	wxapi.ErrInvalidPage:       ClassConfig, // 41030: stop the template
	41001:                      ClassConfig, // access_token missing: every send would fail (e.g. source none without the Cloud Hosting sidecar)
	50002:                      ClassConfig, // account restricted
	50004:                      ClassConfig, // API forbidden for the account
	50007:                      ClassConfig, // account frozen
	89501:                      ClassConfig, // IP confirmation pending
	89502:                      ClassConfig,
	89503:                      ClassConfig, // IP needs admin confirmation
	89504:                      ClassConfig,
	89505:                      ClassConfig,
	89506:                      ClassConfig, // IP rejected for 24 h
	89507:                      ClassConfig, // IP rejected for 1 h
}

// Classify returns the class of a business API errcode (the answer of a send API, not of the
// token endpoint). It is the only place that decides what an errcode means:
//
//	ok         0
//	token      40001 40014 42001
//	transient  -1 43108, and -2 (ErrNoAnswer: HTTP non-200, transport error, timeout)
//	quota      45009 (stop until 00:00 Asia/Shanghai) 45011 (pause until the next minute)
//	permanent  40003 43004 43019 43101 45168 47001 47002 47003 40036 41028 41029, and every
//	           errcode not listed here
//	config     40013 40125 40164 40243 48001 43107 45103 45109 40037 41030 41001 50002 50004
//	           50007 89501-89507
//
// On the token endpoint the same numbers mean something else (40001 there is a wrong secret);
// see classifyTokenEndpoint.
func Classify(errcode int) Class {
	if c, ok := classes[errcode]; ok {
		return c
	}
	return ClassPermanent
}

// classifyTokenEndpoint classifies an errcode answered by a token endpoint: a busy platform or a
// per-minute limit is worth retrying; everything else (40001/40125 wrong secret, 40013, 40164,
// 40243, 45009 token quota, 89503, ...) means no token can be had until an operator acts.
func classifyTokenEndpoint(errcode int) Class {
	switch errcode {
	case wxapi.ErrSystemBusy, wxapi.ErrMinuteQuota, ErrNoAnswer:
		return ClassTransient
	}
	return ClassConfig
}
