package wxapi

import (
	"sort"
	"strings"
	"unicode"
	"unicode/utf8"
)

// valueRules checks a template keyword value by keyword type, as WeChat documents them for
// subscribeMessage.send and the Official Account category templates ("Value rules per keyword
// type"). Lengths are in runes. Hand-written checks rather than regexps: this runs for every
// keyword of every send, in the sender (to reject before spending quota) and in the simulator.
var valueRules = map[string]func(string) bool{
	"thing":            validThing,
	"number":           validNumber,
	"letter":           validLetter,
	"symbol":           validSymbol,
	"character_string": validCharacterString,
	"time":             validTime,
	"date":             validDate,
	"amount":           validAmount,
	"phone_number":     validPhoneNumber,
	"car_number":       validCarNumber,
	"name":             validName,
	"phrase":           validPhrase,
	"enum":             validEnum,
	"const":            validConst,
}

// valueRuleText says in words what each type accepts, for error messages.
var valueRuleText = map[string]string{
	"thing":            "at most 20 characters, no newlines or control characters",
	"number":           "at most 32 digits, decimals allowed",
	"letter":           "at most 32 letters only",
	"symbol":           "at most 5 symbols only",
	"character_string": "at most 32 digits, letters or symbols, no Chinese or spaces",
	"time":             "a 24-hour time HH:MM[:SS], optionally after a date, or a range joined by ~",
	"date":             "a date such as 2019-10-01 or 2019年10月1日, optionally with a time, or a range joined by ~",
	"amount":           "an optional currency symbol, at most 10 integer digits, optional decimals and 元",
	"phone_number":     "at most 17 digits or symbols",
	"car_number":       "at most 8 characters: letters and digits, Chinese only first or last",
	"name":             "at most 10 Chinese characters or 20 letters, no digits",
	"phrase":           "at most 5 Chinese characters only",
	"enum":             "one of the template's enumerated values",
	"const":            "at most 20 characters, pre-approved values",
}

// KeywordTypes lists the keyword types with value rules.
func KeywordTypes() []string {
	out := make([]string, 0, len(valueRules))
	for t := range valueRules {
		out = append(out, t)
	}
	sort.Strings(out)
	return out
}

// ValidValue reports whether s is acceptable for a keyword of type typ. Unknown types accept
// anything: only WeChat knows their rules.
func ValidValue(typ, s string) bool {
	f, ok := valueRules[typ]
	return !ok || f(s)
}

// ValueRule says in words what type typ accepts ("" for an unknown type).
func ValueRule(typ string) string { return valueRuleText[typ] }

// OADisplayType is the value type of an Official Account template keyword that names no type
// (keyword1, first, remark): WeChat accepts any length but, since 2023, shows at most 20
// characters and cuts the rest without a mark. It has no value rules (ValidValue accepts
// anything); TruncateValue shortens it visibly.
const OADisplayType = "oa_display"

// TruncateValue shortens s to 20 characters with an ellipsis and drops control characters, for
// the free-text types (thing, const, and OADisplayType). ok is false for other types, where
// cutting would change the meaning (a number, a date) rather than shorten a text.
func TruncateValue(typ, s string) (string, bool) {
	if typ != "thing" && typ != "const" && typ != OADisplayType {
		return s, false
	}
	const limit = 20
	var out []rune
	for _, r := range s {
		if !isControl(r) {
			out = append(out, r)
		}
	}
	if len(out) > limit {
		out = append(out[:limit-1], '…')
	}
	return string(out), true
}

// KeywordType infers a keyword's type from its name: WeChat names keywords type + number
// ("thing1", "character_string12"). It returns "" for names that carry no type (keyword1,
// first, remark).
func KeywordType(name string) string {
	t := strings.TrimRight(name, "0123456789")
	if t == name || t == "" {
		return ""
	}
	if _, ok := valueRules[t]; !ok {
		return ""
	}
	return t
}

// isControl covers newline and every other control character, which no type accepts.
func isControl(r rune) bool { return r < 0x20 || (r >= 0x7f && r < 0xa0) || unicode.IsControl(r) }

func isHan(r rune) bool         { return unicode.Is(unicode.Han, r) }
func isDigit(b byte) bool       { return b >= '0' && b <= '9' }
func isASCIILetter(r rune) bool { return (r >= 'a' && r <= 'z') || (r >= 'A' && r <= 'Z') }
func isSymbolRune(r rune) bool {
	return !isControl(r) && (unicode.IsPunct(r) || unicode.IsSymbol(r))
}

// runesIn reports whether s has between 1 and max runes, all accepted by ok.
func runesIn(s string, max int, ok func(rune) bool) bool {
	n := 0
	for _, r := range s {
		if !ok(r) {
			return false
		}
		n++
	}
	return n > 0 && n <= max
}

func validThing(s string) bool { return runesIn(s, 20, func(r rune) bool { return !isControl(r) }) }
func validConst(s string) bool { return validThing(s) }
func validEnum(s string) bool  { return runesIn(s, 100, func(r rune) bool { return !isControl(r) }) }

func validNumber(s string) bool {
	if len(s) == 0 || len(s) > 32 {
		return false
	}
	s = strings.TrimPrefix(s, "-")
	intPart, frac, hasDot := strings.Cut(s, ".")
	return allDigits(intPart) && (!hasDot || allDigits(frac))
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if !isDigit(s[i]) {
			return false
		}
	}
	return len(s) > 0
}

