package deploy_test

import (
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/linter"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// The targets compose.yaml builds; wxnotify is the default (last) stage.
var finalStages = []string{"wechatsim", "wxnotify"}

// pinnedImageRE is IMAGE:TAG@sha256:DIGEST.
var pinnedImageRE = regexp.MustCompile(`^[a-z0-9./_-]+(:[0-9]+)?[a-z0-9./_-]*:[A-Za-z0-9._-]+@sha256:[0-9a-f]{64}$`)

// parseDockerfile parses with BuildKit's own parser and instruction reader, with its linter on:
// what BuildKit would warn about at build time is returned as warnings.
func parseDockerfile(t *testing.T, path string) ([]instructions.Stage, []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	res, err := parser.Parse(f)
	if err != nil {
		t.Fatalf("parse %s: %v", path, err)
	}
	var warnings []string
	for _, w := range res.Warnings {
		warnings = append(warnings, w.Short)
	}
	lint := linter.New(&linter.Config{Warn: func(rule, _, _, msg string, loc []parser.Range) {
		line := 0
		if len(loc) > 0 {
			line = loc[0].Start.Line
		}
		warnings = append(warnings, fmt.Sprintf("line %d: %s: %s", line, rule, msg))
	}})
	stages, _, err := instructions.Parse(res.AST, lint)
	if err != nil {
		t.Fatalf("instructions of %s: %v", path, err)
	}
	return stages, warnings
}

func stageByName(stages []instructions.Stage, name string) *instructions.Stage {
	for i := range stages {
		if stages[i].Name == name {
			return &stages[i]
		}
	}
	return nil
}

func TestDockerfile(t *testing.T) {
	stages, warnings := parseDockerfile(t, "Dockerfile")

	t.Run("no BuildKit lint warnings", func(t *testing.T) {
		for _, w := range warnings {
			t.Error(w)
		}
	})

	t.Run("base images pinned by tag and digest", func(t *testing.T) {
		for _, p := range pinProblems(stages) {
			t.Error(p)
		}
	})

	t.Run("final stages: distroless, numeric non-root user, no shell", func(t *testing.T) {
		if last := stages[len(stages)-1].Name; last != "wxnotify" {
			t.Errorf("last stage %q: the default target must be wxnotify", last)
		}
		for _, name := range finalStages {
			for _, p := range finalStageProblems(stages, name) {
				t.Error(p)
			}
		}
	})

	t.Run("static, trimmed, zone data embedded, version stamped", func(t *testing.T) {
		for _, p := range buildProblems(goBuildWords(t, stages, "./cmd/wxnotify")) {
			t.Error(p)
		}
	})

	t.Run("the build context has what the Dockerfile copies", func(t *testing.T) {
		for _, p := range buildContextProblems(t, stages, "Dockerfile.dockerignore") {
			t.Error(p)
		}
	})
}

// pinProblems lists the FROM lines whose image is not pinned by tag and digest.
func pinProblems(stages []instructions.Stage) []string {
	var problems []string
	for i, s := range stages {
		if stageByName(stages[:i], s.BaseName) != nil {
			continue // FROM an earlier stage
		}
		if !pinnedImageRE.MatchString(s.BaseName) || strings.Contains(s.BaseName, ":latest@") {
			problems = append(problems, fmt.Sprintf("stage %q: FROM %s: want IMAGE:TAG@sha256:DIGEST with a release tag", s.Name, s.BaseName))
		}
	}
	return problems
}

// buildProblems lists what the words of the `go build` of the product's binaries lack.
func buildProblems(words []string) []string {
	var problems []string
	line := strings.Join(words, " ")
	for _, want := range []string{"CGO_ENABLED=0", "-trimpath", "./cmd/wxnotify", "./cmd/wechatsim"} {
		if !slices.Contains(words, want) {
			problems = append(problems, fmt.Sprintf("go build lacks %s: %s", want, line))
		}
	}
	if !strings.Contains(line, "-tags timetzdata") {
		problems = append(problems, fmt.Sprintf("go build lacks -tags timetzdata (rules.zone must not depend on the image's files): %s", line))
	}
	for _, want := range []string{"-X main.version=" + testVersion, "-X main.revision=" + testRevision} {
		if !strings.Contains(line, want) {
			problems = append(problems, fmt.Sprintf("go build does not stamp %q from the build args: %s", want, line))
		}
	}
	return problems
}

// finalStageProblems lists what is wrong with the image target name makes, looking at its
// stage and the stages it is built FROM, down to the base image.
func finalStageProblems(stages []instructions.Stage, name string) []string {
	var chain []instructions.Stage // base first
	for s := stageByName(stages, name); s != nil; s = stageByName(stages, s.BaseName) {
		chain = append([]instructions.Stage{*s}, chain...)
	}
	if len(chain) == 0 {
		return []string{fmt.Sprintf("no stage %q (compose.yaml builds it)", name)}
	}
	var problems []string
	bad := func(format string, args ...any) { problems = append(problems, name+": "+fmt.Sprintf(format, args...)) }
	// distroless/static has no shell; a RUN there could not run, and nothing may add one.
	if base := chain[0].BaseName; !strings.HasPrefix(base, "gcr.io/distroless/static") || !strings.Contains(base, ":nonroot") {
		bad("FROM %s: want gcr.io/distroless/static-*:nonroot (CA certificates, no shell)", base)
	}
	var user string
	var entrypoint, cmd *instructions.ShellDependantCmdLine
	probe := false
	for _, s := range chain {
		for _, c := range s.Commands {
			switch c := c.(type) {
			case *instructions.RunCommand:
				bad("RUN %v: the image has no shell to run it", c.CmdLine)
			case *instructions.ShellCommand:
				bad("SHELL %v: the image has no shell", c.Shell)
			case *instructions.UserCommand:
				user = c.User
			case *instructions.EntrypointCommand:
				entrypoint = &c.ShellDependantCmdLine
			case *instructions.CmdCommand:
				cmd = &c.ShellDependantCmdLine
			case *instructions.CopyCommand:
				probe = probe || (c.From != "" && slices.Contains(c.SourcePaths, "/out/httpprobe"))
			}
		}
	}
	if !regexp.MustCompile(`^[1-9][0-9]*:[1-9][0-9]*$`).MatchString(user) {
		bad("USER %q: want a numeric non-root uid:gid (Kubernetes runAsNonRoot checks numbers)", user)
	}
	if entrypoint == nil || entrypoint.PrependShell || len(entrypoint.CmdLine) != 1 || entrypoint.CmdLine[0] != "/usr/local/bin/"+name {
		bad("ENTRYPOINT %v: want the exec form [\"/usr/local/bin/%s\"]", entrypoint, name)
	}
	if cmd == nil || cmd.PrependShell {
		bad("CMD %v: want the exec form (there is no shell)", cmd)
	}
	if !probe {
		bad("/out/httpprobe is not copied in: compose's health checks run it")
	}
	return problems
}

// TestDockerfileChecksCatch shows that the checks above fail a Dockerfile and an ignore file
// that break them.
func TestDockerfileChecksCatch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "Dockerfile")
	bad := `FROM golang:1.26 AS build
RUN go build -o /out/ ./cmd/wxnotify

FROM debian:bookworm-slim as wxnotify
RUN apt-get update
COPY --from=build /out/wxnotify /usr/local/bin/
USER nonroot
ENTRYPOINT /usr/local/bin/wxnotify run
`
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	stages, warnings := parseDockerfile(t, path)
	if !strings.Contains(strings.Join(warnings, "\n"), "FromAsCasing") {
		t.Errorf("BuildKit's linter did not report FROM ... as: %q", warnings)
	}
	problems := append(pinProblems(stages), finalStageProblems(stages, "wxnotify")...)
	problems = append(problems, buildProblems(goBuildWords(t, stages, "./cmd/wxnotify"))...)
	got := strings.Join(problems, "\n")
	for _, want := range []string{
		`stage "build": FROM golang:1.26: want IMAGE:TAG@sha256`,
		`stage "wxnotify": FROM debian:bookworm-slim: want IMAGE:TAG@sha256`,
		"wxnotify: FROM debian:bookworm-slim: want gcr.io/distroless/static",
		"wxnotify: RUN [apt-get update]",
		`wxnotify: USER "nonroot": want a numeric`,
		"wxnotify: ENTRYPOINT",
		"wxnotify: CMD <nil>",
		"wxnotify: /out/httpprobe is not copied in",
		"go build lacks CGO_ENABLED=0",
		"go build lacks -trimpath",
		"go build lacks ./cmd/wechatsim",
		"go build lacks -tags timetzdata",
		`go build does not stamp "-X main.version=` + testVersion,
		`go build does not stamp "-X main.revision=` + testRevision,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("problems lack %q; got:\n%s", want, got)
		}
	}
	if p := finalStageProblems(stages, "wechatsim"); len(p) != 1 || !strings.Contains(p[0], `no stage "wechatsim"`) {
		t.Errorf("missing stage: got %q", p)
	}

	// An ignore file that drops the sources and keeps .git.
	ignore := filepath.Join(t.TempDir(), "Dockerfile.dockerignore")
	if err := os.WriteFile(ignore, []byte("cmd\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got = strings.Join(buildContextProblems(t, stages, ignore), "\n")
	for _, want := range []string{
		filepath.Join("cmd", "wxnotify", "main.go") + " is excluded from the build context",
		".git is in the build context",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("build context problems lack %q; got:\n%s", want, got)
		}
	}
}

