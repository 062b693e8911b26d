package rules

import (
	"errors"
	"fmt"
	"strings"
)

// rawPart is one piece of a message string: literal text, or the source of one ${...}.
type rawPart struct {
	lit    string
	expr   string
	isExpr bool
	off    int // byte offset of the expression text (after "${") in the string
}

// scanError is a malformed ${...}; off is the byte offset of its "${".
type scanError struct {
	off int
	msg string
}

// scanTemplate splits s into literal text and ${...} expressions. Inside ${...} it tracks
// quotes ("...", '...', `...`, with backslash escapes in the first two) and nested braces, so
// ${ {"a":1}.a } and ${ "}" } are single expressions. $${ is a literal ${.
func scanTemplate(s string) ([]rawPart, *scanError) {
	var parts []rawPart
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			parts = append(parts, rawPart{lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); {
		if strings.HasPrefix(s[i:], "$${") {
			lit.WriteString("${")
			i += 3
			continue
		}
		if !strings.HasPrefix(s[i:], "${") {
			lit.WriteByte(s[i])
			i++
			continue
		}
		end, err := exprEnd(s, i+2)
		if err != nil {
			return nil, &scanError{off: i, msg: err.Error()}
		}
		src := s[i+2 : end]
		if strings.TrimSpace(src) == "" {
			return nil, &scanError{off: i, msg: "empty ${}"}
		}
		flush()
		parts = append(parts, rawPart{expr: src, isExpr: true, off: i + 2})
		i = end + 1
	}
	flush()
	return parts, nil
}

// exprEnd returns the index of the "}" closing an expression that starts at start.
func exprEnd(s string, start int) (int, error) {
	depth := 0
	for j := start; j < len(s); j++ {
		switch c := s[j]; c {
		case '"', '\'', '`':
			k := j + 1
			for ; k < len(s) && s[k] != c; k++ {
				if s[k] == '\\' && c != '`' {
					k++
				}
			}
			if k >= len(s) {
				return 0, fmt.Errorf("unterminated %c string in ${...}", c)
			}
			j = k
		case '{':
			depth++
		case '}':
			if depth == 0 {
				return j, nil
			}
			depth--
		}
	}
	return 0, errors.New("unterminated ${ (no closing })")
}
