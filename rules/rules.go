// Package rules owns wxnotify's rule files: it parses them, checks every rule against the WeChat
// API catalog (wxapi), compiles and type-checks every expr-lang expression once at load, and at
// run time evaluates rules against events and renders the exact JSON bodies to POST.
//
// It is pure: no I/O beyond reading rule files, no logging, no metrics, no clock beyond stamping
// Set.LoadedAt. It does not enforce dedupe, throttle, quiet hours, expiry, dry runs or retries:
// it parses, validates and exposes them on Rule for the processor.
//
// # Rule files
//
// A rule file is YAML with one key, `rules:`, a list of rules:
//
//	rules:
//	  - name: order-paid                      # unique across the whole set
//	    description: optional free text
//	    when: event.type == "order.paid"      # expr boolean over event and kafka
//	    account: weapp                        # a WeChat account from the config
//	    api: templateMessage.send             # a wxapi name
//	    message:                              # the request body, field for field
//	      touser: ${event.user.openid}
//	      data:
//	        keyword1: {value: "${yuan(event.order.amount_fen)}"}
//	    retry_on_timeout: false   # allow retrying a timed-out call on APIs with no idempotency key
//	    on_daily_quota: fail      # or delay: wait for the quota reset (00:00 Beijing) in the delay topic
//	    truncate: false           # truncate over-long subscribe/OA values with "…" instead of rejecting
//	    dry_run: false
//	    expire_after: 30m         # Go duration
//	    dedupe: {key: event.order.id, window: 24h}
//	    throttle: {max: 5, per: 1h, key: event.user.openid}   # key defaults to the touser
//	    quiet_hours: {start: "22:00", end: "08:00", zone: Asia/Shanghai, action: skip}  # or delay
//
// Unknown keys are errors everywhere except keyword names under message.data.
//
// # Message strings
//
// Any string in `message` may embed expressions as ${...}. A string that is exactly one ${...}
// takes the expression's value; other strings concatenate their pieces as text. $${ is a literal
// ${. Every field of the WeChat send APIs is a string, so numbers and bools are written as their
// decimal text in string fields (the body must match the API), and a ${...} standing alone
// where the API wants an object (message.data, miniprogram, ...) is encoded as a JSON object.
//
// An expression that evaluates to nil, or fails because a parent of its path is missing,
// rejects the notification with a *FieldError naming the field and the expression: missing data
// never renders as "" or "<nil>". default(x, y) and has(x) are the explicit opt-outs.
//
// # Expressions
//
// Expressions see `event` (the decoded event, see Event) and `kafka` (topic, partition, offset,
// key as a string, time). Besides expr's builtins they may call:
//
//	yuan(3980) == "39.80元"        cny(3980) == "¥39.80"            (integer fen; negatives ok)
//	timefmt(event.occurred_at, "2006-01-02 15:04")                   (in Options.Zone)
//	timeparse("2026-11-22T10:00:00Z")                                (RFC 3339 -> time)
//	truncate("广州市海珠区新港中路397号", 6) == "广州市海珠…"          (runes, "…" included)
//	mask("13812345678") == "138****5678"   mask("王伟") == "王*"   mask("王小伟") == "王*伟"
//	default(event.shop.address, "-")                                 (y when x is nil or "")
//	has(event.shipment.tracking_no)                                  (present and not null)
//
// has and default are nil-safe in their first argument: at compile time a patch (pathPatch)
// makes every access along that path nil-tolerant, as if written has(event?.a?.b), so a missing
// parent gives nil rather than an error. Elsewhere write event.a?.b or `??` explicitly.
package rules

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	_ "time/tzdata" // Asia/Shanghai must resolve on hosts without zoneinfo

	"github.com/expr-lang/expr"
	"github.com/expr-lang/expr/vm"
)

// Options tunes loading.
type Options struct {
	// Zone is the zone of the time helpers (timefmt, times embedded in text) and the default
	// zone of quiet_hours. Nil means Asia/Shanghai, never the host's zone.
	Zone *time.Location
	// Accounts, if non-nil, lists the WeChat accounts the config defines; a rule naming another
	// one is a load problem.
	Accounts []string
	// MaxNodes bounds the size of each expression (expr.MaxNodes). 0 means 1000.
	MaxNodes uint
}

// DefaultMaxNodes is the expression size bound used when Options.MaxNodes is 0.
const DefaultMaxNodes = 1000