// goBuildWords returns the words of the build stage's `go build` that builds pkg, expanded as
// BuildKit's shell lexer expands them, with VERSION and REVISION set to the test's values.
func goBuildWords(t *testing.T, stages []instructions.Stage, pkg string) []string {
	t.Helper()
	for _, s := range stages {
		for _, c := range s.Commands {
			run, ok := c.(*instructions.RunCommand)
			if !ok {
				continue
			}
			line := strings.Join(run.CmdLine, " ")
			if !strings.Contains(line, "go build") || !strings.Contains(line, pkg) {
				continue
			}
			env := mapEnv{"VERSION": testVersion, "REVISION": testRevision}
			words, err := shell.NewLex('\\').ProcessWords(line, env)
			if err != nil {
				t.Fatalf("expand %q: %v", line, err)
			}
			return words
		}
	}
	t.Fatalf("no RUN builds %s", pkg)
	return nil
}

type mapEnv map[string]string

func (m mapEnv) Get(k string) (string, bool) { v, ok := m[k]; return v, ok }
func (m mapEnv) Keys() []string              { return slices.Sorted(maps.Keys(m)) }

// The version and revision the tests stamp, through the Dockerfile's own ldflags.
const (
	testVersion  = "v0.0.0-deploytest"
	testRevision = "0123456789abcdef0123456789abcdef01234567"
)

