package wxapi

import "testing"

func TestKeywordType(t *testing.T) {
	for name, want := range map[string]string{
		"thing1": "thing", "character_string12": "character_string", "phone_number3": "phone_number",
		"keyword1": "", "first": "", "remark": "", "thing": "", "bogus2": "",
	} {
		if got := KeywordType(name); got != want {
			t.Errorf("KeywordType(%q) = %q, want %q", name, got, want)
		}
	}
}

func TestValidValue(t *testing.T) {
	for _, tc := range []struct {
		typ, v string
		ok     bool
	}{
		{"thing", "二十个字以内的文本", true},
		{"thing", "一二三四五六七八九十一二三四五六七八九十一", false}, // 21 runes
		{"thing", "a\tb", false},
		{"number", "3980.5", true}, {"number", "39a", false},
		{"letter", "abc", true}, {"letter", "ab1", false},
		{"symbol", "+-*", true},
		{"character_string", "SF123456789012", true}, {"character_string", "SF 1", false}, {"character_string", "单号1", false},
		{"time", "18:00", true}, {"time", "2026-11-22 18:00", true}, {"time", "25:00", false},
		{"date", "2026年11月22日", true}, {"date", "2026/11/22 18:00", true}, {"date", "22.11.2026", false},
		{"amount", "¥39.80", true}, {"amount", "39.80元", true}, {"amount", "12345678901", false},
		{"phone_number", "138-0013-8000", true},
		{"car_number", "粤A12345", true}, {"car_number", "A1234567890", false},
		{"name", "王伟", true}, {"name", "王伟1", false},
		{"phrase", "已发货", true}, {"phrase", "已发货了吗啊", false},
		{"unknown_type", "anything\n", true},
	} {
		if got := ValidValue(tc.typ, tc.v); got != tc.ok {
			t.Errorf("ValidValue(%q, %q) = %v, want %v", tc.typ, tc.v, got, tc.ok)
		}
	}
}

func TestTruncateValue(t *testing.T) {
	got, ok := TruncateValue("thing", "一二三四五六七八九十一二三四五六七八九十一二\n")
	if !ok || got != "一二三四五六七八九十一二三四五六七八九…" || !ValidValue("thing", got) {
		t.Fatalf("TruncateValue = %q, %v", got, ok)
	}
	if _, ok := TruncateValue("number", "123"); ok {
		t.Fatal("numbers must not be truncated")
	}
	if got, _ := TruncateValue("thing", "short"); got != "short" {
		t.Fatalf("short value changed: %q", got)
	}
}
