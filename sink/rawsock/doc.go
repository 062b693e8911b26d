// Package rawsock makes the reads and writes of a TCP connection raw non-blocking system calls
// that bypass Go's system-call bookkeeping (Linux only; elsewhere Wrap returns the connection
// as it is).
//
// Why: a socket's read or write through the net package enters the runtime's system-call
// state, and the first one after the process has been idle wakes the runtime's monitor thread
// (sysmon), which then polls every 20 µs until the process is idle again. A processor at a
// steady 1,000 events/s goes idle hundreds of times a second, and on a VM where a context
// switch costs ~13 µs of CPU those wake-ups were the largest single cost at low load
// (`perf record -e sched:sched_switch` on cmd/wxbench's processor: about 1,600 of its 2,550
// switches a second at one P). A read or write of a non-blocking socket never blocks, which is
// the case the runtime's raw system calls are for; the readiness waits and deadlines still go
// through the net package's poller (syscall.RawConn), so deadlines, Close and cancellation
// behave as on the wrapped connection.
//
// It owns nothing but the two calls: dialing, TLS and protocol stay with its callers
// (sink/wechat's poster and sink/kafkaconn).
package rawsock
