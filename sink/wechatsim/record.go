package wechatsim

import (
	"hash/maphash"
	"sort"
	"strconv"
	"sync"
	"time"
)

// Delivery is one message the simulator accepted and "delivered" to a user. A deduplicated
// template.send is not a new Delivery.
type Delivery struct {
	API         string
	AppID       string
	ToUser      string
	TemplateID  string
	ClientMsgID string
	MsgID       int64
	Body        []byte // as received
	At          time.Time
}

// Request is one send call as received, whatever the answer.
type Request struct {
	API    string
	AppID  string // "" if the token was unknown
	ToUser string
	Body   []byte // as received
	// ErrCode is the errcode answered (0 on success, and on transport faults, see Fault).
	ErrCode int
	// Fault is the kind of the fault that shaped the answer, "" if none.
	Fault FaultKind
	// HTTPStatus is the status answered (0 for reset and for timeouts the client abandoned).
	HTTPStatus int
	// Duplicate is set when a template.send was answered from the client_msg_id dedup window.
	Duplicate bool
	At        time.Time
}

// outcome classifies an answer for the stats.
type outcome struct {
	errcode int
	fault   FaultKind // "" for a JSON errcode answer (including errcode faults)
	status  int
}

func (o outcome) String() string {
	switch o.fault {
	case "":
		return strconv.Itoa(o.errcode)
	case FaultHTTPStatus:
		return "http_" + strconv.Itoa(o.status)
	}
	return string(o.fault)
}

type callKey struct {
	api string
	outcome
}

// DuplicateKey is a (api, touser, dedup key) that was delivered more than once. Key is the
// client_msg_id when the body had one, otherwise "body:" and a hash of the body bytes.
type DuplicateKey struct {
	API    string `json:"api"`
	ToUser string `json:"touser"`
	Key    string `json:"key"`
	Count  int    `json:"count"`
}

type dedupKey struct{ appid, touser, clientMsgID string }

type dedupEntry struct {
	msgid int64
	at    time.Time
}

// recorder keeps what the server saw. One mutex: every critical section is a few map operations
// or an append, far below the cost of the HTTP round trip around it.
type recorder struct {
	noRecord bool
	max      int
	window   time.Duration
	seed     maphash.Seed

	mu         sync.Mutex
	requests   []Request
	deliveries []Delivery
	calls      map[callKey]int64
	delivered  map[string]int64 // per api
	deduped    map[string]int64 // per api
	perKey     map[uint64]int   // hash(api, touser, dedup key) -> deliveries
	dupes      map[uint64]*DuplicateKey
	dedup      map[dedupKey]dedupEntry
	nextSweep  int
}

func newRecorder(cfg *Config) *recorder {
	r := &recorder{noRecord: cfg.NoRecord, max: cfg.MaxRecords, window: cfg.DedupWindow, seed: maphash.MakeSeed()}
	r.resetLocked()
	return r
}

func (r *recorder) resetLocked() {
	r.requests, r.deliveries = nil, nil
	r.calls = make(map[callKey]int64)
	r.delivered = make(map[string]int64)
	r.deduped = make(map[string]int64)
	r.perKey = make(map[uint64]int)
	r.dupes = make(map[uint64]*DuplicateKey)
	r.dedup = make(map[dedupKey]dedupEntry)
	r.nextSweep = 1024
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.resetLocked()
	r.mu.Unlock()
}

func (r *recorder) countCall(api string, o outcome) {
	r.mu.Lock()
	r.calls[callKey{api, o}]++
	r.mu.Unlock()
}

// request records a send call and its outcome. body is copied unless recording is off.
func (r *recorder) request(req Request, o outcome, body []byte) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls[callKey{req.API, o}]++
	if r.noRecord {
		return
	}
	req.Body = append([]byte(nil), body...)
	r.requests = appendCapped(r.requests, req, r.max)
}

// deliver records a delivery; for a template.send with a client_msg_id it first re-checks the
// dedup window under the lock (two identical calls may race) and returns the earlier msgid and
// false if the message was already delivered.
func (r *recorder) deliver(d Delivery, bodyKey string, now time.Time) (int64, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if d.ClientMsgID != "" {
		k := dedupKey{d.AppID, d.ToUser, d.ClientMsgID}
		if e, ok := r.dedup[k]; ok && now.Sub(e.at) < r.window {
			r.deduped[d.API]++
			return e.msgid, false
		}
		if len(r.dedup) >= r.nextSweep {
			r.sweepDedupLocked(now)
		}
		r.dedup[k] = dedupEntry{msgid: d.MsgID, at: now}
	}
	r.delivered[d.API]++
	h := r.keyHash(d.API, d.ToUser, bodyKey)
	r.perKey[h]++
	if n := r.perKey[h]; n > 1 {
		if dk := r.dupes[h]; dk != nil {
			dk.Count = n
		} else {
			r.dupes[h] = &DuplicateKey{API: d.API, ToUser: d.ToUser, Key: bodyKey, Count: n}
		}
	}
	if !r.noRecord {
		d.Body = append([]byte(nil), d.Body...)
		r.deliveries = appendCapped(r.deliveries, d, r.max)
	}
	return d.MsgID, true
}

