package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/wxnotify/wxnotify/cmd/internal/app"
	"github.com/wxnotify/wxnotify/rules"
)

const checkUsage = `usage: wxnotify check -config FILE [-rules PATH] [-strict]
       wxnotify check -rules PATH

Loads the config and every rule file, compiles and type-checks every expression, and prints
every problem as file:line:col: rule "name": field: message. With -config the rules' accounts
are checked against wechat.accounts and rules.zone applies; with -rules alone accounts are not
checked. -rules with -config overrides rules.path. No network, no token.

The secrets need not be there: environment variables the config names that are unset, and
secret or certificate files that do not exist, are listed as what "wxnotify run" will need,
and the rest is checked as run checks it. -strict makes each of them a problem (for a check
where run will run).

Exit status: 0 no problems, 1 problems, 2 usage.

`

func cmdCheck(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, checkUsage); fs.PrintDefaults() }
	var src ruleSource
	src.flags(fs)
	strict := fs.Bool("strict", false, "unset environment variables and missing secret files the config names are problems")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	if src.config == "" && src.rules == "" {
		fmt.Fprint(stderr, "wxnotify check: give -config FILE or -rules PATH\n\n")
		fs.Usage()
		return 2
	}
	set, needs, problems := src.load()
	for i := range needs {
		needs[i].File = relPath(needs[i].File)
	}
	if *strict {
		for _, n := range needs {
			problems = append(problems, relPath(src.config)+": "+n.String())
		}
		needs = nil
	}
	for _, p := range problems {
		fmt.Fprintln(stdout, p)
	}
	if set != nil && len(problems) == 0 {
		accounts := "accounts not checked"
		if src.config != "" {
			accounts = "accounts checked against " + relPath(src.config)
		}
		fmt.Fprintf(stdout, "ok: %d rules in %d files, version %s (%s)\n", len(set.Rules), len(set.Files), set.Version, accounts)
	}
	if len(needs) > 0 {
		fmt.Fprintln(stdout, "wxnotify run will need what is not here (-strict makes these problems):")
		for _, n := range needs {
			fmt.Fprintln(stdout, "  "+n.String())
		}
	}
	if set == nil || len(problems) > 0 {
		return 1
	}
	return 0
}

// parseFlags parses args, allowing no positional arguments. It returns -1 to go on, or the
// exit status: 0 for -h, 2 for a usage error.
func parseFlags(fs *flag.FlagSet, args []string) int {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "wxnotify %s: unexpected argument %q\n\n", fs.Name(), fs.Arg(0))
		fs.Usage()
		return 2
	}
	return -1
}

// ruleSource is where check and render find rules: a config file, a rules path, or both.
type ruleSource struct {
	config, rules string
}

func (s *ruleSource) flags(fs *flag.FlagSet) {
	fs.StringVar(&s.config, "config", "", "config `file`: rules.path, rules.zone, and wechat.accounts to check rules against")
	fs.StringVar(&s.rules, "rules", "", "rule file or directory of rule files (`path`); overrides the config's rules.path")
}

// load loads the config (if any) and the rules, and returns what the config needs that is not
// here (app.LoadConfigForCheck) and every problem with both, formatted one per line. The set is
// nil when the rules did not load.
func (s ruleSource) load() (*rules.Set, []app.Need, []string) {
	var problems []string
	var needs []app.Need
	path, opts := s.rules, rules.Options{}
	if s.config != "" {
		var cfg *app.Config
		var err error
		cfg, needs, err = app.LoadConfigForCheck(s.config)
		if err == nil {
			opts.Accounts = accountNames(cfg)
			opts.Zone, err = time.LoadLocation(cfg.Rules.Zone)
			if err != nil {
				problems = append(problems, relPath(s.config)+": rules.zone: "+err.Error())
			}
			if path == "" {
				path = cfg.Rules.Path
			}
		} else {
			cp := configProblems(s.config, err)
			problems = append(problems, cp...)
			// An invalid config should not hide the rules' own problems: find the rules the way
			// LoadConfig would and check them anyway, unless the problem is the rules path itself.
			p, accounts, zone := rulesOfInvalidConfig(s.config)
			if path == "" && !slices.ContainsFunc(cp, func(l string) bool { return strings.Contains(l, ": rules.path: ") }) {
				path = p
			}
			opts.Accounts, opts.Zone = accounts, zone
		}
	}
	if path == "" {
		return nil, needs, problems
	}
	// Relative, so file names in problems (including "first defined at ...") and in
	// Rule.File read the same on every machine.
	set, err := rules.Load(relPath(path), opts)
	if err != nil {
		var le *rules.LoadError
		if !errors.As(err, &le) {
			return nil, needs, append(problems, err.Error())
		}
		for _, p := range le.Problems {
			p.File = relPath(p.File)
			problems = append(problems, p.String())
		}
		return nil, needs, problems
	}
	return set, needs, problems
}

func accountNames(cfg *app.Config) []string {
	names := make([]string, 0, len(cfg.WeChat.Accounts))
	for n := range cfg.WeChat.Accounts {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

var configLineRE = regexp.MustCompile(`^line (\d+): (.*)$`)

// configProblems splits app.LoadConfigForCheck's error into one `file: key: message` line per
// problem. It joins Validate's problems with newlines after a "file: " prefix, and wraps YAML
// errors as "parse: yaml: unmarshal errors:" with one "line N: ..." per problem.
func configProblems(path string, err error) []string {
	name := relPath(path)
	msg, ok := strings.CutPrefix(err.Error(), path+": ")
	if !ok {
		return []string{err.Error()}
	}
	msg = strings.TrimPrefix(msg, "parse: yaml: unmarshal errors:\n")
	var out []string
	for _, l := range strings.Split(msg, "\n") {
		l = strings.TrimSpace(l)
		if m := configLineRE.FindStringSubmatch(l); m != nil {
			out = append(out, name+":"+m[1]+": "+m[2])
		} else if l != "" {
			out = append(out, name+": "+l)
		}
	}
	return out
}

// rulesOfInvalidConfig reads, leniently, what check needs from a config that failed to load:
// rules.path resolved as LoadConfig resolves it (default "rules", relative to the config's
// directory), the account names and the zone. It gives up ("") on a rules.path that names
// environment variables.
func rulesOfInvalidConfig(path string) (string, []string, *time.Location) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return "", nil, nil
	}
	var c struct {
		WeChat struct {
			Accounts map[string]yaml.Node `yaml:"accounts"`
		} `yaml:"wechat"`
		Rules struct {
			Path string `yaml:"path"`
			Zone string `yaml:"zone"`
		} `yaml:"rules"`
	}
	if yaml.Unmarshal(raw, &c) != nil {
		return "", nil, nil
	}
	var accounts []string
	for n := range c.WeChat.Accounts {
		accounts = append(accounts, n)
	}
	slices.Sort(accounts)
	zone, _ := time.LoadLocation(c.Rules.Zone)
	if c.Rules.Zone == "" {
		zone = nil
	}
	p := c.Rules.Path
	if p == "" {
		p = "rules"
	}
	if strings.Contains(p, "${") {
		return "", accounts, zone
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(filepath.Dir(path), p)
	}
	return p, accounts, zone
}

// relPath shortens an absolute path under the working directory (LoadConfig makes rules.path
// absolute) so problems read as they would in an editor opened at the repository.
func relPath(p string) string {
	if !filepath.IsAbs(p) {
		return p
	}
	wd, err := os.Getwd()
	if err != nil {
		return p
	}
	if r, err := filepath.Rel(wd, p); err == nil && !strings.HasPrefix(r, "..") {
		return r
	}
	return p
}
