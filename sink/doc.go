// Package sink owns everything that leaves the process: the Kafka writer for outcome and
// dead-letter records (this package), the WeChat client (sink/wechat), the WeChat API catalog
// (sink/wxapi) and, as the test instrument on the other side of the wire, the WeChat simulator
// (sink/wechatsim).
//
// It does not decide what to send or when to commit: the processor does, from the
// acknowledgements this package reports.
package sink
