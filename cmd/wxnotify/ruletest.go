package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"regexp"
	"strings"

	"github.com/wxnotify/wxnotify/rules"
	"github.com/wxnotify/wxnotify/rules/ruletest"
)

const testUsage = `usage: wxnotify test [-rules PATH] [-run REGEXP]

Runs rule fixtures: *_test.yaml files next to the rule files, each a list of events and what
the rules must make of them (format: README "Rule fixtures", or the comment at the top of
configs/rules/orders_test.yaml). PATH is a directory (its rules, all its fixtures), a rule file
(it and its sibling NAME_test.yaml) or a fixture (it, against the rules in its directory).
Prints PASS file: name or FAIL file: name: what differed per case, then "N passed, N failed".

Exit status: 0 all passed, 1 a case failed or a file did not load, 2 usage.

`

func cmdTest(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, testUsage); fs.PrintDefaults() }
	path := fs.String("rules", "configs/rules", "rules directory, rule file or fixture file (`path`)")
	runPattern := fs.String("run", "", "run only the cases whose name matches `regexp`")
	if code := parseFlags(fs, args); code >= 0 {
		return code
	}
	var match *regexp.Regexp
	if *runPattern != "" {
		var err error
		if match, err = regexp.Compile(*runPattern); err != nil {
			fmt.Fprintf(stderr, "wxnotify test: -run: %v\n", err)
			return 2
		}
	}
	rulesPath, fixtures, err := ruletest.Discover(*path)
	if err != nil {
		fmt.Fprintf(stdout, "wxnotify test: %v\n", err)
		return 1
	}
	set, err := rules.Load(rulesPath, rules.Options{})
	if err != nil {
		printProblems(stdout, "", err)
		fmt.Fprintln(stdout, "rules did not load; no fixtures ran")
		return 1
	}
	passed, failed := 0, 0
	for _, file := range fixtures {
		fx, err := ruletest.Load(file)
		if err != nil {
			printProblems(stdout, "FAIL ", err)
			failed++
			continue
		}
		for _, res := range fx.Run(set) {
			if match != nil && !match.MatchString(res.Name) {
				continue
			}
			if res.Passed() {
				passed++
				fmt.Fprintf(stdout, "PASS %s: %s\n", relPath(res.File), res.Name)
			} else {
				failed++
				fmt.Fprintf(stdout, "FAIL %s: %s: %s\n", relPath(res.File), res.Name, strings.Join(res.Failures, "; "))
			}
		}
	}
	fmt.Fprintf(stdout, "%d passed, %d failed\n", passed, failed)
	if failed > 0 {
		return 1
	}
	return 0
}

// printProblems prints a *rules.LoadError one problem per line, each after prefix.
func printProblems(w io.Writer, prefix string, err error) {
	var le *rules.LoadError
	if !errors.As(err, &le) {
		fmt.Fprintf(w, "%s%v\n", prefix, err)
		return
	}
	for _, p := range le.Problems {
		p.File = relPath(p.File)
		fmt.Fprintf(w, "%s%s\n", prefix, p)
	}
}
