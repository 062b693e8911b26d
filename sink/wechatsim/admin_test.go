package wechatsim_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

func adminJSON(t *testing.T, method, url, body string, out any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
	}
	return resp.StatusCode
}

func TestAdminEndpoints(t *testing.T) {
	s := start(t, wechatsim.Config{})
	tok := stableToken(t, s)
	admin := s.URL() + "/admin/"

	// Faults over HTTP, durations as strings.
	var set struct{ IDs []string }
	if code := adminJSON(t, "POST", admin+"faults",
		`[{"kind":"errcode","errcode":-1,"count":1,"api":"subscribeMessage.send"},{"id":"slow","kind":"latency","latency":"1ms"}]`, &set); code != 200 || len(set.IDs) != 2 || set.IDs[1] != "slow" {
		t.Fatalf("POST faults: %d %+v", code, set)
	}
	var bad map[string]string
	if code := adminJSON(t, "POST", admin+"faults", `{"kind":"errcode","errcode":-1,"bogus":1}`, &bad); code != 400 || !strings.Contains(bad["error"], "bogus") {
		t.Fatalf("unknown fault field: %d %v", code, bad)
	}
	var listed struct {
		Faults []map[string]any `json:"faults"`
	}
	adminJSON(t, "GET", admin+"faults", "", &listed)
	if len(listed.Faults) != 2 || listed.Faults[0]["left"] != float64(1) || listed.Faults[1]["latency"] != "1ms" {
		t.Fatalf("GET faults: %+v", listed)
	}

	if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != -1 {
		t.Fatalf("admin fault not applied: %s", got.raw)
	}
	send(t, s, subPath, tok, subscribeBody)
	send(t, s, subPath, tok, subscribeBody) // same body again: a visible duplicate
	send(t, s, oaPath, tok, oaTemplateBody)
	send(t, s, oaPath, tok, oaTemplateBody) // deduplicated by client_msg_id

	var dl struct {
		Count      int `json:"count"`
		Deliveries []struct {
			API  string          `json:"api"`
			Body json.RawMessage `json:"body"`
		} `json:"deliveries"`
	}
	adminJSON(t, "GET", admin+"deliveries?api=subscribeMessage.send", "", &dl)
	if dl.Count != 2 || len(dl.Deliveries) != 2 || compact(t, string(dl.Deliveries[0].Body)) != compact(t, subscribeBody) {
		t.Fatalf("deliveries: %+v", dl)
	}
	var sum wechatsim.Summary
	adminJSON(t, "GET", admin+"deliveries?summary=1", "", &sum)
	if sum.Total != 3 || sum.PerAPI["subscribeMessage.send"].Duplicates != 1 || sum.PerAPI["template.send"].Deduplicated != 1 ||
		len(sum.Duplicates) != 1 || sum.Duplicates[0].ToUser != userA || !strings.HasPrefix(sum.Duplicates[0].Key, "body:") {
		t.Fatalf("summary: %+v", sum)
	}
	var rq struct {
		Count    int `json:"count"`
		Requests []struct {
			ErrCode int    `json:"errcode"`
			Fault   string `json:"fault"`
			Body    string `json:"body"`
		} `json:"requests"`
	}
	adminJSON(t, "GET", admin+"requests", "", &rq)
	if rq.Count != 5 || rq.Requests[0].ErrCode != -1 || rq.Requests[0].Fault != "errcode" || rq.Requests[1].Body != subscribeBody {
		t.Fatalf("requests: %+v", rq)
	}
	var st wechatsim.Stats
	adminJSON(t, "GET", admin+"stats", "", &st)
	if st.Calls["subscribeMessage.send"]["-1"] != 1 || st.Calls["subscribeMessage.send"]["0"] != 2 ||
		st.TokenFetches[appID][wechatsim.APIStableToken] != 1 || st.Delivered["template.send"] != 1 {
		t.Fatalf("stats: %+v", st)
	}

	if code := adminJSON(t, "DELETE", admin+"faults?id=slow", "", nil); code != 200 || len(s.Faults()) != 0 {
		t.Fatalf("DELETE fault: %d, %d left", code, len(s.Faults()))
	}
	adminJSON(t, "POST", admin+"faults", `{"kind":"reset"}`, nil)
	adminJSON(t, "DELETE", admin+"faults", "", nil)
	if len(s.Faults()) != 0 {
		t.Fatal("DELETE /admin/faults left faults")
	}

	if code := adminJSON(t, "POST", admin+"tokens/invalidate?appid="+appID, "", nil); code != 200 {
		t.Fatalf("invalidate: %d", code)
	}
	if got := send(t, s, subPath, tok, subscribeBody); got.ErrCode != 40001 {
		t.Fatalf("after admin invalidate: %s", got.raw)
	}
	if code := adminJSON(t, "POST", admin+"reset", "", nil); code != 200 || len(s.Requests()) != 0 || s.Summary().Total != 0 || s.TokenFetches(appID) != 0 {
		t.Fatalf("reset: %d", code)
	}
	if code := adminJSON(t, "GET", admin+"nope", "", nil); code != 404 {
		t.Fatalf("unknown admin path: %d", code)
	}
}

func TestNoRecordKeepsCounts(t *testing.T) {
	s := start(t, wechatsim.Config{NoRecord: true})
	tok := stableToken(t, s)
	for range 3 {
		send(t, s, subPath, tok, subscribeBody)
	}
	sum := s.Summary()
	if s.Requests() != nil || s.Deliveries() != nil || sum.Total != 3 || sum.PerAPI["subscribeMessage.send"].Distinct != 1 {
		t.Fatalf("requests=%d deliveries=%d summary=%+v", len(s.Requests()), len(s.Deliveries()), sum)
	}
}

func TestMaxRecordsDropsOldest(t *testing.T) {
	s := start(t, wechatsim.Config{MaxRecords: 4})
	tok := stableToken(t, s)
	for i := range 5 {
		send(t, s, subPath, tok, strings.Replace(subscribeBody, "TPL_SHIPPED", "T"+string(rune('0'+i)), 1))
	}
	ds := s.Deliveries()
	if len(ds) != 3 || ds[0].TemplateID != "T2" || ds[2].TemplateID != "T4" || s.Summary().Total != 5 {
		t.Fatalf("kept %d deliveries starting at %s", len(ds), ds[0].TemplateID)
	}
}