// runBuildWords runs the words of a Dockerfile RUN that is `[cd DIR &&] [VAR=x...] go build ...`
// in dir, with -o pointed at out. Anything else fails the test: the Dockerfile's build steps
// stay simple enough to run here.
func runBuildWords(t *testing.T, dir, out string, words []string, extraEnv ...string) {
	t.Helper()
	env := append(os.Environ(), extraEnv...)
	for len(words) > 0 {
		cmdWords := words
		if i := slices.Index(words, "&&"); i >= 0 {
			cmdWords, words = words[:i], words[i+1:]
		} else {
			words = nil
		}
		if len(cmdWords) == 2 && cmdWords[0] == "cd" {
			dir = filepath.Join(dir, cmdWords[1])
			continue
		}
		cmdEnv := slices.Clone(env)
		for len(cmdWords) > 0 && regexp.MustCompile(`^[A-Z_]+=`).MatchString(cmdWords[0]) {
			cmdEnv = append(cmdEnv, cmdWords[0])
			cmdWords = cmdWords[1:]
		}
		if len(cmdWords) < 2 || cmdWords[0] != "go" || cmdWords[1] != "build" {
			t.Fatalf("unsupported step in a Dockerfile build RUN: %q", cmdWords)
		}
		args := slices.Clone(cmdWords[1:])
		for i := range args {
			if args[i] == "-o" && i+1 < len(args) && strings.HasPrefix(args[i+1], "/out/") {
				args[i+1] = filepath.Join(out, strings.TrimPrefix(args[i+1], "/out/"))
				if strings.HasSuffix(cmdWords[i+2], "/") {
					args[i+1] += "/"
				}
			}
		}
		if got, err := runCmd(t, dir, cmdEnv, "go", args...); err != nil {
			t.Fatalf("go %s (in %s): %v\n%s", strings.Join(args, " "), dir, err, got)
		}
	}
}

var (
	productOnce sync.Once
	productDir  string
	productErr  string
)

// productBinaries builds wxnotify, wechatsim and httpprobe from this checkout with the
// Dockerfile's own build commands (flags, tags, ldflags) and returns their directory. The live
// tests run these binaries, so they test what the image would contain.
func productBinaries(t *testing.T) string {
	t.Helper()
	productOnce.Do(func() {
		// Stays if a Fatal below ends Do early: later callers fail too instead of getting "".
		productErr = "building as the Dockerfile does failed"
		stages, _ := parseDockerfile(t, "Dockerfile")
		dir := sharedTempDir(t)
		ok := t.Run("build as the Dockerfile does", func(t *testing.T) {
			runBuildWords(t, repoRoot(t), dir, goBuildWords(t, stages, "./cmd/wxnotify"))
			// The probe step runs in the image without the deploy module's dependencies:
			// here with an empty module cache and no proxy, so a dependency would fail it.
			runBuildWords(t, repoRoot(t), dir, goBuildWords(t, stages, "./cmd/httpprobe"),
				"GOPROXY=off", "GOFLAGS=-mod=readonly", "GOMODCACHE="+t.TempDir())
		})
		if ok {
			productDir, productErr = dir, ""
		}
	})
	if productErr != "" {
		t.Fatal(productErr)
	}
	return productDir
}

