//go:build !unix

package procs

import "time"

// cpuTime reports no clock: Run does not adapt on this platform.
func cpuTime() (time.Duration, bool) { return 0, false }