func validLetter(s string) bool { return runesIn(s, 32, isASCIILetter) }
func validSymbol(s string) bool { return runesIn(s, 5, isSymbolRune) }

// validCharacterString: digits, letters and symbols, no Chinese, no spaces.
func validCharacterString(s string) bool {
	return runesIn(s, 32, func(r rune) bool { return r > 0x20 && r < 0x7f })
}

func validPhoneNumber(s string) bool {
	return runesIn(s, 17, func(r rune) bool {
		return (r >= '0' && r <= '9') || r == ' ' || (r < 0x7f && isSymbolRune(r))
	})
}

// validCarNumber: ≤ 8 chars; the first and last may be Chinese (province, 挂/学), the rest are
// letters and digits.
func validCarNumber(s string) bool {
	rs := []rune(s)
	if len(rs) < 2 || len(rs) > 8 {
		return false
	}
	for i, r := range rs {
		alnum := isASCIILetter(r) || (r >= '0' && r <= '9')
		if !alnum && !((i == 0 || i == len(rs)-1) && isHan(r)) {
			return false
		}
	}
	return true
}

// validName: ≤ 10 Chinese characters, or ≤ 20 letters/symbols; a name with any Chinese character
// counts as Chinese. No digits.
func validName(s string) bool {
	n, han := 0, false
	for _, r := range s {
		switch {
		case isControl(r) || unicode.IsDigit(r):
			return false
		case isHan(r):
			han = true
		case !unicode.IsLetter(r) && r != ' ' && !isSymbolRune(r):
			return false
		}
		n++
	}
	if han {
		return n > 0 && n <= 10
	}
	return n > 0 && n <= 20
}

func validPhrase(s string) bool { return runesIn(s, 5, isHan) }

// validAmount: an optional currency symbol, ≤ 10 integer digits, optional decimals, optional 元.
func validAmount(s string) bool {
	if r, size := utf8.DecodeRuneInString(s); unicode.Is(unicode.Sc, r) {
		s = s[size:]
	}
	s = strings.TrimSuffix(s, "元")
	intPart, frac, hasDot := strings.Cut(s, ".")
	return allDigits(intPart) && len(intPart) <= 10 && (!hasDot || allDigits(frac))
}

// validTime: [date ]HH:MM[:SS], or two of those joined by "~".
func validTime(s string) bool { return validRange(s, timePoint) }

// validDate: a date, optionally followed by a time, or two of those joined by "~".
func validDate(s string) bool { return validRange(s, datePoint) }

func validRange(s string, point func(string) bool) bool {
	if strings.ContainsFunc(s, isControl) {
		return false
	}
	a, b, isRange := strings.Cut(s, "~")
	if !isRange {
		return point(s)
	}
	return point(strings.TrimSpace(a)) && point(strings.TrimSpace(b))
}

func timePoint(s string) bool {
	if clock(s) {
		return true
	}
	rest, ok := datePrefix(s)
	return ok && clock(strings.TrimPrefix(rest, " "))
}

func datePoint(s string) bool {
	rest, ok := datePrefix(s)
	if !ok {
		return false
	}
	return rest == "" || (strings.HasPrefix(rest, " ") && clock(rest[1:])) || (rest[0] != ' ' && clock(rest))
}

// datePrefix parses 2019年10月1日, 2019-10-01, 2019/10/01 or 2019.10.01 at the start of s and
// returns the rest.
func datePrefix(s string) (string, bool) {
	y, rest, ok := digits(s, 4, 4)
	if !ok || y < 1 {
		return "", false
	}
	if strings.HasPrefix(rest, "年") {
		m, rest, ok := digits(rest[len("年"):], 1, 2)
		if !ok || m < 1 || m > 12 || !strings.HasPrefix(rest, "月") {
			return "", false
		}
		d, rest, ok := digits(rest[len("月"):], 1, 2)
		if !ok || d < 1 || d > 31 || !strings.HasPrefix(rest, "日") {
			return "", false
		}
		return rest[len("日"):], true
	}
	if rest == "" || (rest[0] != '-' && rest[0] != '/' && rest[0] != '.') {
		return "", false
	}
	sep := rest[0]
	m, rest, ok := digits(rest[1:], 1, 2)
	if !ok || m < 1 || m > 12 || rest == "" || rest[0] != sep {
		return "", false
	}
	d, rest, ok := digits(rest[1:], 1, 2)
	if !ok || d < 1 || d > 31 {
		return "", false
	}
	return rest, true
}

// clock parses H:MM, HH:MM or HH:MM:SS (24-hour) as the whole of s.
func clock(s string) bool {
	h, rest, ok := digits(s, 1, 2)
	if !ok || h > 23 || !strings.HasPrefix(rest, ":") {
		return false
	}
	m, rest, ok := digits(rest[1:], 2, 2)
	if !ok || m > 59 {
		return false
	}
	if rest == "" {
		return true
	}
	if rest[0] != ':' {
		return false
	}
	sec, rest, ok := digits(rest[1:], 2, 2)
	return ok && sec <= 59 && rest == ""
}

// digits reads between min and max ASCII digits from the start of s.
func digits(s string, min, max int) (int, string, bool) {
	n, v := 0, 0
	for n < len(s) && n < max && isDigit(s[n]) {
		v = v*10 + int(s[n]-'0')
		n++
	}
	if n < min || (n < len(s) && isDigit(s[n])) {
		return 0, s, false
	}
	return v, s[n:], true
}
