// Package cputime reads the CPU time the process has used, for benchmarks
// that report what an operation costs in CPU: on a shared machine that
// tells the cost better than the wall time, which other work stretches.
package cputime

import (
	"syscall"
	"testing"
	"time"
)

// Self returns the CPU time (user and system) the process has used so far,
// failing tb if it cannot be read.
func Self(tb testing.TB) time.Duration {
	tb.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
