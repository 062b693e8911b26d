package wechatsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// FaultKind says what a fault does to a call.
type FaultKind string

const (
	// FaultLatency adds Fault.Latency before answering. Latency faults add up and do not stop a
	// terminal fault from firing too. A tail is a latency fault with a Rate.
	FaultLatency FaultKind = "latency"
	// FaultErrcode answers {"errcode":ErrCode,...} with HTTP 200.
	FaultErrcode FaultKind = "errcode"
	// FaultHTTPStatus answers HTTP Status (default 500) with a non-JSON body.
	FaultHTTPStatus FaultKind = "http_status"
	// FaultReset closes the TCP connection (RST) without answering.
	FaultReset FaultKind = "reset"
	// FaultTimeout holds the request until the client gives up, MaxHold passes (then 504), or the
	// server closes.
	FaultTimeout FaultKind = "timeout"
)

// Fault is one injected misbehaviour. It fires on a call when the call is in scope (API, AppID,
// OpenIDs), the schedule allows it (From, Until), it has calls left (Count) and the dice say so
// (Rate). Several faults may be set: all firing latency faults add up, and the first firing
// terminal fault (in the order set) decides the answer.
type Fault struct {
	// ID names the fault for RemoveFault; SetFault assigns one if empty and replaces a fault with
	// the same ID.
	ID   string    `json:"id,omitempty" yaml:"id"`
	Kind FaultKind `json:"kind" yaml:"kind"`

	// API limits the fault to one API name ("" = every send API). Token endpoints are only
	// faulted when named: APIToken, APIStableToken.
	API string `json:"api,omitempty" yaml:"api"`
	// AppID limits the fault to calls whose token belongs to this appid.
	AppID string `json:"appid,omitempty" yaml:"appid"`
	// OpenIDs limits the fault to these touser values.
	OpenIDs []string `json:"openids,omitempty" yaml:"openids"`

	// Rate is the probability a call in scope is hit (0 = every call).
	Rate float64 `json:"rate,omitempty" yaml:"rate"`
	// Count, if > 0, makes the fault fire for the next Count calls it hits, then expire.
	Count int `json:"count,omitempty" yaml:"count"`
	// From and Until bound when the fault is active (zero = open), on the server's clock.
	From  time.Time `json:"from,omitzero" yaml:"from"`
	Until time.Time `json:"until,omitzero" yaml:"until"`

	// Latency is the delay a latency fault adds.
	Latency time.Duration `json:"-" yaml:"latency"`
	// ErrCode and ErrMsg are what an errcode fault answers (ErrMsg defaults to a generic text).
	ErrCode int    `json:"errcode,omitempty" yaml:"errcode"`
	ErrMsg  string `json:"errmsg,omitempty" yaml:"errmsg"`
	// Status is the HTTP status of an http_status fault (default 500).
	Status int `json:"status,omitempty" yaml:"status"`
	// MaxHold overrides Config.MaxHold for a timeout fault.
	MaxHold time.Duration `json:"-" yaml:"max_hold"`
	// Deliver processes the call normally first (so a valid message is delivered and recorded)
	// and only then answers with the fault: the "delivered but the sender never heard" case.
	Deliver bool `json:"deliver,omitempty" yaml:"deliver"`
}

// Validate reports whether f can be installed.
func (f *Fault) Validate() error {
	switch f.Kind {
	case FaultLatency:
		if f.Latency <= 0 {
			return errors.New("latency fault needs latency > 0")
		}
	case FaultErrcode:
		if f.ErrCode == 0 {
			return errors.New("errcode fault needs a non-zero errcode")
		}
	case FaultHTTPStatus:
		if f.Status != 0 && (f.Status < 400 || f.Status > 599) {
			return fmt.Errorf("http_status fault: status %d is not 4xx/5xx", f.Status)
		}
	case FaultReset, FaultTimeout:
	default:
		return fmt.Errorf("unknown fault kind %q", f.Kind)
	}
	if f.Rate < 0 || f.Rate > 1 {
		return fmt.Errorf("rate %v not in [0,1]", f.Rate)
	}
	if f.Count < 0 || f.Latency < 0 || f.MaxHold < 0 {
		return errors.New("negative count, latency or max_hold")
	}
	if !f.From.IsZero() && !f.Until.IsZero() && !f.Until.After(f.From) {
		return errors.New("until is not after from")
	}
	if f.API != "" && f.API != APIToken && f.API != APIStableToken && !isSendAPI(f.API) {
		return fmt.Errorf("unknown api %q", f.API)
	}
	return nil
}

// faultJSON is Fault on the admin wire, with durations as Go duration strings ("150ms").
type faultJSON struct {
	faultAlias
	Latency string `json:"latency,omitempty"`
	MaxHold string `json:"max_hold,omitempty"`
	Left    *int64 `json:"left,omitempty"`
}

type faultAlias Fault

// MarshalJSON writes durations as strings.
func (f Fault) MarshalJSON() ([]byte, error) {
	return json.Marshal(faultToJSON(f, nil))
}

