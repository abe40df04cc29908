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
// pause for a sweep long after the previous, and batches of at most batch
// orders.
func (a *App) RunExpiryBatches(ctx context.Context, timeout, first, interval time.Duration, batch int) error {
	return a.runExpiry(ctx, timeout, first, interval, 0, batch)
}

// ExpirePendingAfter is ExpirePending as RunExpiry sweeps: a sweep more
// than away after the previous one of any instance pauses the timeout.
func (a *App) ExpirePendingAfter(ctx context.Context, timeout, away time.Duration, limit int) (int, error) {
	rejected, _, err := a.expirePending(ctx, timeout, away, limit)
	return rejected, err
}

// Now is the app's clock.
func (a *App) Now() time.Time { return a.now() }

// SetClock replaces the clock the app stamps and times orders with.
func (a *App) SetClock(now func() time.Time) { a.now = now }
