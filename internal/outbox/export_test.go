package outbox

import (
	"context"
	"math"
)

// ReadStatsUpTo is ReadStats counting up to exactUpTo rows in each table.
var ReadStatsUpTo = readStats

// PublishBatch publishes one batch of the outbox's rows or, when it has
// none, of the deferred rows that are due, as the relay's loop does, and
// returns how many the broker confirmed.
func (r *Relay) PublishBatch(ctx context.Context) (int, error) {
	claimed, published, err := r.publishFrom(ctx, outboxRows, math.MaxInt64)
	if err != nil || claimed > 0 {
		return published, err
	}
	_, published, err = r.publishFrom(ctx, deferredRows, math.MaxInt64)
	return published, err
}
