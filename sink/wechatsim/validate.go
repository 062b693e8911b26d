package wechatsim

import (
	"slices"
	"strings"
	"unicode"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// rejection is a business error: an errcode and the errmsg before " rid: …".
type rejection struct {
	code int
	msg  string
}

func formatError(hint string) *rejection {
	return &rejection{wxapi.ErrJSONParse, "data format error hint: [" + hint + "]"}
}

func argumentInvalid(what string) *rejection {
	return &rejection{wxapi.ErrArgumentInvalid, "argument invalid! " + what}
}

var errUnicodeEscape = &rejection{wxapi.ErrJSONUnicodeEscape,
	`data format error, do NOT use json unicode encode (\uxxxx) for non-ascii char or <>&`}

// hasForbiddenEscape reports a \uXXXX escape of a non-ASCII character or of < > &: WeChat answers
// 47002 for those (Go's json.Marshal emits \u003c for '<' unless SetEscapeHTML(false)).
// Backslashes only occur inside JSON strings, so a flat scan is exact.
func hasForbiddenEscape(b []byte) bool {
	for i := 0; i+1 < len(b); i++ {
		if b[i] != '\\' {
			continue
		}
		if b[i+1] == 'u' && i+5 < len(b) {
			v, ok := hex4(b[i+2 : i+6])
			if ok && (v >= 0x80 || v == '<' || v == '>' || v == '&') {
				return true
			}
		}
		i++ // skip the escaped character, so "\\u00e9" is not an escape
	}
	return false
}

func hex4(b []byte) (rune, bool) {
	var v rune
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			v = v<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			v = v<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			v = v<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return v, true
}

// checkShape validates a decoded object against a catalog field: required fields present, JSON
// types right, enums respected, and (unless allowUnknown) no fields the API does not define.
func checkShape(obj map[string]any, f *wxapi.Field, prefix string, allowUnknown bool) *rejection {
	for i := range f.Fields {
		c := &f.Fields[i]
		v, ok := obj[c.Name]
		if !ok || v == nil {
			if c.Required {
				return formatError(prefix + c.Name + " missing")
			}
			continue
		}
		if rej := checkValue(v, c, prefix+c.Name, allowUnknown); rej != nil {
			return rej
		}
	}
	if !allowUnknown {
		// Report the smallest unknown name so the errmsg does not depend on map order.
		unknown := ""
		for k := range obj {
			if _, ok := f.Child(k); !ok && (unknown == "" || k < unknown) {
				unknown = k
			}
		}
		if unknown != "" {
			return formatError(prefix + unknown + " unexpected")
		}
	}
	return nil
}

func checkValue(v any, f *wxapi.Field, path string, allowUnknown bool) *rejection {
	switch f.Kind {
	case wxapi.String:
		s, ok := v.(string)
		if !ok {
			return formatError(path + " must be string")
		}
		if len(f.Enum) > 0 && !slices.Contains(f.Enum, s) {
			return argumentInvalid(path + " invalid")
		}
	case wxapi.Object:
		m, ok := v.(map[string]any)
		if !ok {
			return formatError(path + " must be object")
		}
		return checkShape(m, f, path+".", allowUnknown)
	case wxapi.Data:
		m, ok := v.(map[string]any)
		if !ok {
			return formatError(path + " must be object")
		}
		return checkData(m, path, allowUnknown)
	}
	return nil
}

// checkData checks a template data object: each keyword is {"value": string, "color"?: string}.
func checkData(m map[string]any, path string, allowUnknown bool) *rejection {
	var worst *rejection
	worstKey := ""
	for kw, v := range m {
		if worst != nil && kw > worstKey {
			continue
		}
		if rej := checkKeyword(v, path+"."+kw, allowUnknown); rej != nil {
			worst, worstKey = rej, kw
		}
	}
	return worst
}

func checkKeyword(v any, path string, allowUnknown bool) *rejection {
	e, ok := v.(map[string]any)
	if !ok {
		return formatError(path + " must be object")
	}
	val, ok := e["value"]
	if !ok || val == nil {
		return formatError(path + ".value missing")
	}
	if _, ok := val.(string); !ok {
		return formatError(path + ".value must be string")
	}
	for k, x := range e {
		switch k {
		case "value":
		case "color":
			if _, ok := x.(string); !ok {
				return formatError(path + ".color must be string")
			}
		default:
			if !allowUnknown {
				return formatError(path + "." + k + " unexpected")
			}
		}
	}
	return nil
}

// validOpenID rejects what cannot be an openid whatever the account: real ones are 28 URL-safe
// characters; we only insist on non-empty, ≤ 64 bytes, no spaces or control characters.
func validOpenID(s string) bool {
	return s != "" && len(s) <= 64 && !strings.ContainsFunc(s, func(r rune) bool {
		return unicode.IsSpace(r) || unicode.IsControl(r)
	})
}

// checkSubscribeValues applies the keyword value rules to a subscribeMessage.send data object.
// Declared keywords must all be present; undeclared ones are checked by their name's type prefix
// unless inference is off.
func checkSubscribeValues(data map[string]any, tpl Template, infer bool) *rejection {
	bad := ""
	note := func(kw string) {
		if bad == "" || kw < bad {
			bad = kw
		}
	}
	for kw, typ := range tpl.Keywords {
		if _, ok := data[kw]; !ok {
			note(kw)
			continue
		}
		if !wxapi.ValidValue(typ, keywordValue(data, kw)) {
			note(kw)
		}
	}
	if infer {
		for kw := range data {
			if _, declared := tpl.Keywords[kw]; declared {
				continue
			}
			if typ := wxapi.KeywordType(kw); typ != "" && !wxapi.ValidValue(typ, keywordValue(data, kw)) {
				note(kw)
			}
		}
	}
	if bad == "" {
		return nil
	}
	return argumentInvalid("data." + bad + ".value invalid")
}

// keywordValue returns data[kw].value; checkShape has already checked the types.
func keywordValue(data map[string]any, kw string) string {
	e, _ := data[kw].(map[string]any)
	s, _ := e["value"].(string)
	return s
}