// Problem is one thing wrong with the rule files.
type Problem struct {
	File      string
	Line, Col int // 1-based; 0 when the problem concerns the whole file (e.g. it cannot be read)
	Rule      string
	Field     string // dotted path inside the rule: when, message.data.keyword4.value, dedupe.window
	Msg       string
}

// String formats p as `file:line:col: rule "name": field: message`, leaving out the rule and
// the field when empty, and line:col when Line is 0.
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", p.Line, p.Col)
	}
	b.WriteString(": ")
	if p.Rule != "" {
		fmt.Fprintf(&b, "rule %q: ", p.Rule)
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Msg)
	return b.String()
}

// LoadError lists every problem found in every file, sorted by file, line and column.
type LoadError struct {
	Problems []Problem
}

// Error returns one problem per line.
func (e *LoadError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// Set is a loaded, fully compiled set of rules. It is immutable and safe for concurrent use;
// reloading builds a new Set.
type Set struct {
	// Version is the first 12 hex digits of a sha256 over the sorted (base file name, content)
	// pairs: the same rules give the same version on every replica, wherever they are mounted.
	Version  string
	LoadedAt time.Time
	// Rules in load order: files sorted by name, rules in file order.
	Rules []*Rule
	// Files are the file names, sorted.
	Files []string

	zone      *time.Location
	exprOpts  []expr.Option
	usesKafka bool
}

// Accounts returns the accounts the rules use, sorted and unique.
func (s *Set) Accounts() []string {
	var out []string
	for _, r := range s.Rules {
		out = append(out, r.Account)
	}
	slices.Sort(out)
	return slices.Compact(out)
}

// Rule is one compiled rule.
type Rule struct {
	Name, Description, Account, API string
	// When is the source of the `when` expression.
	When string
	// File and Line locate the rule (its first key).
	File string
	Line int

	RetryOnTimeout, Truncate, DryRun bool
	// ExpireAfter is 0 when not set.
	ExpireAfter time.Duration
	Dedupe      *Dedupe
	Throttle    *Throttle
	QuietHours  *QuietHours
	// OnDailyQuota is what WeChat's daily quota (45009) means for the rule's notifications:
	// DailyQuotaFail (the default) or DailyQuotaDelay.
	OnDailyQuota string

	nameLine, nameCol int
	when              *vm.Program
	ops               []op
	staticCaptures    [3]string // touser, template ids (by wxapi TemplateIDPaths) when static
	dedupe, throttle  *keyExpr
}

// Values of Rule.OnDailyQuota.
const (
	// DailyQuotaFail ends the notification failed with errcode 45009.
	DailyQuotaFail = "fail"
	// DailyQuotaDelay keeps the notification in the delay topic until the quota resets at 00:00
	// Beijing time, unless expire_after ends it first.
	DailyQuotaDelay = "delay"
)

// Dedupe asks the processor to drop a notification whose Key was already sent within Window.
type Dedupe struct {
	Key    string // expression source; its value is Notification.DedupeKey
	Window time.Duration
}

// Throttle caps notifications to Max per Per for each key.
type Throttle struct {
	Max int
	Per time.Duration
	// Key is the expression source; "" means the touser. Its value is Notification.ThrottleKey.
	Key string
}

// Quiet hours actions.
const (
	QuietSkip  = "skip"  // drop notifications that fall in quiet hours
	QuietDelay = "delay" // hold them until quiet hours end
)

// QuietHours is a daily window, in Zone, during which notifications are skipped or delayed.
// The window may wrap midnight (22:00-08:00).
type QuietHours struct {
	Start, End time.Duration // since midnight
	Zone       *time.Location
	Action     string // QuietSkip or QuietDelay
}

// Contains reports whether t falls in the quiet window.
func (q *QuietHours) Contains(t time.Time) bool {
	m := sinceMidnight(t.In(q.Zone))
	if q.Start < q.End {
		return m >= q.Start && m < q.End
	}
	return m >= q.Start || m < q.End
}

// NextEnd returns the first end of the quiet window strictly after t: when a delayed
// notification may go.
func (q *QuietHours) NextEnd(t time.Time) time.Time {
	l := t.In(q.Zone)
	y, mo, d := l.Date()
	// The end is a wall-clock time (as Contains reads it): build it from the date, not as an
	// elapsed time since midnight, which is off by an hour on a daylight-saving change.
	e := time.Date(y, mo, d, 0, 0, 0, int(q.End), q.Zone)
	if !e.After(t) {
		e = time.Date(y, mo, d+1, 0, 0, 0, int(q.End), q.Zone)
	}
	return e
}

func sinceMidnight(t time.Time) time.Duration {
	h, m, s := t.Clock()
	return time.Duration(h)*time.Hour + time.Duration(m)*time.Minute + time.Duration(s)*time.Second + time.Duration(t.Nanosecond())
}

var shanghai = sync.OnceValue(func() *time.Location {
	loc, err := time.LoadLocation("Asia/Shanghai")
	if err != nil {
		panic("rules: time/tzdata lacks Asia/Shanghai: " + err.Error())
	}
	return loc
})

// Load reads rules from path: a file, or a directory of *.yaml and *.yml files (not
// recursive; *_test.yaml and *_test.yml are fixtures and are skipped). The error is a
// *LoadError listing every problem.
func Load(path string, opts Options) (*Set, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, &LoadError{Problems: []Problem{{File: path, Msg: err.Error()}}}
	}
	files := map[string][]byte{}
	var problems []Problem
	read := func(name string) {
		data, err := os.ReadFile(name)
		if err != nil {
			problems = append(problems, Problem{File: name, Msg: err.Error()})
			return
		}
		files[name] = data
	}
	if !fi.IsDir() {
		read(path)
	} else {
		entries, err := os.ReadDir(path)
		if err != nil {
			return nil, &LoadError{Problems: []Problem{{File: path, Msg: err.Error()}}}
		}
		for _, e := range entries {
			if isRuleFile(e.Name()) && !e.IsDir() {
				read(filepath.Join(path, e.Name()))
			}
		}
		if len(files) == 0 && len(problems) == 0 {
			problems = append(problems, Problem{File: path, Msg: "no rule files (*.yaml, *.yml) in directory"})
		}
	}
	if len(problems) > 0 {
		return nil, &LoadError{Problems: problems}
	}
	return Parse(files, opts)
}