func TestDockerfileBuild(t *testing.T) {
	dir := productBinaries(t)
	for _, name := range []string{"wxnotify", "wechatsim", "httpprobe"} {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Fatalf("the Dockerfile's build made no %s: %v", name, err)
		}
	}

	t.Run("build settings recorded in the binary", func(t *testing.T) {
		info, err := runCmd(t, "", os.Environ(), "go", "version", "-m", filepath.Join(dir, "wxnotify"))
		if err != nil {
			t.Fatalf("go version -m: %v\n%s", err, info)
		}
		// Go leaves -ldflags out of the record under -trimpath; the version subtest covers it.
		for _, want := range []string{"build\tCGO_ENABLED=0", "build\t-trimpath=true", "build\t-tags=timetzdata"} {
			if !strings.Contains(info, want) {
				t.Errorf("go version -m wxnotify lacks %q:\n%s", want, info)
			}
		}
	})

	// Fails until cmd/wxnotify has `version` and reads main.version/main.revision (issue 13,
	// item 4): until then the linker drops the -X flags without a word.
	t.Run("wxnotify version reports the stamped version and revision", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(dir, "wxnotify"), "version").CombinedOutput()
		if err != nil || !strings.Contains(string(out), testVersion) || !strings.Contains(string(out), testRevision) {
			t.Errorf("wxnotify version: %v\n%s\nwant %s and %s in it", err, out, testVersion, testRevision)
		}
	})
}

// buildContextProblems applies the ignore file (deploy/Dockerfile.dockerignore) to the
// repository as BuildKit does and lists what the build copies or compiles that is not in the
// context, and what must stay out (the git directory, the deploy files the image does not use)
// that is in it.
func buildContextProblems(t *testing.T, stages []instructions.Stage, ignoreFile string) []string {
	t.Helper()
	root := repoRoot(t)
	var problems []string
	f, err := os.Open(ignoreFile)
	if err != nil {
		t.Fatal(err)
	}
	patterns, err := ignorefile.ReadAll(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		t.Fatal(err)
	}
	excluded := func(rel string) bool {
		ex, err := pm.MatchesOrParentMatches(filepath.ToSlash(rel))
		if err != nil {
			t.Fatal(err)
		}
		return ex
	}

	// The COPY sources of the build context.
	for _, s := range stages {
		for _, c := range s.Commands {
			cp, ok := c.(*instructions.CopyCommand)
			if !ok || cp.From != "" {
				continue
			}
			for _, src := range cp.SourcePaths {
				rel := filepath.Clean(src)
				if _, err := os.Stat(filepath.Join(root, rel)); err != nil {
					problems = append(problems, fmt.Sprintf("COPY %s: %v", src, err))
				}
				if rel != "." && excluded(rel) {
					problems = append(problems, fmt.Sprintf("COPY %s: excluded by Dockerfile.dockerignore", src))
				}
			}
		}
	}

	// Everything the Go builds compile or embed: every non-test Go file of the product, the
	// embedded configs, and the probe's module.
	var mustIn []string
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		if d.IsDir() {
			if rel == "deploy" || d.Name() == ".git" || d.Name() == "testdata" {
				return filepath.SkipDir
			}
			return nil
		}
		if (strings.HasSuffix(rel, ".go") && !strings.HasSuffix(rel, "_test.go")) || strings.HasPrefix(rel, "configs"+string(filepath.Separator)) || rel == "go.mod" || rel == "go.sum" {
			mustIn = append(mustIn, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	mustIn = append(mustIn, "deploy/go.mod", "deploy/go.sum", "deploy/cmd/httpprobe/main.go")
	for _, rel := range mustIn {
		if excluded(rel) {
			problems = append(problems, fmt.Sprintf("%s is excluded from the build context, but the build needs it", rel))
		}
	}
	for _, rel := range []string{".git", ".git/HEAD", "deploy/compose.yaml", "deploy/kubernetes/base/deployment.yaml", "deploy/dockerfile_test.go", "wxnotify"} {
		if !excluded(rel) {
			problems = append(problems, fmt.Sprintf("%s is in the build context: Dockerfile.dockerignore should keep it out", rel))
		}
	}
	return problems
}
