package store

import (
	"testing"
	"time"
)

// SetHealthyAfter sets how long a watcher's connection must have listened
// for its loss to start the reconnect delays again, until the test ends.
func SetHealthyAfter(t *testing.T, d time.Duration) {
	prev := healthyAfter
	healthyAfter = d
	t.Cleanup(func() { healthyAfter = prev })
}
