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
// (the broker away, or refusing them), and for timeout after that backlog
// was published, no instance rejects anything (see expiryHeld).
func (a *App) ExpirePending(ctx context.Context, timeout time.Duration, limit int) (int, error) {
	rejected, _, err := a.expirePending(ctx, timeout, 0, limit)
	return rejected, err
}

// expirePending is ExpirePending, also returning how many orders it
// listed as stale: when that is limit, more may be waiting, whoever
// rejected the ones listed. A sweep coming more than away after the
// previous one of any instance pauses the timeout (0: never).
func (a *App) expirePending(ctx context.Context, timeout, away time.Duration, limit int) (rejected, listed int, err error) {
	if held, err := a.expiryHeld(ctx, timeout, away); err != nil || held {
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
	if len(ids) > 0 {
		// A sweep through many orders takes a while: the next is judged
		// from its end.
		if err := store.TouchSweep(ctx, a.pool, a.clockShift()); err != nil {
			return rejected, len(ids), unavailable(err)
		}
	}
	return rejected, len(ids), nil
}

// RunExpiry calls ExpirePending every interval until ctx ends, each time
// until no whole batch of stale orders is left; a timeout of 0 turns it
// off. Failures (the database away) are logged and tried again at the
// next tick. The first sweep comes an interval after the start, so that
// outcomes queued while the process was stopped are handled first. A
// sweep that comes more than three intervals after the previous sweep of
// any instance ended pauses the timeout for a timeout (see expiryHeld): no
// instance was watching the outbox meanwhile, the outcomes of that time
// may still be queued, and the backlog of events that went out then may
// still be worked off. Instances restarting one at a time leave the
// timeout running, as does one instance down for less than about an
// interval (its first sweep comes an interval after its start, up to an
// interval after its last).
func (a *App) RunExpiry(ctx context.Context, timeout, interval time.Duration) error {
	return a.runExpiry(ctx, timeout, interval, interval, 3*interval, expireBatch)
}

// runExpiry is RunExpiry with its first sweep after first, the timeout
// paused by a sweep more than away after the previous one (0: never), and
// batches of at most batch orders.
func (a *App) runExpiry(ctx context.Context, timeout, first, interval, away time.Duration, batch int) error {
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
			_, listed, err := a.expirePending(ctx, timeout, away, batch)
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

// expiryHold is what the instance last saw of the timeout's pause, for
// logging when it begins and ends. The pause itself is in the database,
// shared by every instance and timed by the database's clock
// (store.RecordSweep): an order whose order.created waits in the outbox
// (the broker away for longer than the timeout, the relay far behind) has
// not reached the workers, so its outcomes cannot have come: rejecting it
// would have the workers reserve, charge, release and refund it for
// nothing once the events go out, and the orders placed during an outage
// would all be lost. Once the backlog is published, the workers need time
// to work it off, so the pause lasts for a timeout after the last sweep
// that saw it, whichever instance made it. Restarting an instance neither
// starts nor ends a pause; no pause outlasts the current timeout from now.
type expiryHold struct {
	mu   sync.Mutex
	held bool // the last sweep found the timeout paused
	// backlogWarned is when this instance last warned of the outbox's
	// backlog (the zero time: it has not seen one since the last sweep
	// without); the warning is repeated every timeout while it lasts.
	backlogWarned time.Time
}

// expiryHeld records the sweep and reports whether the timeout is paused
// now: an outbox row that has waited longer than a tenth of timeout is a
// backlog, and pauses the timeout until a timeout after now, as does a
// previous sweep of any instance more than away ago (0: not judged).
func (a *App) expiryHeld(ctx context.Context, timeout, away time.Duration) (bool, error) {
	age, err := outbox.OldestWaiting(ctx, a.pool)
	if err != nil {
		return false, unavailable(err)
	}
	backlog := age > timeout/10
	sweep, err := store.RecordSweep(ctx, a.pool, store.SweepRecord{Shift: a.clockShift(), Timeout: timeout, Backlog: backlog, Away: away})
	if err != nil {
		return false, unavailable(err)
	}
	held := sweep.Held()
	a.hold.mu.Lock()
	defer a.hold.mu.Unlock()
	switch {
	case backlog && (a.hold.backlogWarned.IsZero() || sweep.Now.Sub(a.hold.backlogWarned) >= timeout):
		a.log.WarnContext(ctx, "order timeouts paused: the outbox holds events not yet published",
			slog.Duration("oldest_waiting", age.Round(time.Second)), slog.Duration("timeout", timeout))
		a.hold.backlogWarned = sweep.Now
	case held && !a.hold.held && away > 0 && sweep.Previous.Before(sweep.Now.Add(-away)):
		since := "none since the service's expiry record was made"
		if !sweep.Previous.IsZero() {
			since = sweep.Now.Sub(sweep.Previous).Round(time.Second).String() + " ago"
		}
		a.log.InfoContext(ctx, "order timeouts paused: no instance swept for stale orders for a while, so outcomes may be queued",
			slog.String("last_sweep", since), slog.Time("until", sweep.HeldUntil))
	case held && !a.hold.held:
		a.log.InfoContext(ctx, "order timeouts paused by another instance", slog.Time("until", sweep.HeldUntil))
	case !held && a.hold.held:
		a.log.InfoContext(ctx, "order timeouts resume")
	}
	if !backlog {
		a.hold.backlogWarned = time.Time{}
	}
	a.hold.held = held
	return held, nil
}

// clockShift is how far the app's clock is from the system's: 0 but in
// tests, which move the app's clock (SetClock); the pause's times, on the
// database's clock, move with it.
func (a *App) clockShift() time.Duration { return a.now().Sub(time.Now()) }
