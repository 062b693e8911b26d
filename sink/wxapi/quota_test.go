package wxapi

import (
	"testing"
	"time"
)

func TestNextDailyReset(t *testing.T) {
	for in, want := range map[string]string{
		"2025-03-10T10:00:30+08:00": "2025-03-11T00:00:00+08:00",
		"2025-03-10T15:59:59Z":      "2025-03-11T00:00:00+08:00", // 23:59:59 in Beijing
		"2025-03-10T16:00:00Z":      "2025-03-12T00:00:00+08:00", // 00:00 Beijing: the next day
		"2025-12-31T20:00:00+08:00": "2026-01-01T00:00:00+08:00",
	} {
		tm, _ := time.Parse(time.RFC3339, in)
		if got := NextDailyReset(tm).Format(time.RFC3339); got != want {
			t.Errorf("NextDailyReset(%s) = %s, want %s", in, got, want)
		}
	}
}
