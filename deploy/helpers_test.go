package deploy_test

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

var update = flag.Bool("update", false, "rewrite the generated files (promtool exp_annotations, the PrometheusRule, the rule files' copies in kubernetes/base) instead of comparing")

// The processes started for the live tests, stopped by TestMain after all tests.
var (
	procsMu sync.Mutex
	procs   []*exec.Cmd
	tmpDirs []string
)

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	procsMu.Lock()
	for i := len(procs) - 1; i >= 0; i-- {
		stopProcess(procs[i])
	}
	for _, d := range tmpDirs {
		os.RemoveAll(d)
	}
	procsMu.Unlock()
	os.Exit(code)
}

// stopProcess sends SIGTERM, waits up to 20s (wxnotify drains and commits), then kills.
func stopProcess(cmd *exec.Cmd) {
	if cmd.Process == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// sharedTempDir is a directory that outlives one test (binaries, the Prometheus data dir);
// TestMain removes it.
func sharedTempDir(t *testing.T) string {
	t.Helper()
	d, err := os.MkdirTemp("", "wxnotify-deploy-")
	if err != nil {
		t.Fatal(err)
	}
	procsMu.Lock()
	tmpDirs = append(tmpDirs, d)
	procsMu.Unlock()
	return d
}

// repoRoot is the product module's root: the parent of deploy/.
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "cmd", "wxnotify")); err != nil {
		t.Fatalf("repository root: %v", err)
	}
	return root
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// requireTool returns the path of a program that .ci/run installs. A missing one fails the test
// rather than skipping it, so a CI run without it cannot pass by checking nothing.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found in PATH: install Debian's prometheus package (apt-get install -y prometheus), as .ci/run does", name)
	}
	return p
}

// configVarRE matches ${VAR} and ${VAR:-default} as wxnotify's config loader expands them.
var configVarRE = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}`)

// configVars returns the variables a wxnotify config file references in its values (not its
// comments), with whether each has a default.
func configVars(t *testing.T, path string) map[string]bool {
	t.Helper()
	return configVarsIn(t, path, readFile(t, path))
}

// configVarsIn is configVars of a config's text; name is for messages.
func configVarsIn(t *testing.T, name string, b []byte) map[string]bool {
	t.Helper()
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	vars := map[string]bool{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			for _, m := range configVarRE.FindAllStringSubmatch(n.Value, -1) {
				vars[m[1]] = vars[m[1]] || m[2] != ""
			}
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	walk(&doc)
	if len(vars) == 0 {
		t.Fatalf("%s references no ${VAR}: the pattern is out of step with the file", name)
	}
	return vars
}

// freeAddr returns a loopback address with a port nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// syncBuffer collects a child's output while tests read it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startProcess starts a long-running child that TestMain stops.
func startProcess(t *testing.T, cmd *exec.Cmd) *syncBuffer {
	t.Helper()
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", cmd.Path, err)
	}
	procsMu.Lock()
	procs = append(procs, cmd)
	procsMu.Unlock()
	return out
}

// waitFor polls cond every 200ms until it returns nil or the timeout passes.
func waitFor(timeout time.Duration, cond func() error) error {
	deadline := time.Now().Add(timeout)
	for {
		err := cond()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("after %s: %w", timeout, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func httpGet(ctx context.Context, url string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.Bytes(), err
}

// runCmd runs a command to completion and returns its combined output.
func runCmd(t *testing.T, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	return strings.TrimSpace(string(out)), err
}
