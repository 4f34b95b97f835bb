package stats_test

import (
	"syscall"
	"time"
)

// threadCPU returns the calling thread's CPU time (user and system): with the goroutine locked
// to its thread, a difference measures the work of the calls between, whatever else the machine
// runs.
func threadCPU() (time.Duration, bool) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(1 /* RUSAGE_THREAD */, &ru); err != nil {
		return 0, false
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), true
}
