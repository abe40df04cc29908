package app

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/ordermesh/ordermesh/internal/outbox"
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
//
// The timeout counts on the workers having had the order's events: while
// the outbox holds events that have waited more than a tenth of timeout
// (the broker away, say), and for timeout after that backlog was
// published, ExpirePending rejects nothing (see expiryHold).
func (a *App) ExpirePending(ctx context.Context, timeout time.Duration, limit int) (int, error) {
	rejected, _, err := a.expirePending(ctx, timeout, limit)
	return rejected, err
}

// expirePending is ExpirePending, also returning how many orders it
// listed as stale: when that is limit, more may be waiting, whoever
// rejected the ones listed.
func (a *App) expirePending(ctx context.Context, timeout time.Duration, limit int) (rejected, listed int, err error) {
	if held, err := a.expiryHeld(ctx, timeout); err != nil || held {
		return 0, 0, err
	}
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
// next tick. No order times out until a timeout after RunExpiry began
// (the sweeps before then only watch the outbox, see expiryHold): the
// process knows nothing of what happened before it started, when the
// outbox may have had a backlog that went out since, or when the service
// was down while outcomes queued for it.
func (a *App) RunExpiry(ctx context.Context, timeout, interval time.Duration) error {
	return a.runExpiry(ctx, timeout, interval, interval, timeout, expireBatch)
}

// runExpiry is RunExpiry with its first sweep after first, no order timed
// out before hold has passed, and batches of at most batch orders.
func (a *App) runExpiry(ctx context.Context, timeout, first, interval, hold time.Duration, batch int) error {
	if timeout <= 0 {
		return nil
	}
	if hold > 0 {
		a.hold.mu.Lock()
		a.hold.until = a.now().Add(hold)
		a.hold.mu.Unlock()
		a.log.InfoContext(ctx, "order timeouts start a timeout after the service", slog.Duration("timeout", timeout))
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

// expiryHold pauses the timeout while the broker is behind with the
// service's events. An order whose order.created waits in the outbox (the
// broker away for longer than the timeout, the relay far behind) has not
// reached the workers, so its outcomes cannot have come: rejecting it
// would have the workers reserve, charge, release and refund it for
// nothing once the events go out, and the orders placed during an outage
// would all be lost. Once the backlog is published, the workers need
// time to work it off, so the pause lasts for a timeout after the last
// sweep that saw it. RunExpiry starts paused for a timeout, so that a
// process started after a backlog went out (that it never saw) waits too.
type expiryHold struct {
	mu    sync.Mutex
	until time.Time // no order times out before then
	// backlog is set while the hold is for a backlog seen, not only for
	// the start.
	backlog bool
}

// expiryHeld reports whether the timeout is paused now, looking at the
// outbox: a row that has waited longer than a tenth of timeout is a
// backlog, and holds the timeout until a timeout after now.
func (a *App) expiryHeld(ctx context.Context, timeout time.Duration) (bool, error) {
	age, err := outbox.OldestWaiting(ctx, a.pool)
	if err != nil {
		return false, unavailable(err)
	}
	now := a.now()
	a.hold.mu.Lock()
	defer a.hold.mu.Unlock()
	if age > timeout/10 {
		if !a.hold.backlog {
			a.log.WarnContext(ctx, "order timeouts paused: the outbox holds events not yet published",
				slog.Duration("oldest_waiting", age.Round(time.Second)), slog.Duration("timeout", timeout))
		}
		a.hold.until, a.hold.backlog = now.Add(timeout), true
		return true, nil
	}
	if a.hold.until.IsZero() {
		return false, nil
	}
	if now.Before(a.hold.until) {
		return true, nil
	}
	if a.hold.backlog {
		a.log.InfoContext(ctx, "order timeouts resume: the outbox's backlog was published a timeout ago")
	} else {
		a.log.InfoContext(ctx, "order timeouts begin: a timeout has passed since the service started")
	}
	a.hold.until, a.hold.backlog = time.Time{}, false
	return false, nil
}
