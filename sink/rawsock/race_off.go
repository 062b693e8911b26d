//go:build linux && !race

package rawsock

func raceReleaseIO(uintptr) {}
func raceAcquireIO(uintptr) {}
