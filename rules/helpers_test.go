package rules

import (
	"testing"
	"time"

	"github.com/expr-lang/expr"
)

// evalExpr evaluates src against the event js the way rule expressions run.
func evalExpr(t *testing.T, opts Options, src, js string) (any, error) {
	t.Helper()
	s, err := Parse(map[string][]byte{"r.yaml": []byte("rules: []\n")}, opts)
	if err != nil {
		t.Fatal(err)
	}
	prog, err := expr.Compile(src, s.exprOpts...)
	if err != nil {
		t.Fatalf("compile %s: %v", src, err)
	}
	st := s.getState(mustEvent(t, js), Meta{})
	defer putState(st)
	v, err := st.run(prog)
	if err != nil {
		return nil, &FieldError{Msg: exprMessage(err)}
	}
	return v, nil
}

func TestHelpers(t *testing.T) {
	const ev = `{"fen":3980,"neg":-100,"five":5,"zero":0,"sfen":"3980","f":39.5,"big":12345678901234567890123,
		"at":"2026-11-22T10:00:00Z","addr":"广州市海珠区新港中路397号","phone":"13812345678","name2":"王伟","name3":"王小伟",
		"empty":"","shop":{"name":"TIT创意园店"}}`
	tests := []struct {
		src     string
		want    any
		wantErr string
	}{
		{src: `yuan(event.fen)`, want: "39.80元"},
		{src: `yuan(event.five)`, want: "0.05元"},
		{src: `yuan(event.zero)`, want: "0.00元"},
		{src: `yuan(event.neg)`, want: "-1.00元"},
		{src: `yuan(-5)`, want: "-0.05元"},
		{src: `yuan(event.sfen)`, want: "39.80元"},
		{src: `yuan(3980.0)`, want: "39.80元"},
		{src: `yuan(event.f)`, wantErr: "yuan: want an integer amount in fen, got float64 39.5"},
		{src: `yuan(event.missing)`, wantErr: "yuan: amount is nil"},
		{src: `cny(event.fen)`, want: "¥39.80"},
		{src: `cny(event.five)`, want: "¥0.05"},
		{src: `cny(0)`, want: "¥0.00"},
		{src: `cny(event.neg)`, want: "-¥1.00"},
		{src: `timefmt(event.at, "2006-01-02 15:04")`, want: "2026-11-22 18:00"},
		{src: `timefmt(timeparse(event.at), "15:04 MST")`, want: "18:00 CST"},
		{src: `timefmt("2026-11-22T23:30:00+08:00", "01月02日")`, want: "11月22日"},
		{src: `timefmt(event.addr, "15:04")`, wantErr: `timefmt: "广州市海珠区新港中路397号" is not an RFC 3339 time`},
		{src: `timefmt(event.missing, "15:04")`, wantErr: "timefmt: time is nil"},
		{src: `timeparse(event.at) < timeparse("2026-11-23T00:00:00Z")`, want: true},
		{src: `truncate(event.addr, 6)`, want: "广州市海珠…"},
		{src: `truncate(event.addr, 14)`, want: "广州市海珠区新港中路397号"},
		{src: `truncate(event.addr, 13)`, want: "广州市海珠区新港中路39…"},
		{src: `truncate(event.addr, 1)`, want: "…"},
		{src: `truncate(event.addr, 0)`, want: ""},
		{src: `truncate("abc", 3)`, want: "abc"},
		{src: `mask(event.phone)`, want: "138****5678"},
		{src: `mask(event.name2)`, want: "王*"},
		{src: `mask(event.name3)`, want: "王*伟"},
		{src: `mask("欧阳小锋")`, want: "欧**锋"},
		{src: `mask("王")`, want: "*"},
		{src: `mask("wei@example.com")`, want: "w***@example.com"},
		{src: `mask("+8613812345678")`, want: "+86*******5678"},
		{src: `default(event.missing, "-")`, want: "-"},
		{src: `default(event.empty, "-")`, want: "-"},
		{src: `default(event.zero, "-")`, want: 0},
		{src: `default(event.shop.name, "-")`, want: "TIT创意园店"},
		{src: `default(event.a.b.c, "deep")`, want: "deep"},
		{src: `default(event["a"]["b"], "idx")`, want: "idx"},
		{src: `has(event.shop.name)`, want: true},
		{src: `has(event.shop.address)`, want: false},
		{src: `has(event.shipment.tracking_no)`, want: false},
		{src: `has(event.empty)`, want: true},
		{src: `has(event.shop) && !has(event.user)`, want: true},
		{src: `event.big`, want: "12345678901234567890123"},
		{src: `has(event.shop?.name)`, want: true},
		{src: `has(event.nope?.a.b)`, want: false},
		{src: `has({"a": nil}.a.b)`, want: false},
		{src: `default({"a": nil}.a.b, "z")`, want: "z"},
		{src: `default(event.shop?.nope.x, "y")`, want: "y"},
		{src: `event.nope?.a.b ?? "c"`, want: "c"},
		{src: `event.shop.name.x`, wantErr: "cannot fetch x from string"},
		{src: `event.nope.x`, wantErr: "cannot fetch x from <nil>"},
		{src: `has(event.shop.name.x)`, wantErr: "cannot fetch x from string"},
		{src: `event.items[0].name`, wantErr: "cannot fetch 0 from <nil>"},
		{src: `len(event.addr) > 3 && event["shop"]["name"] == "TIT创意园店"`, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.src, func(t *testing.T) {
			got, err := evalExpr(t, Options{}, tt.src, ev)
			if tt.wantErr != "" {
				if err == nil || err.(*FieldError).Msg != tt.wantErr {
					t.Errorf("got %v, %v; want error %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s, ok := got.(interface{ String() string }); ok {
				got = s.String()
			}
			if got != tt.want {
				t.Errorf("got %#v, want %#v", got, tt.want)
			}
		})
	}
}

// TestTimeZoneIgnoresHost: times format in Asia/Shanghai whatever the host's zone, and in
// Options.Zone when set.
func TestTimeZoneIgnoresHost(t *testing.T) {
	ny, err := time.LoadLocation("America/New_York")
	if err != nil {
		t.Fatal(err)
	}
	saved := time.Local
	time.Local = ny
	defer func() { time.Local = saved }()
	const ev = `{"at":"2026-11-22T10:00:00Z"}`
	if got, _ := evalExpr(t, Options{}, `timefmt(event.at, "2006-01-02 15:04")`, ev); got != "2026-11-22 18:00" {
		t.Errorf("default zone: %v", got)
	}
	if got, _ := evalExpr(t, Options{Zone: time.UTC}, `timefmt(event.at, "2006-01-02 15:04")`, ev); got != "2026-11-22 10:00" {
		t.Errorf("Options.Zone: %v", got)
	}
}

func TestHelperTypesCheckedAtLoad(t *testing.T) {
	for _, src := range []string{`yuan(true)`, `truncate("a", "b")`, `mask(1)`, `timefmt(1, "x")`, `timeparse()`} {
		s, _ := Parse(map[string][]byte{"r.yaml": []byte("rules: []\n")}, Options{})
		if _, err := expr.Compile(src, s.exprOpts...); err == nil {
			t.Errorf("%s compiled", src)
		}
	}
}
