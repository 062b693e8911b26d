package wechatsim

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// msgidBase starts msgids above 2^53, like WeChat's: a client that decodes msgid into a float64
// loses digits here exactly as it would in production.
const msgidBase int64 = 2_819_318_468_279_902_208

// closeTimeout bounds how long Close waits for in-flight calls (latency sleeps) to finish.
const closeTimeout = 10 * time.Second

// Server is the simulator. It implements http.Handler; Start also runs it on a local port.
type Server struct {
	cfg     Config
	now     func() time.Time
	log     logrus.FieldLogger
	openids map[string]struct{}
	apis    map[string]*wxapi.API // by path

	tokens   *tokenStore
	quotas   *quotaTable
	faults   faultSet
	rec      *recorder
	rids     *ridSource
	inflight inflightSet
	msgid    atomic.Int64

	closing   chan struct{} // closed by Close: releases held requests
	closeOnce sync.Once
	httpSrv   *http.Server
	url       string
	served    chan error
}

// New returns a Server for cfg. It panics if cfg.Validate fails: call Validate first on
// configuration that comes from users.
func New(cfg Config) *Server {
	if err := cfg.Validate(); err != nil {
		panic("wechatsim: " + err.Error())
	}
	cfg = cfg.withDefaults()
	s := &Server{
		cfg:     cfg,
		now:     cfg.Now,
		log:     cfg.Logger,
		apis:    make(map[string]*wxapi.API),
		tokens:  newTokenStore(cfg.TokenTTL, cfg.TokenGrace, cfg.StableRefreshWindow),
		quotas:  newQuotaTable(cfg.Quota, cfg.QuotaByAPI),
		rec:     newRecorder(&cfg),
		rids:    newRIDSource(),
		closing: make(chan struct{}),
	}
	s.tokens.prefix = cfg.TokenPrefix
	s.inflight.m = make(map[inflightKey]struct{})
	s.msgid.Store(msgidBase)
	if len(cfg.OpenIDs) > 0 {
		s.openids = make(map[string]struct{}, len(cfg.OpenIDs))
		for _, id := range cfg.OpenIDs {
			s.openids[id] = struct{}{}
		}
	}
	for _, name := range wxapi.Names() {
		a, _ := wxapi.Lookup(name)
		s.apis[a.Path] = a
	}
	for _, f := range cfg.Faults {
		_, _ = s.faults.set(f) // validated above
	}
	return s
}

// Start returns a Server for cfg listening on 127.0.0.1 on a free port.
func Start(cfg Config) (*Server, error) { return StartAt("127.0.0.1:0", cfg) }

// StartAt returns a Server for cfg listening on addr, serving in its own goroutine until Close.
func StartAt(addr string, cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("wechatsim config: %w", err)
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("wechatsim listen: %w", err)
	}
	s := New(cfg)
	s.url = "http://" + ln.Addr().String()
	s.httpSrv = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	s.served = make(chan error, 1)
	go func() { s.served <- s.httpSrv.Serve(ln) }()
	s.log.WithField("url", s.url).Info("wechat simulator listening")
	return s, nil
}

// URL returns "http://127.0.0.1:PORT" after Start ("" for a Server made by New).
func (s *Server) URL() string { return s.url }

// Close stops accepting connections, releases requests held by timeout faults and waits (up to
// 10s) for in-flight calls to finish. It is safe to call more than once.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		if s.httpSrv == nil {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		if err = s.httpSrv.Shutdown(ctx); err != nil {
			err = errors.Join(fmt.Errorf("wechatsim shutdown: %w", err), s.httpSrv.Close())
		}
		if serveErr := <-s.served; serveErr != nil && !errors.Is(serveErr, http.ErrServerClosed) {
			err = errors.Join(err, fmt.Errorf("wechatsim serve: %w", serveErr))
		}
		s.log.Info("wechat simulator closed")
	})
	return err
}

