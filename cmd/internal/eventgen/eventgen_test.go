package eventgen

import (
	"bytes"
	"encoding/json"
	"testing"
	"unicode/utf8"
)

// The same seed makes the same events; well-formed ones are JSON keyed by their recipient, and
// the malformed share alternates between the two kinds.
func TestGenerator(t *testing.T) {
	a, b := New(50, 0.1, 7), New(50, 0.1, 7)
	kinds := map[string]int{}
	var last string
	for i := range 2000 {
		e, f := a.Event(i), b.Event(i)
		if !bytes.Equal(e.Key, f.Key) || !bytes.Equal(e.Value, f.Value) || e.Malformed != f.Malformed {
			t.Fatalf("event %d differs between two generators of one seed", i)
		}
		kinds[e.Malformed]++
		switch e.Malformed {
		case "":
			var v struct {
				EventID string `json:"event_id"`
				User    struct {
					OpenID string `json:"openid"`
				} `json:"user"`
			}
			if err := json.Unmarshal(e.Value, &v); err != nil {
				t.Fatalf("event %d: %v: %s", i, err, e.Value)
			}
			if Index(v.EventID) != i || v.User.OpenID != string(e.Key) {
				t.Fatalf("event %d: id %q, openid %q, key %q", i, v.EventID, v.User.OpenID, e.Key)
			}
			continue
		case NotJSON:
			if json.Valid(e.Value) {
				t.Errorf("event %d: %s event is JSON", i, e.Malformed)
			}
		case InvalidUTF8:
			if utf8.Valid(e.Value) || !bytes.Contains(e.Value, []byte(`"type":"shipment.sent"`)) {
				t.Errorf("event %d: %s event: %q", i, e.Malformed, e.Value)
			}
		}
		if e.Malformed == last {
			t.Errorf("event %d: two %s events in a row", i, last)
		}
		last = e.Malformed
	}
	if kinds[NotJSON] == 0 || kinds[InvalidUTF8] == 0 {
		t.Errorf("malformed kinds %v, want both", kinds)
	}
}

func TestIndex(t *testing.T) {
	for id, want := range map[string]int{ID(0): 0, ID(4711): 4711, "e-": -1, "e--1": -1, "x-1": -1, "e-1x": -1, "": -1} {
		if got := Index(id); got != want {
			t.Errorf("Index(%q) = %d, want %d", id, got, want)
		}
	}
}
