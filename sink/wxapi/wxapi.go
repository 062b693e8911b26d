// Package wxapi is the catalog of the WeChat send APIs wxnotify speaks: for each API the name
// ops write in a rule's `api:` field, the HTTP path, and the shape of its request body, field for
// field as WeChat documents it (snake_case).
//
// It is pure data shared by the rules loader (which checks a rule's `message` against the shape),
// the WeChat client (which needs the path) and the simulator (which validates bodies the way
// WeChat does). It does no I/O.
package wxapi

import "sort"

// Kind is the JSON type of a body field.
type Kind int

const (
	// String is a JSON string.
	String Kind = iota
	// Object is a JSON object with the fixed Fields listed.
	Object
	// Data is a template `data` object: keyword name -> {"value": "...", "color": "..."}.
	// Keyword names are free; each entry must have a string `value`.
	Data
)

func (k Kind) String() string {
	switch k {
	case String:
		return "string"
	case Object:
		return "object"
	case Data:
		return "data object"
	}
	return "unknown"
}

// Field is one field of a request body.
type Field struct {
	Name     string
	Kind     Kind
	Required bool
	Fields   []Field // for Object
	// Enum, when set, lists the only values WeChat accepts.
	Enum []string
}

// Child returns the sub-field called name of an Object field.
func (f *Field) Child(name string) (*Field, bool) {
	for i := range f.Fields {
		if f.Fields[i].Name == name {
			return &f.Fields[i], true
		}
	}
	return nil, false
}

// API describes one WeChat send API.
type API struct {
	// Name is the name WeChat gives the API and ops write in `api:`.
	Name string
	// Path is the HTTP path, POSTed with ?access_token=TOKEN.
	Path string
	// Body is the request body, an Object field whose Name is empty.
	Body Field
	// TemplateIDPaths lists where the template id lives; the first one present in a body is the
	// template WeChat acts on (uniformMessage.send: the weapp half wins over the mp half).
	TemplateIDPaths [][]string
	// IdempotencyField names the body field WeChat deduplicates on ("" if the API has none).
	IdempotencyField string
	// Retired is the errcode WeChat now answers for this API on production accounts (0 if live).
	Retired int
	// TypedValues: data keywords named by type ("thing3") have their values checked by that
	// type's rules (ValidValue) before sending, as WeChat checks them (47003).
	TypedValues bool
}

var (
	dataField    = func(req bool) Field { return Field{Name: "data", Kind: Data, Required: req} }
	miniprogram  = Field{Name: "miniprogram", Kind: Object, Fields: []Field{{Name: "appid", Kind: String, Required: true}, {Name: "pagepath", Kind: String}}}
	weappTplMsg  = Field{Name: "weapp_template_msg", Kind: Object, Fields: []Field{{Name: "template_id", Kind: String, Required: true}, {Name: "page", Kind: String}, {Name: "form_id", Kind: String, Required: true}, dataField(false), {Name: "emphasis_keyword", Kind: String}}}
	mpTplMsg     = Field{Name: "mp_template_msg", Kind: Object, Fields: []Field{{Name: "appid", Kind: String, Required: true}, {Name: "template_id", Kind: String, Required: true}, {Name: "url", Kind: String}, miniprogram, dataField(true)}}
	catalogSlice = []*API{
		{
			Name: "templateMessage.send",
			Path: "/cgi-bin/message/wxopen/template/send",
			Body: Field{Kind: Object, Fields: []Field{
				{Name: "touser", Kind: String, Required: true},
				{Name: "template_id", Kind: String, Required: true},
				{Name: "page", Kind: String},
				{Name: "form_id", Kind: String, Required: true},
				dataField(false),
				{Name: "emphasis_keyword", Kind: String},
			}},
			TemplateIDPaths: [][]string{{"template_id"}},
			Retired:         45103,
		},
		{
			Name: "uniformMessage.send",
			Path: "/cgi-bin/message/wxopen/template/uniform_send",
			Body: Field{Kind: Object, Fields: []Field{
				{Name: "touser", Kind: String, Required: true},
				weappTplMsg,
				mpTplMsg,
			}},
			TemplateIDPaths: [][]string{{"weapp_template_msg", "template_id"}, {"mp_template_msg", "template_id"}},
			Retired:         45109,
		},
		{
			Name: "subscribeMessage.send",
			Path: "/cgi-bin/message/subscribe/send",
			Body: Field{Kind: Object, Fields: []Field{
				{Name: "touser", Kind: String, Required: true},
				{Name: "template_id", Kind: String, Required: true},
				{Name: "page", Kind: String},
				dataField(true),
				{Name: "miniprogram_state", Kind: String, Enum: []string{"developer", "trial", "formal"}},
				{Name: "lang", Kind: String, Enum: []string{"zh_CN", "en_US", "zh_HK", "zh_TW"}},
			}},
			TemplateIDPaths: [][]string{{"template_id"}},
			TypedValues:     true,
		},
		{
			Name: "template.send",
			Path: "/cgi-bin/message/template/send",
			Body: Field{Kind: Object, Fields: []Field{
				{Name: "touser", Kind: String, Required: true},
				{Name: "template_id", Kind: String, Required: true},
				{Name: "url", Kind: String},
				miniprogram,
				dataField(true),
				{Name: "client_msg_id", Kind: String},
			}},
			TemplateIDPaths:  [][]string{{"template_id"}},
			IdempotencyField: "client_msg_id",
			TypedValues:      true,
		},
	}
	catalog = func() map[string]*API {
		m := make(map[string]*API, len(catalogSlice))
		for _, a := range catalogSlice {
			m[a.Name] = a
		}
		return m
	}()
)

// Lookup returns the API called name.
func Lookup(name string) (*API, bool) {
	a, ok := catalog[name]
	return a, ok
}

// ByPath returns the API served at path.
func ByPath(path string) (*API, bool) {
	for _, a := range catalogSlice {
		if a.Path == path {
			return a, true
		}
	}
	return nil, false
}

// Names lists every API name, sorted.
func Names() []string {
	out := make([]string, 0, len(catalog))
	for n := range catalog {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// TemplateID returns the template id WeChat acts on in a decoded body.
func (a *API) TemplateID(body map[string]any) string {
	for _, p := range a.TemplateIDPaths {
		var cur any = body
		for _, k := range p {
			m, ok := cur.(map[string]any)
			if !ok {
				cur = nil
				break
			}
			cur = m[k]
		}
		if s, ok := cur.(string); ok && s != "" {
			return s
		}
	}
	return ""
}

// Errcodes WeChat answers that more than one package names.
const (
	ErrSystemBusy         = -1
	ErrInvalidCredential  = 40001 // access token invalid or not the latest
	ErrInvalidOpenID      = 40003
	ErrInvalidAppID       = 40013
	ErrInvalidAccessToken = 40014
	ErrInvalidTemplateID  = 40037
	ErrInvalidAppSecret   = 40125
	ErrFormIDInvalid      = 41028
	ErrFormIDUsed         = 41029
	ErrInvalidPage        = 41030
	ErrAccessTokenExpired = 42001
	ErrMustPOST           = 43002
	ErrNoSubscription     = 43101 // user refused or used up consent
	ErrConcurrentSameUser = 43108
	ErrDailyQuota         = 45009
	ErrMinuteQuota        = 45011
	ErrAPIUnsupported     = 45103 // templateMessage.send retired
	ErrAPIWithdrawn       = 45109 // uniform_send withdrawn
	ErrJSONParse          = 47001
	ErrJSONUnicodeEscape  = 47002
	ErrArgumentInvalid    = 47003
	ErrAPIUnauthorized    = 48001
)
