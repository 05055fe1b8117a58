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

// openFileLimit is how many files the process may have open, or 0 if
// unknown. Go raises the soft limit to the hard one at startup.
func openFileLimit() int {
	var l syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &l); err != nil || l.Cur > 1<<30 {
		return 0
	}
	return int(l.Cur)
}
