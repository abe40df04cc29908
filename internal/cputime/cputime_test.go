package cputime

import (
	"testing"
)

func TestSelfGrowsWithWork(t *testing.T) {
	before := Self(t)
	x := 0
	for i := range 50_000_000 {
		x ^= i * i
	}
	after := Self(t)
	if after <= before {
		t.Errorf("CPU time went from %v to %v over a busy loop (%d)", before, after, x)
	}
}
