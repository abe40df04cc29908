package loadgen

import (
	"time"
)

// Pacer spaces the sends of an open-loop run evenly at a fixed rate from
// a start time. Request i is due at start + i/rate whatever happened to
// the earlier ones, so a slow server does not slow the offered load down
// (no coordinated omission): latencies are measured from the due time.
type Pacer struct {
	start    time.Time
	interval float64 // nanoseconds between sends
}

// NewPacer returns a Pacer for rate requests per second starting at
// start. rate must be positive.
func NewPacer(start time.Time, rate float64) Pacer {
	return Pacer{start: start, interval: float64(time.Second) / rate}
}

// Due returns when request i (counting from 0) is to be sent.
func (p Pacer) Due(i int) time.Time {
	return p.start.Add(time.Duration(float64(i) * p.interval))
}
