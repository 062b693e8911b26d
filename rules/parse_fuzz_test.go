package rules

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// fuzzFile is the name of the fuzzed file: it sorts after valid.yaml, so a rule it repeats is
// reported on it.
const fuzzFile = "zz-fuzz.yaml"

// FuzzParse loads arbitrary YAML as a rule file next to a valid one (validRule). Parse must not
// panic; an error is a *LoadError whose every problem names the fuzzed file (the valid file
// stays valid, whatever sits next to it) and, when it gives a line, a line and column inside
// that file (problemInFile); a load that succeeds has the valid file's rule first. Seeds:
// testdata/fuzz/FuzzParse (the shipped rule files, as they are and with their rules renamed,
// the example and bench rules, the broken files of cmd/wxnotify's tests, YAML edge cases).
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, src []byte) {
		set, err := Parse(map[string][]byte{"valid.yaml": []byte("rules:" + validRule), fuzzFile: src},
			Options{Accounts: []string{"weapp", "mp"}})
		if err != nil {
			var le *LoadError
			if !errors.As(err, &le) || len(le.Problems) == 0 {
				t.Fatalf("error %v (%T), want a *LoadError with problems", err, err)
			}
			for _, p := range le.Problems {
				if msg := problemInFile(p, fuzzFile, src); msg != "" {
					t.Fatalf("%q: problem %q: %s", src, p, msg)
				}
			}
			return
		}
		if len(set.Rules) == 0 || set.Rules[0].Name != "ok" || set.Rules[0].File != "valid.yaml" {
			t.Fatalf("%q loads, but the first rule is not valid.yaml's: %+v", src, set.Rules)
		}
	})
}

// problemInFile says what is wrong with p as a problem of file, whose content is src: it must
// name file, and its String must start with file:line:col, or with file alone when Line is 0.
// The line is one of src's lines as YAML counts them (breaks are \r\n, \r, \n, U+0085, U+2028
// and U+2029), and the column (in runes) at most one past that line's end.
func problemInFile(p Problem, file string, src []byte) string {
	if p.File != file {
		return "names another file"
	}
	if p.Line == 0 {
		if !strings.HasPrefix(p.String(), file+": ") {
			return "does not start with the file name"
		}
		return ""
	}
	if !strings.HasPrefix(p.String(), file+":"+strconv.Itoa(p.Line)+":"+strconv.Itoa(p.Col)+": ") {
		return "does not start with file:line:col"
	}
	lines := yamlLines(src)
	if p.Line < 1 || p.Line > len(lines) {
		return "line " + strconv.Itoa(p.Line) + " is not in the file (" + strconv.Itoa(len(lines)) + " lines)"
	}
	if n := utf8.RuneCountInString(lines[p.Line-1]); p.Col < 1 || p.Col > n+1 {
		return "column " + strconv.Itoa(p.Col) + " is not on line " + strconv.Itoa(p.Line) + " (" + strconv.Itoa(n) + " characters)"
	}
	return ""
}

// yamlLines splits src at YAML's line breaks.
func yamlLines(src []byte) []string {
	s := strings.ReplaceAll(string(src), "\r\n", "\n")
	for _, br := range []string{"\r", "\u0085", "\u2028", "\u2029"} {
		s = strings.ReplaceAll(s, br, "\n")
	}
	return strings.Split(s, "\n")
}