func faultToJSON(f Fault, left *int64) faultJSON {
	j := faultJSON{faultAlias: faultAlias(f), Left: left}
	if f.Latency != 0 {
		j.Latency = f.Latency.String()
	}
	if f.MaxHold != 0 {
		j.MaxHold = f.MaxHold.String()
	}
	return j
}

// UnmarshalJSON reads durations as strings ("150ms") and rejects unknown fields.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var j faultJSON
	if err := strictUnmarshal(b, &j); err != nil {
		return err
	}
	*f = Fault(j.faultAlias)
	var err error
	if j.Latency != "" {
		if f.Latency, err = time.ParseDuration(j.Latency); err != nil {
			return fmt.Errorf("latency: %w", err)
		}
	}
	if j.MaxHold != "" {
		if f.MaxHold, err = time.ParseDuration(j.MaxHold); err != nil {
			return fmt.Errorf("max_hold: %w", err)
		}
	}
	return nil
}

// activeFault is an installed fault with its remaining count.
type activeFault struct {
	Fault
	openids map[string]struct{}
	left    atomic.Int64 // remaining fires when Count > 0
}

func (f *activeFault) inScope(api, appid, touser string, now time.Time) bool {
	if f.API == "" {
		if !isSendAPI(api) {
			return false
		}
	} else if f.API != api {
		return false
	}
	if f.AppID != "" && f.AppID != appid {
		return false
	}
	if f.openids != nil {
		if _, ok := f.openids[touser]; !ok {
			return false
		}
	}
	if !f.From.IsZero() && now.Before(f.From) {
		return false
	}
	if !f.Until.IsZero() && !now.Before(f.Until) {
		return false
	}
	return f.Count == 0 || f.left.Load() > 0
}

// fire rolls the dice and takes one from the count.
func (f *activeFault) fire() bool {
	if f.Rate > 0 && rand.Float64() >= f.Rate {
		return false
	}
	return f.Count == 0 || f.left.Add(-1) >= 0
}

func (f *activeFault) outcome() outcome {
	switch f.Kind {
	case FaultErrcode:
		return outcome{errcode: f.ErrCode}
	case FaultHTTPStatus:
		return outcome{fault: f.Kind, status: f.status()}
	}
	return outcome{fault: f.Kind}
}

func (f *activeFault) status() int {
	if f.Status == 0 {
		return 500
	}
	return f.Status
}

// faultSet holds the installed faults. The hot path reads an immutable snapshot without locking.
type faultSet struct {
	mu   sync.Mutex // serialises writers
	seq  int
	list atomic.Pointer[[]*activeFault]
}

func (fs *faultSet) set(f Fault) (string, error) {
	if err := f.Validate(); err != nil {
		return "", err
	}
	fs.mu.Lock()
	defer fs.mu.Unlock()
	if f.ID == "" {
		fs.seq++
		f.ID = "f" + strconv.Itoa(fs.seq)
	}
	af := &activeFault{Fault: f}
	af.OpenIDs = slices.Clone(f.OpenIDs)
	if len(f.OpenIDs) > 0 {
		af.openids = make(map[string]struct{}, len(f.OpenIDs))
		for _, id := range f.OpenIDs {
			af.openids[id] = struct{}{}
		}
	}
	af.left.Store(int64(f.Count))
	next := fs.liveLocked()
	next = slices.DeleteFunc(next, func(o *activeFault) bool { return o.ID == f.ID })
	next = append(next, af)
	fs.list.Store(&next)
	return f.ID, nil
}

// liveLocked copies the current list without exhausted count faults.
func (fs *faultSet) liveLocked() []*activeFault {
	var out []*activeFault
	if p := fs.list.Load(); p != nil {
		for _, f := range *p {
			if f.Count == 0 || f.left.Load() > 0 {
				out = append(out, f)
			}
		}
	}
	return out
}

func (fs *faultSet) remove(id string) bool {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	cur := fs.liveLocked()
	next := slices.DeleteFunc(slices.Clone(cur), func(o *activeFault) bool { return o.ID == id })
	fs.list.Store(&next)
	return len(next) != len(cur)
}

func (fs *faultSet) clear() {
	fs.mu.Lock()
	fs.list.Store(nil)
	fs.mu.Unlock()
}

// live lists the installed faults that can still fire.
func (fs *faultSet) live() []*activeFault {
	fs.mu.Lock()
	defer fs.mu.Unlock()
	return fs.liveLocked()
}

// pick returns the latency to add and the terminal fault that fires (nil if none) for a call.
func (fs *faultSet) pick(api, appid, touser string, now time.Time) (time.Duration, *activeFault) {
	p := fs.list.Load()
	if p == nil || len(*p) == 0 {
		return 0, nil
	}
	var extra time.Duration
	var term *activeFault
	for _, f := range *p {
		if f.Kind != FaultLatency && term != nil {
			continue // a terminal fault already won; do not spend this one's count
		}
		if !f.inScope(api, appid, touser, now) || !f.fire() {
			continue
		}
		if f.Kind == FaultLatency {
			extra += f.Latency
		} else {
			term = f
		}
	}
	return extra, term
}
