package main

import (
	"cmp"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// member is one run of a processor child process; a restart is a new member in the same slot.
type member struct {
	slot    int
	pid     int
	ops     string // host:port of its /metrics and /readyz
	logPath string
	cmd     *exec.Cmd
	done    chan struct{} // closed once the process has exited and its log is closed
	exitErr error         // valid after done

	mu     sync.Mutex
	frozen bool // SIGSTOPped and not continued
}

// fleet starts and signals the processor children of one scenario. Every child it starts is
// waited for by a goroutine of its own, joined by close, which stops whatever still runs.
type fleet struct {
	exe    string
	env    []string
	dir    string                      // one log file per member run
	config func(opsAddr string) string // the member's YAML

	mu      sync.Mutex
	live    map[*member]struct{}
	runs    map[int]int // starts per slot
	logs    []string
	unclean []string // members that did not exit 0 after SIGTERM
	wg      sync.WaitGroup
}

func newFleet(dir string, env []string, config func(string) string) (*fleet, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	return &fleet{exe: exe, env: env, dir: dir, config: config, live: make(map[*member]struct{}), runs: make(map[int]int)}, nil
}

// start runs a new member in slot.
func (f *fleet) start(slot int) (*member, error) {
	ops, err := freeAddr()
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	run := f.runs[slot]
	f.runs[slot]++
	f.mu.Unlock()
	m := &member{slot: slot, ops: ops, logPath: filepath.Join(f.dir, fmt.Sprintf("member%d-run%d.log", slot, run)), done: make(chan struct{})}
	log, err := os.Create(m.logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(f.exe)
	cmd.Env = append(append(os.Environ(), f.env...), roleEnv+"="+roleProcessor, configEnv+"="+f.config(ops))
	cmd.Stdout, cmd.Stderr = log, log
	// A child must not outlive a chaos run that dies (a kill -9 of wxchaos itself, a test panic).
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start member %d: %w", slot, err)
	}
	m.cmd, m.pid = cmd, cmd.Process.Pid
	f.mu.Lock()
	f.live[m] = struct{}{}
	f.logs = append(f.logs, m.logPath)
	f.mu.Unlock()
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		m.exitErr = cmd.Wait()
		log.Close()
		f.mu.Lock()
		delete(f.live, m)
		f.mu.Unlock()
		close(m.done)
	}()
	return m, nil
}

// running lists the members whose process has not exited, in slot order.
func (f *fleet) running() []*member {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]*member, 0, len(f.live))
	for m := range f.live {
		out = append(out, m)
	}
	slices.SortFunc(out, func(a, b *member) int { return cmp.Or(cmp.Compare(a.slot, b.slot), cmp.Compare(a.pid, b.pid)) })
	return out
}

// logFiles lists every member run's log.
func (f *fleet) logFiles() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.logs...)
}

// kill sends SIGKILL and waits for the process to be gone.
func (f *fleet) kill(m *member) {
	_ = m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.done
}

// term stops m gracefully: SIGCONT if it is frozen, SIGTERM, and a wait of up to grace; after
// that SIGKILL. A member that needed the SIGKILL or exited non-zero is noted as unclean.
func (f *fleet) term(m *member, grace time.Duration) {
	f.thaw(m)
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-m.done:
	case <-t.C:
		f.kill(m)
		f.noteUnclean(m, fmt.Errorf("still running %s after SIGTERM", grace))
		return
	}
	if m.exitErr != nil {
		f.noteUnclean(m, m.exitErr)
	}
}

func (f *fleet) noteUnclean(m *member, err error) {
	var ee *exec.ExitError
	if errors.As(err, &ee) && ee.ExitCode() == 0 {
		return
	}
	f.mu.Lock()
	f.unclean = append(f.unclean, fmt.Sprintf("%s: %v", filepath.Base(m.logPath), err))
	f.mu.Unlock()
}

// freeze sends SIGSTOP; thaw sends SIGCONT to a frozen member.
func (f *fleet) freeze(m *member) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.cmd.Process.Signal(syscall.SIGSTOP) == nil {
		m.frozen = true
	}
}

func (f *fleet) thaw(m *member) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.frozen {
		_ = m.cmd.Process.Signal(syscall.SIGCONT)
		m.frozen = false
	}
}

// close stops every running member gracefully (in parallel, each within grace) and joins the
// waiters.
func (f *fleet) close(grace time.Duration) {
	var wg sync.WaitGroup
	for _, m := range f.running() {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f.term(m, grace)
		}()
	}
	wg.Wait()
	f.wg.Wait()
}

// uncleanStops lists members that did not stop cleanly on SIGTERM.
func (f *fleet) uncleanStops() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.unclean...)
}

// freeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func freeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}
