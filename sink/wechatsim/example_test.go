package wechatsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"

	"github.com/wxnotify/wxnotify/sink/wechatsim"
)

// A test starts the simulator, fetches a stable token and sends a subscribe message; the
// simulator answers like WeChat and records the delivery.
func Example() {
	sim, err := wechatsim.Start(wechatsim.Config{Accounts: map[string]string{"wxapp": "secret"}})
	if err != nil {
		panic(err)
	}
	defer sim.Close()

	var tok struct {
		AccessToken string `json:"access_token"`
	}
	resp, _ := http.Post(sim.URL()+"/cgi-bin/stable_token", "application/json",
		strings.NewReader(`{"grant_type":"client_credential","appid":"wxapp","secret":"secret"}`))
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()

	body := `{"touser":"oUpF8uMuAJO_M2pxb1Q9zNjWeS6o","template_id":"TPL","data":{"thing1":{"value":"已发货"}}}`
	resp, _ = http.Post(sim.URL()+"/cgi-bin/message/subscribe/send?access_token="+tok.AccessToken,
		"application/json", strings.NewReader(body))
	var ans struct {
		ErrCode int    `json:"errcode"`
		ErrMsg  string `json:"errmsg"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&ans)
	resp.Body.Close()

	d := sim.Deliveries()[0]
	fmt.Println(ans.ErrCode, ans.ErrMsg)
	fmt.Println(d.API, d.ToUser, d.TemplateID)
	// Output:
	// 0 ok
	// subscribeMessage.send oUpF8uMuAJO_M2pxb1Q9zNjWeS6o TPL
}
