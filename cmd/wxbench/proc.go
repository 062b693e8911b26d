package main

import (
	"bufio"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/sirupsen/logrus"

	"github.com/wxnotify/wxnotify/cmd/internal/app"
	"github.com/wxnotify/wxnotify/rules"
)

//go:embed rules/bench.yaml
var benchRules []byte

// procConfig is what the processor needs to know about the bench's world. In split mode it
// travels to the child in the environment (roleEnv, configEnv).
type procConfig struct {
	Broker      string
	SimURL      string
	WeappAppID  string
	WeappSecret string
	MPAppID     string
	MPSecret    string
	MaxInFlight int
	// FetchLinger and ProduceLinger are kafka.fetch_linger and kafka.produce_linger ("": default).
	FetchLinger, ProduceLinger string
	RulesDir                   string // "" = the embedded bench rules
	Procs                      string // processor.procs
	LogLevel                   string
	CPUProfile                 string
	MemProfile                 string
}

const (
	roleEnv   = "WXBENCH_ROLE" // "processor" makes the binary the processor child
	configEnv = "WXBENCH_PROCESSOR_CONFIG"
)

// lingers returns the kafka section's linger keys the bench was asked to set.
func lingers(pc procConfig) string {
	var b strings.Builder
	for _, l := range [][2]string{{"fetch_linger", pc.FetchLinger}, {"produce_linger", pc.ProduceLinger}} {
		if l[1] != "" {
			fmt.Fprintf(&b, "  %s: %q\n", l[0], l[1])
		}
	}
	return strings.TrimSuffix(b.String(), "\n")
}

// appConfig builds the processor's config the way `wxnotify run` does: YAML text through
// app.ParseConfig (defaults, validation, secrets only by ${VAR} reference).
func appConfig(pc procConfig) (*app.Config, error) {
	raw := fmt.Sprintf(`kafka:
  brokers: [%q]
  group_id: wxbench
  events_topic: events
%s
wechat:
  base_url: %q
  accounts:
    weapp: {appid: %q, secret: "${WXBENCH_WEAPP_SECRET}"}
    mp:    {appid: %q, secret: "${WXBENCH_MP_SECRET}"}
rules:
  path: %q
http:
  addr: "off"
processor:
  max_in_flight: %d
  procs: %s
log:
  level: %s
  format: text
`, pc.Broker, lingers(pc), pc.SimURL, pc.WeappAppID, pc.MPAppID, pc.RulesDir, pc.MaxInFlight, pc.Procs, pc.LogLevel)
	secrets := map[string]string{"WXBENCH_WEAPP_SECRET": pc.WeappSecret, "WXBENCH_MP_SECRET": pc.MPSecret}
	cfg, err := app.ParseConfig([]byte(raw), func(k string) (string, bool) { v, ok := secrets[k]; return v, ok })
	if err != nil {
		return nil, fmt.Errorf("bench config: %w", err)
	}
	return cfg, nil
}

// loadRules returns the embedded bench rules, or the rule files under cfg.Rules.Path.
func loadRules(cfg *app.Config, dir string) (*rules.Set, error) {
	if dir != "" {
		return app.LoadRules(cfg)
	}
	set, err := rules.Parse(map[string][]byte{"bench.yaml": benchRules}, rules.Options{Accounts: []string{"mp", "weapp"}})
	if err != nil {
		return nil, fmt.Errorf("bench rules: %w", err)
	}
	return set, nil
}

// processorHandle is a running processor, in this process or in a child.
type processorHandle interface {
	// cpu is the CPU time (user+system) of the process the processor runs in, so far.
	cpu() time.Duration
	// mem returns the resident set now and its high-water mark, in bytes.
	mem() (rss, hwm int64)
	// status returns the processor's in-flight events and assigned partitions (-1 if unknown).
	status() (inFlight, assigned int)
	// procs returns how many status samples (every 250ms) the processor's process ran at one P
	// (processor.procs: adaptive), and how many samples there were (0: not sampled).
	procs() (oneP, samples int64)
	// stop shuts the processor down gracefully and waits for it; it returns the final CPU time
	// and high-water mark of the processor's process.
	stop() (cpu time.Duration, hwm int64, err error)
}

