package wechatsim

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
)

// adminDelivery is a Delivery on the admin wire; delivered bodies are valid JSON, so they are
// embedded as JSON rather than base64.
type adminDelivery struct {
	API         string          `json:"api"`
	AppID       string          `json:"appid"`
	ToUser      string          `json:"touser"`
	TemplateID  string          `json:"template_id"`
	ClientMsgID string          `json:"client_msg_id,omitempty"`
	MsgID       int64           `json:"msgid"`
	Body        json.RawMessage `json:"body,omitempty"`
	At          time.Time       `json:"at"`
}

// adminRequest is a Request on the admin wire; the body may be invalid JSON, so it is a string.
type adminRequest struct {
	API        string    `json:"api"`
	AppID      string    `json:"appid,omitempty"`
	ToUser     string    `json:"touser,omitempty"`
	ErrCode    int       `json:"errcode"`
	Fault      FaultKind `json:"fault,omitempty"`
	HTTPStatus int       `json:"http_status,omitempty"`
	Duplicate  bool      `json:"duplicate,omitempty"`
	Body       string    `json:"body"`
	At         time.Time `json:"at"`
}

// serveAdmin serves the JSON endpoints under /admin/:
//
//	GET    /admin/deliveries[?summary=1][&api=][&touser=]
//	GET    /admin/requests[?api=][&touser=]
//	POST   /admin/reset
//	GET    /admin/faults
//	POST   /admin/faults            body: a Fault or a list of them
//	DELETE /admin/faults[?id=]
//	POST   /admin/tokens/invalidate?appid=
//	GET    /admin/stats
func (s *Server) serveAdmin(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	route := r.Method + " " + r.URL.Path
	switch route {
	case "GET /admin/deliveries":
		if q.Get("summary") != "" {
			writeJSON(w, http.StatusOK, s.Summary())
			return
		}
		s.adminDeliveries(w, q.Get("api"), q.Get("touser"))
	case "GET /admin/requests":
		s.adminRequests(w, q.Get("api"), q.Get("touser"))
	case "POST /admin/reset":
		s.Reset()
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case "GET /admin/faults":
		s.adminListFaults(w)
	case "POST /admin/faults":
		s.adminSetFaults(w, r)
	case "DELETE /admin/faults":
		if id := q.Get("id"); id != "" {
			writeJSON(w, http.StatusOK, map[string]bool{"removed": s.RemoveFault(id)})
			return
		}
		s.ClearFaults()
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case "POST /admin/tokens/invalidate":
		appid := q.Get("appid")
		if appid == "" {
			writeJSON(w, http.StatusBadRequest, map[string]string{"error": "appid missing"})
			return
		}
		s.InvalidateTokens(appid)
		writeJSON(w, http.StatusOK, map[string]bool{"ok": true})
	case "GET /admin/stats":
		writeJSON(w, http.StatusOK, s.Stats())
	default:
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such admin endpoint: " + route})
	}
}

func (s *Server) adminDeliveries(w http.ResponseWriter, api, touser string) {
	all := s.Deliveries()
	out := make([]adminDelivery, 0, len(all))
	for _, d := range all {
		if (api != "" && d.API != api) || (touser != "" && d.ToUser != touser) {
			continue
		}
		out = append(out, adminDelivery{API: d.API, AppID: d.AppID, ToUser: d.ToUser, TemplateID: d.TemplateID,
			ClientMsgID: d.ClientMsgID, MsgID: d.MsgID, Body: json.RawMessage(d.Body), At: d.At})
	}
	sum := s.Summary()
	writeJSON(w, http.StatusOK, map[string]any{"count": len(out), "total_delivered": sum.Total, "deliveries": out})
}

func (s *Server) adminRequests(w http.ResponseWriter, api, touser string) {
	all := s.Requests()
	out := make([]adminRequest, 0, len(all))
	for _, q := range all {
		if (api != "" && q.API != api) || (touser != "" && q.ToUser != touser) {
			continue
		}
		out = append(out, adminRequest{API: q.API, AppID: q.AppID, ToUser: q.ToUser, ErrCode: q.ErrCode, Fault: q.Fault,
			HTTPStatus: q.HTTPStatus, Duplicate: q.Duplicate, Body: string(q.Body), At: q.At})
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(out), "requests": out})
}

func (s *Server) adminListFaults(w http.ResponseWriter) {
	live := s.faults.live()
	out := make([]faultJSON, 0, len(live))
	for _, f := range live {
		var left *int64
		if f.Count > 0 {
			n := f.left.Load()
			left = &n
		}
		out = append(out, faultToJSON(f.Fault, left))
	}
	writeJSON(w, http.StatusOK, map[string]any{"faults": out})
}

// adminSetFaults installs one fault or a list; all are validated before any is installed.
func (s *Server) adminSetFaults(w http.ResponseWriter, r *http.Request) {
	b, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
		return
	}
	var list []Fault
	if t := bytes.TrimSpace(b); len(t) > 0 && t[0] == '[' {
		err = json.Unmarshal(t, &list)
	} else {
		var f Fault
		err = json.Unmarshal(t, &f)
		list = []Fault{f}
	}
	for i := range list {
		if err == nil {
			err = list[i].Validate()
		}
	}
	if err != nil {
		writeJSON(w, http.StatusBadRequest, map[string]string{"error": "fault: " + err.Error()})
		return
	}
	ids := make([]string, 0, len(list))
	for _, f := range list {
		id, _ := s.faults.set(f) // validated above
		ids = append(ids, id)
	}
	s.log.WithField("ids", ids).Info("faults set via admin")
	writeJSON(w, http.StatusOK, map[string]any{"ids": ids})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(buf.Bytes())
}

// strictUnmarshal decodes exactly one JSON value, rejecting unknown fields.
func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after JSON value")
	}
	return nil
}
