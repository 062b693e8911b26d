package wechat_test

import (
	"fmt"

	"github.com/wxnotify/wxnotify/sink/wechat"
)

func ExampleClassify() {
	for _, code := range []int{0, 42001, -1, 45011, 43101, 40037, 61234} {
		fmt.Println(code, wechat.Classify(code))
	}
	// Output:
	// 0 ok
	// 42001 token
	// -1 transient
	// 45011 quota
	// 43101 permanent
	// 40037 config
	// 61234 permanent
}
