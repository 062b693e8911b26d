package wechatsim

import (
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
	"unicode/utf8"
)

// WeChat answers business errors with HTTP 200 and this content type.
const contentType = "application/json; encoding=utf-8"

// ridSource makes request ids shaped like WeChat's ("6502a1d3-4f3d1c2e-0000002a"): callers log
// them, so they must be unique, not secret.
type ridSource struct {
	start uint32
	seq   atomic.Uint64
}

func newRIDSource() *ridSource { return &ridSource{start: uint32(time.Now().Unix())} }

func (rs *ridSource) appendRID(b []byte) []byte {
	n := rs.seq.Add(1)
	b = appendHex32(b, rs.start)
	b = append(b, '-')
	b = appendHex32(b, uint32(n>>32))
	b = append(b, '-')
	return appendHex32(b, uint32(n))
}

func appendHex32(b []byte, v uint32) []byte {
	const digits = "0123456789abcdef"
	for shift := 28; shift >= 0; shift -= 4 {
		b = append(b, digits[(v>>uint(shift))&0xf])
	}
	return b
}

// appendError appends {"errcode":N,"errmsg":"MSG rid: RID"}.
func (rs *ridSource) appendError(b []byte, code int, msg string) []byte {
	b = append(b, `{"errcode":`...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, `,"errmsg":"`...)
	b = appendJSONStringBody(b, msg)
	b = append(b, " rid: "...)
	b = rs.appendRID(b)
	return append(b, `"}`...)
}

// appendOK appends the send APIs' success body.
func appendOK(b []byte, msgid int64) []byte {
	b = append(b, `{"errcode":0,"errmsg":"ok","msgid":`...)
	b = strconv.AppendInt(b, msgid, 10)
	return append(b, '}')
}

// appendJSONStringBody escapes s for use inside a JSON string. Like WeChat it leaves non-ASCII and
// <>& alone; only quotes, backslashes and control characters are escaped.
func appendJSONStringBody(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '"' || c == '\\':
				b = append(b, '\\', c)
			case c < 0x20:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, `\ufffd`...)
		} else {
			b = append(b, s[i:i+size]...)
		}
		i += size
	}
	return b
}

func writeBody(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h.Set("Content-Type", contentType)
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body) // the client may be gone; nothing to do about it
}
