//go:build linux && race

package rawsock

import "syscall"

// In race builds, zero-length reads and writes through the syscall package give the race
// detector the happens-before edges that package annotates on every read and write (a write to
// any file descriptor happens before a read that follows it). Without them, a goroutine that
// hands data to another through a socket would be reported as racing with it once one side's
// connection is wrapped. Production builds make no such calls.

func raceReleaseIO(fd uintptr) { _, _ = syscall.Write(int(fd), nil) }
func raceAcquireIO(fd uintptr) { _, _ = syscall.Read(int(fd), nil) }
