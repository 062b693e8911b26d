package wechatsim

import (
	"sync"
	"time"

	"github.com/wxnotify/wxnotify/sink/wxapi"
)

// cstOffset places the quota day on China Standard Time: WeChat says quotas reset "the next day"
// and its servers run on UTC+8 (unverified, see docs/wechat-api.md section C).
const cstOffset = 8 * 3600

type quotaKey struct{ appid, api string }

type quotaCount struct {
	day, minute      int64
	dayUsed, minUsed int
}

// quotaTable counts calls per (appid, API) against the configured limits.
type quotaTable struct {
	def   Quota
	byAPI map[string]Quota

	mu     sync.Mutex
	counts map[quotaKey]*quotaCount
}

func newQuotaTable(def Quota, byAPI map[string]Quota) *quotaTable {
	return &quotaTable{def: def, byAPI: byAPI, counts: make(map[quotaKey]*quotaCount)}
}

func (q *quotaTable) limit(api string) Quota {
	if l, ok := q.byAPI[api]; ok {
		return l
	}
	return q.def
}

// take counts one call and returns 0, or the errcode if a limit is already reached (the call is
// then not counted).
func (q *quotaTable) take(appid, api string, now time.Time) int {
	l := q.limit(api)
	if l.Daily == 0 && l.PerMinute == 0 {
		return 0
	}
	sec := now.Unix()
	day, minute := floorDiv(sec+cstOffset, 86400), floorDiv(sec, 60)
	q.mu.Lock()
	defer q.mu.Unlock()
	k := quotaKey{appid, api}
	c := q.counts[k]
	if c == nil {
		c = &quotaCount{day: day, minute: minute}
		q.counts[k] = c
	}
	if c.day != day {
		c.day, c.dayUsed = day, 0
	}
	if c.minute != minute {
		c.minute, c.minUsed = minute, 0
	}
	if l.Daily > 0 && c.dayUsed >= l.Daily {
		return wxapi.ErrDailyQuota
	}
	if l.PerMinute > 0 && c.minUsed >= l.PerMinute {
		return wxapi.ErrMinuteQuota
	}
	c.dayUsed++
	c.minUsed++
	return 0
}

func (q *quotaTable) reset() {
	q.mu.Lock()
	clear(q.counts)
	q.mu.Unlock()
}

func floorDiv(a, b int64) int64 {
	d := a / b
	if a%b != 0 && a < 0 {
		d--
	}
	return d
}