// ServeHTTP routes WeChat paths and /admin/.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch p := r.URL.Path; {
	case p == "/cgi-bin/token":
		s.serveClassicToken(w, r)
	case p == "/cgi-bin/stable_token":
		s.serveStableToken(w, r)
	case strings.HasPrefix(p, "/admin/"):
		s.serveAdmin(w, r)
	default:
		if a, ok := s.apis[p]; ok {
			s.serveSend(w, r, a)
			return
		}
		http.NotFound(w, r)
	}
}

// Deliveries returns the delivered messages in arrival order (nil if Config.NoRecord).
func (s *Server) Deliveries() []Delivery { return s.rec.snapshotDeliveries() }

// Requests returns every send call received, including rejected ones (nil if Config.NoRecord).
func (s *Server) Requests() []Request { return s.rec.snapshotRequests() }

// Stats returns call, token-fetch and delivery counts.
func (s *Server) Stats() Stats {
	st := s.rec.stats()
	st.TokenFetches = s.tokens.fetchCounts()
	return st
}

// Summary counts deliveries per API and lists duplicated (api, touser, dedup key) deliveries.
func (s *Server) Summary() Summary { return s.rec.summary() }

// Calls returns how many calls to api ("" = every send API) were answered with errcode in a JSON
// body (0 = success). Tests use it to assert, for example, that 43108 never happened.
func (s *Server) Calls(api string, errcode int) int { return s.rec.callCount(api, errcode) }

// Reset forgets requests, deliveries, counters, dedup state and quota usage. Tokens and faults
// stay.
func (s *Server) Reset() {
	s.rec.reset()
	s.tokens.resetCounts()
	s.quotas.reset()
	s.log.Info("wechat simulator reset")
}

// TokenFetches returns how many calls to either token endpoint named appid, answered or not.
func (s *Server) TokenFetches(appid string) int {
	n := int64(0)
	for _, c := range s.tokens.fetchCounts()[appid] {
		n += c
	}
	return int(n)
}

// InvalidateTokens makes every current token of appid answer 40001; the next token fetch mints a
// new one.
func (s *Server) InvalidateTokens(appid string) {
	n := s.tokens.invalidate(appid, s.now())
	s.log.WithFields(logrus.Fields{"appid": appid, "tokens": n}).Info("tokens invalidated")
}

// SetFault installs f, replacing an installed fault with the same ID.
func (s *Server) SetFault(f Fault) error {
	id, err := s.faults.set(f)
	if err != nil {
		return fmt.Errorf("set fault: %w", err)
	}
	s.log.WithFields(logrus.Fields{"id": id, "kind": f.Kind, "api": f.API}).Info("fault set")
	return nil
}

// RemoveFault removes the fault called id and reports whether there was one.
func (s *Server) RemoveFault(id string) bool { return s.faults.remove(id) }

// ClearFaults removes every fault.
func (s *Server) ClearFaults() {
	s.faults.clear()
	s.log.Info("faults cleared")
}

// Faults lists the installed faults that can still fire.
func (s *Server) Faults() []Fault {
	live := s.faults.live()
	out := make([]Fault, len(live))
	for i, f := range live {
		out[i] = f.Fault
	}
	return out
}

func isSendAPI(name string) bool {
	_, ok := wxapi.Lookup(name)
	return ok
}

// inflightKey is one user of one app: subscribeMessage.send refuses a second concurrent call.
type inflightKey struct{ appid, openid string }

type inflightSet struct {
	mu sync.Mutex
	m  map[inflightKey]struct{}
}

// acquire marks k busy and returns false if it already was.
func (s *inflightSet) acquire(k inflightKey) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, busy := s.m[k]; busy {
		return false
	}
	s.m[k] = struct{}{}
	return true
}

func (s *inflightSet) release(k inflightKey) {
	s.mu.Lock()
	delete(s.m, k)
	s.mu.Unlock()
}

// sleep waits d, or less if the client goes away or the server closes.
func (s *Server) sleep(r *http.Request, d time.Duration) {
	if d <= 0 {
		return
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
	case <-s.closing:
	}
}