// gaugeReader reads two processor gauges from the registry Run registers on.
type gaugeReader struct{ reg *prometheus.Registry }

func (g gaugeReader) read() (inFlight, assigned int) {
	inFlight, assigned = -1, -1
	mfs, err := g.reg.Gather()
	if err != nil {
		return
	}
	for _, mf := range mfs {
		if len(mf.GetMetric()) == 0 {
			continue
		}
		switch mf.GetName() {
		case "wxnotify_inflight_events":
			inFlight = int(mf.GetMetric()[0].GetGauge().GetValue())
		case "wxnotify_assigned_partitions":
			assigned = int(mf.GetMetric()[0].GetGauge().GetValue())
		}
	}
	return
}

// inProcess runs app.Run in this process; CPU and memory are the whole process's (broker,
// simulator and bench included).
type inProcess struct {
	cancel context.CancelFunc
	done   chan error
	gauges gaugeReader
}

func startInProcess(pc procConfig, log *logrus.Logger) (*inProcess, error) {
	cfg, err := appConfig(pc)
	if err != nil {
		return nil, err
	}
	set, err := loadRules(cfg, pc.RulesDir)
	if err != nil {
		return nil, err
	}
	reg := prometheus.NewRegistry()
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcess{cancel: cancel, done: make(chan error, 1), gauges: gaugeReader{reg}}
	go func() { p.done <- app.Run(ctx, cfg, app.Options{Registry: reg, Log: log, Rules: set}) }()
	return p, nil
}

func (p *inProcess) cpu() time.Duration { return selfCPU() }

func (p *inProcess) mem() (int64, int64) { return procMem("self") }

func (p *inProcess) status() (int, int) { return p.gauges.read() }

func (p *inProcess) procs() (int64, int64) { return 0, 0 }

func (p *inProcess) stop() (time.Duration, int64, error) {
	p.cancel()
	err := <-p.done
	_, hwm := procMem("self")
	return selfCPU(), hwm, err
}

// child runs the processor in a re-executed copy of this binary, so its CPU time and memory are
// the processor's alone. Its stdout carries JSON status lines; closing its stdin stops it.
type child struct {
	cmd      *exec.Cmd
	stdin    io.WriteCloser
	pid      string
	inFlight atomic.Int64
	assigned atomic.Int64
	oneP     atomic.Int64 // status samples at GOMAXPROCS 1
	samples  atomic.Int64
	final    chan childLine
	exited   chan error
}

// childLine is one line the child prints.
type childLine struct {
	Kind     string `json:"kind"` // "status" or "done"
	InFlight int    `json:"in_flight"`
	Assigned int    `json:"assigned"`
	Procs    int    `json:"procs"` // GOMAXPROCS, in status lines
	CPUNanos int64  `json:"cpu_ns"`
	HWM      int64  `json:"hwm"`
	Err      string `json:"err,omitempty"`
}

func startChild(pc procConfig, stderr io.Writer) (*child, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	conf, err := json.Marshal(pc)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roleEnv+"=processor", configEnv+"="+string(conf))
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start processor child: %w", err)
	}
	c := &child{cmd: cmd, stdin: stdin, pid: strconv.Itoa(cmd.Process.Pid), final: make(chan childLine, 1), exited: make(chan error, 1)}
	c.inFlight.Store(-1)
	c.assigned.Store(-1)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var l childLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				fmt.Fprintf(stderr, "processor: %s\n", sc.Text())
				continue
			}
			c.inFlight.Store(int64(l.InFlight))
			c.assigned.Store(int64(l.Assigned))
			if l.Kind == "status" {
				c.samples.Add(1)
				if l.Procs == 1 {
					c.oneP.Add(1)
				}
			}
			if l.Kind == "done" {
				c.final <- l
			}
		}
		c.exited <- cmd.Wait()
	}()
	return c, nil
}