func (r *recorder) sweepDedupLocked(now time.Time) {
	for k, e := range r.dedup {
		if now.Sub(e.at) >= r.window {
			delete(r.dedup, k)
		}
	}
	r.nextSweep = max(1024, 2*len(r.dedup))
}

// keyHash identifies a delivery key in 8 bytes: the benchmark delivers 200k messages, and only the
// duplicated keys need their strings.
func (r *recorder) keyHash(api, touser, key string) uint64 {
	var h maphash.Hash
	h.SetSeed(r.seed)
	h.WriteString(api)
	h.WriteByte(0)
	h.WriteString(touser)
	h.WriteByte(0)
	h.WriteString(key)
	return h.Sum64()
}

// appendCapped appends v, first dropping the oldest half of s when it holds max items.
func appendCapped[T any](s []T, v T, max int) []T {
	if max > 0 && len(s) >= max {
		n := copy(s, s[len(s)-max/2:])
		clear(s[n:])
		s = s[:n]
	}
	return append(s, v)
}

func (r *recorder) snapshotRequests() []Request {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Request(nil), r.requests...)
}

func (r *recorder) snapshotDeliveries() []Delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Delivery(nil), r.deliveries...)
}

// Stats counts calls and deliveries since start or the last Reset.
type Stats struct {
	// Calls maps API name -> outcome -> calls. Outcome is the errcode answered ("0" for success)
	// or, for transport faults, "http_500", "reset" or "timeout". Token endpoints appear as
	// getAccessToken and getStableAccessToken.
	Calls map[string]map[string]int64 `json:"calls"`
	// TokenFetches maps appid -> token endpoint -> calls naming that appid.
	TokenFetches map[string]map[string]int64 `json:"token_fetches"`
	// Delivered maps API name -> messages delivered (deduplicated calls excluded).
	Delivered map[string]int64 `json:"delivered"`
	// Deduplicated maps API name -> calls answered from the client_msg_id window.
	Deduplicated map[string]int64 `json:"deduplicated"`
}

func (r *recorder) stats() Stats {
	r.mu.Lock()
	defer r.mu.Unlock()
	st := Stats{
		Calls:        make(map[string]map[string]int64),
		Delivered:    make(map[string]int64, len(r.delivered)),
		Deduplicated: make(map[string]int64, len(r.deduped)),
	}
	for k, n := range r.calls {
		if st.Calls[k.api] == nil {
			st.Calls[k.api] = make(map[string]int64)
		}
		st.Calls[k.api][k.outcome.String()] += n
	}
	for k, n := range r.delivered {
		st.Delivered[k] = n
	}
	for k, n := range r.deduped {
		st.Deduplicated[k] = n
	}
	return st
}

// calls returns how many calls to api ("" = all send APIs) were answered errcode in JSON.
func (r *recorder) callCount(api string, errcode int) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := int64(0)
	for k, c := range r.calls {
		if k.fault == "" && k.errcode == errcode && (k.api == api || (api == "" && isSendAPI(k.api))) {
			n += c
		}
	}
	return int(n)
}

// Summary counts deliveries per API and lists the keys delivered more than once.
type Summary struct {
	Total  int                   `json:"total"`
	PerAPI map[string]APISummary `json:"per_api"`
	// Duplicates lists keys delivered more than once, sorted by API, touser, key.
	Duplicates []DuplicateKey `json:"duplicates"`
}

// APISummary is one API's line in a Summary.
type APISummary struct {
	Delivered    int `json:"delivered"`
	Distinct     int `json:"distinct"`     // distinct (touser, dedup key)
	Duplicates   int `json:"duplicates"`   // Delivered - Distinct
	Deduplicated int `json:"deduplicated"` // answered from the client_msg_id window, not delivered
}

func (r *recorder) summary() Summary {
	r.mu.Lock()
	defer r.mu.Unlock()
	sum := Summary{PerAPI: make(map[string]APISummary), Duplicates: []DuplicateKey{}}
	extra := make(map[string]int)
	for _, d := range r.dupes {
		sum.Duplicates = append(sum.Duplicates, *d)
		extra[d.API] += d.Count - 1
	}
	for api, n := range r.delivered {
		sum.Total += int(n)
		sum.PerAPI[api] = APISummary{Delivered: int(n), Distinct: int(n) - extra[api], Duplicates: extra[api], Deduplicated: int(r.deduped[api])}
	}
	sort.Slice(sum.Duplicates, func(i, j int) bool {
		a, b := sum.Duplicates[i], sum.Duplicates[j]
		if a.API != b.API {
			return a.API < b.API
		}
		if a.ToUser != b.ToUser {
			return a.ToUser < b.ToUser
		}
		return a.Key < b.Key
	})
	return sum
}
