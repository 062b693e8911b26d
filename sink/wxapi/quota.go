package wxapi

import "time"

// Beijing is China Standard Time. A fixed zone: China has no DST, and it spares the binary a
// tzdata dependency.
var Beijing = time.FixedZone("Asia/Shanghai", 8*3600)

// NextDailyReset is when a daily quota exhausted at now (ErrDailyQuota) is available again.
// WeChat says quotas reset "the next day"; we assume 00:00 UTC+8 (docs/wechat-api.md section C,
// unverified).
func NextDailyReset(now time.Time) time.Time {
	t := now.In(Beijing)
	return time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, Beijing)
}
