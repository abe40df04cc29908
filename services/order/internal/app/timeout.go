package app

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// expireBatch bounds how many orders one ExpirePending call rejects.
const expireBatch = 500

// ExpirePending rejects the orders still PENDING timeout after they were
// placed (see order.Timeout), oldest first and at most limit of them, each
// in its own transaction with its order.rejected event, which has the
// workers compensate whatever did succeed. It returns how many it
// rejected. Instances of the service may run it at once: each order is
// rejected once, and counted (and logged) by the instance that rejected
// it.
func (a *App) ExpirePending(ctx context.Context, timeout time.Duration, limit int) (int, error) {
	rejected, _, err := a.expirePending(ctx, timeout, limit)
	return rejected, err
}

// expirePending is ExpirePending, also returning how many orders it
// listed as stale: when that is limit, more may be waiting, whoever
// rejected the ones listed.
func (a *App) expirePending(ctx context.Context, timeout time.Duration, limit int) (rejected, listed int, err error) {
	ids, err := store.ListPendingSince(ctx, a.pool, a.now().Add(-timeout), limit)
	if err != nil {
		return 0, 0, unavailable(err)
	}
	for _, id := range ids {
		next, changed, err := a.changed(ctx, id, order.Timeout{After: timeout})
		if err != nil {
			return rejected, len(ids), fmt.Errorf("expire order %s: %w", id, unavailable(err))
		}
		// Not changed: another instance timed it out, or it ended
		// otherwise since it was listed.
		if changed && next.Status == order.StatusRejected {
			rejected++
			a.log.WarnContext(ctx, "order timed out", slog.String("order_id", id), slog.String("reason", next.StatusReason))
		}
	}
	return rejected, len(ids), nil
}

// RunExpiry calls ExpirePending every interval until ctx ends, each time
// until no whole batch of stale orders is left; a timeout of 0 turns it
// off. Failures (the database away) are logged and tried again at the
// next tick. The first sweep waits an interval too: after a long stop,
// the outcomes of stale orders may be waiting in the service's queue.
func (a *App) RunExpiry(ctx context.Context, timeout, interval time.Duration) error {
	return a.runExpiry(ctx, timeout, interval, interval, expireBatch)
}

// runExpiry is RunExpiry with its first sweep after first and batches of
// at most batch orders.
func (a *App) runExpiry(ctx context.Context, timeout, first, interval time.Duration, batch int) error {
	if timeout <= 0 {
		return nil
	}
	wait := time.NewTimer(first)
	defer wait.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-wait.C:
		}
		for ctx.Err() == nil {
			// Again while a whole batch was stale: other instances may
			// have rejected some of it, but more may wait behind it.
			_, listed, err := a.expirePending(ctx, timeout, batch)
			if err != nil && ctx.Err() == nil {
				a.log.ErrorContext(ctx, "expire pending orders", slog.Any("error", err))
			}
			if err != nil || listed < batch {
				break
			}
		}
		wait.Reset(interval)
	}
}