func isRuleFile(name string) bool {
	ext := filepath.Ext(name)
	if ext != ".yaml" && ext != ".yml" {
		return false
	}
	return !strings.HasSuffix(strings.TrimSuffix(name, ext), "_test")
}

// Parse is Load from memory: files maps file names (used in problems and Rule.File) to content.
func Parse(files map[string][]byte, opts Options) (*Set, error) {
	zone := opts.Zone
	if zone == nil {
		zone = shanghai()
	}
	maxNodes := opts.MaxNodes
	if maxNodes == 0 {
		maxNodes = DefaultMaxNodes
	}
	c := &exprCompiler{opts: append([]expr.Option{expr.Env(exprEnv{}), expr.MaxNodes(maxNodes)}, helperOptions(zone)...)}

	names := make([]string, 0, len(files))
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)

	var problems []Problem
	var rules []*Rule
	h := sha256.New()
	for _, name := range names {
		h.Write([]byte(filepath.Base(name)))
		h.Write([]byte{0})
		h.Write(files[name])
		h.Write([]byte{0})
		fp := &fileParser{name: name, src: files[name], c: c, opts: &opts, zone: zone}
		rules = append(rules, fp.parse()...)
		problems = append(problems, fp.problems...)
	}

	first := map[string]*Rule{}
	for _, r := range rules {
		if r.Name == "" {
			continue
		}
		if prev, dup := first[r.Name]; dup {
			at := prev.File + ":" + strconv.Itoa(prev.nameLine)
			if prev.File == r.File {
				at = "line " + strconv.Itoa(prev.nameLine)
			}
			problems = append(problems, Problem{File: r.File, Line: r.nameLine, Col: r.nameCol, Rule: r.Name, Field: "name",
				Msg: "duplicate rule name (first defined at " + at + ")"})
			continue
		}
		first[r.Name] = r
	}

	if len(problems) > 0 {
		slices.SortStableFunc(problems, func(a, b Problem) int {
			if a.File != b.File {
				return strings.Compare(a.File, b.File)
			}
			if a.Line != b.Line {
				return a.Line - b.Line
			}
			return a.Col - b.Col
		})
		return nil, &LoadError{Problems: problems}
	}
	return &Set{
		Version:   hex.EncodeToString(h.Sum(nil))[:12],
		LoadedAt:  time.Now(),
		Rules:     rules,
		Files:     names,
		zone:      zone,
		exprOpts:  c.opts,
		usesKafka: c.usesKafka,
	}, nil
}
