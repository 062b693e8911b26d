package wechat

import "testing"

// TestClassify pins every line of the errcode table of docs/wechat-api.md section C.
func TestClassify(t *testing.T) {
	table := map[Class][]int{
		ClassOK:        {0},
		ClassToken:     {40001, 40014, 42001},
		ClassTransient: {-1, 43108, ErrNoAnswer},
		ClassQuota:     {45009, 45011},
		ClassPermanent: {40003, 43004, 43019, 43101, 45168, 47001, 47002, 47003, 40036, 41028, 41029,
			12345, 99999, 40002, 1}, // unknown errcodes default to permanent
		ClassConfig: {40013, 40125, 40164, 40243, 48001, 43107, 45103, 45109, 40037, 41030, 41001,
			50002, 50004, 50007, 89501, 89502, 89503, 89504, 89505, 89506, 89507},
	}
	for want, codes := range table {
		for _, code := range codes {
			if got := Classify(code); got != want {
				t.Errorf("Classify(%d) = %s, want %s", code, got, want)
			}
		}
	}
}

func TestClassifyTokenEndpoint(t *testing.T) {
	for code, want := range map[int]Class{
		-1: ClassTransient, 45011: ClassTransient, ErrNoAnswer: ClassTransient,
		40001: ClassConfig, 40013: ClassConfig, 40125: ClassConfig, 40164: ClassConfig, 40243: ClassConfig,
		45009: ClassConfig, 89503: ClassConfig, 50007: ClassConfig,
	} {
		if got := classifyTokenEndpoint(code); got != want {
			t.Errorf("classifyTokenEndpoint(%d) = %s, want %s", code, got, want)
		}
	}
}
