// Package sink groups what talks to WeChat: the WeChat client (sink/wechat), the WeChat API
// catalog (sink/wxapi) and, as the test instrument on the other side of the wire, the WeChat
// simulator (sink/wechatsim). Kafka I/O, outcome and dead-letter writes included, is package
// kafkaio's.
//
// It does not decide what to send or when to commit: the processor does.
package sink