func (c *child) cpu() time.Duration { return procCPU(c.pid) }

func (c *child) mem() (int64, int64) { return procMem(c.pid) }

func (c *child) status() (int, int) { return int(c.inFlight.Load()), int(c.assigned.Load()) }

func (c *child) procs() (int64, int64) { return c.oneP.Load(), c.samples.Load() }

func (c *child) stop() (time.Duration, int64, error) {
	c.stdin.Close()
	var l childLine
	select {
	case l = <-c.final:
	case err := <-c.exited:
		return 0, 0, fmt.Errorf("processor child exited without a report: %v", err)
	}
	if err := <-c.exited; err != nil {
		return time.Duration(l.CPUNanos), l.HWM, fmt.Errorf("processor child: %w", err)
	}
	if l.Err != "" {
		return time.Duration(l.CPUNanos), l.HWM, errors.New(l.Err)
	}
	return time.Duration(l.CPUNanos), l.HWM, nil
}

// childMain is the processor child: app.Run until stdin closes (or a signal), then a final report.
func childMain() int {
	out := json.NewEncoder(os.Stdout)
	var mu sync.Mutex
	emit := func(l childLine) {
		mu.Lock()
		defer mu.Unlock()
		_ = out.Encode(l)
	}
	var pc procConfig
	if err := json.Unmarshal([]byte(os.Getenv(configEnv)), &pc); err != nil {
		emit(childLine{Kind: "done", Err: "processor child config: " + err.Error()})
		return 1
	}
	err := runChild(pc, emit)
	_, hwm := procMem("self")
	l := childLine{Kind: "done", CPUNanos: int64(selfCPU()), HWM: hwm}
	if err != nil {
		l.Err = err.Error()
	}
	emit(l)
	if err != nil {
		return 1
	}
	return 0
}

func runChild(pc procConfig, emit func(childLine)) error {
	cfg, err := appConfig(pc)
	if err != nil {
		return err
	}
	set, err := loadRules(cfg, pc.RulesDir)
	if err != nil {
		return err
	}
	log, err := app.NewLogger(cfg.Log)
	if err != nil {
		return err
	}
	stopProfile, err := startProfile(pc.CPUProfile)
	if err != nil {
		return err
	}
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin) // the parent closes our stdin to stop us
		cancel()
	}()
	reg := prometheus.NewRegistry()
	gauges := gaugeReader{reg}
	go func() {
		tk := time.NewTicker(250 * time.Millisecond)
		defer tk.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tk.C:
				in, as := gauges.read()
				emit(childLine{Kind: "status", InFlight: in, Assigned: as, Procs: runtime.GOMAXPROCS(0)})
			}
		}
	}()
	runErr := app.Run(ctx, cfg, app.Options{Registry: reg, Log: log, Rules: set})
	stopProfile()
	if err := writeMemProfile(pc.MemProfile); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// startProfile starts a CPU profile into path ("" = none) and returns its stop function.
func startProfile(path string) (func(), error) {
	if path == "" {
		return func() {}, nil
	}
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, err
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// writeMemProfile writes the heap profile (allocations since start, and what is live now).
func writeMemProfile(path string) error {
	if path == "" {
		return nil
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	runtime.GC()
	return pprof.Lookup("allocs").WriteTo(f, 0)
}

// selfCPU is this process's user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// clockTick is Linux's USER_HZ, the unit of /proc/PID/stat times (100 on every mainstream build).
const clockTick = 10 * time.Millisecond

// procCPU is the user+system CPU time of process pid from /proc/PID/stat (10ms resolution).
func procCPU(pid string) time.Duration {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses and may contain spaces: state is
	// field 3, utime 14, stime 15.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * clockTick
}

// procMem returns VmRSS and VmHWM of pid ("self" for this process) in bytes.
func procMem(pid string) (rss, hwm int64) {
	b, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return 0, 0
	}
	for line := range strings.SplitSeq(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	return rss, hwm
}
