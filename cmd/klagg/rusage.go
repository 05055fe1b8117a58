package main

import "syscall"

// peakRSSMB is the process's peak resident memory, for build's summary.
func peakRSSMB() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return -1
	}
	return ru.Maxrss / 1024 // KiB on Linux
}
