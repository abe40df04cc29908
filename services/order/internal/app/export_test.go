package app

import (
	"context"
	"time"
)

// CreateBatches returns how many transactions Create calls have shared.
func (a *App) CreateBatches() int64 {
	batches, _ := a.creates.Stats()
	return batches
}

// Unavailable is unavailable, for tests of which errors it marks.
var Unavailable = unavailable

// RunExpiryBatches is RunExpiry with its first sweep after first, no
// pause after its start, and batches of at most batch orders.
func (a *App) RunExpiryBatches(ctx context.Context, timeout, first, interval time.Duration, batch int) error {
	return a.runExpiry(ctx, timeout, first, interval, 0, batch)
}

// SetClock replaces the clock the app stamps and times orders with.
func (a *App) SetClock(now func() time.Time) { a.now = now }
