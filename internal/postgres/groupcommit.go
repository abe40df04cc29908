package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// GroupCommit runs concurrent units of work in shared transactions, so
// that under load one commit (one WAL flush) carries many of them. It is a
// Batcher (see there for lanes and leading) whose batches run their units
// one after another in one transaction, each under its own savepoint.
//
// A unit that fails is rolled back to its savepoint and only its call
// fails; if the commit fails, every call of the batch fails. The units of
// a lane run one after another on one connection, so they should be short:
// a unit that blocks holds up its batch. Units with the same key always
// share a lane; give units that lock the same rows the same key (or use
// one lane), or two lanes can deadlock (PostgreSQL then aborts one batch,
// and its calls fail).
//
// Units that are all the same kind of write are faster batched with a
// Batcher and one statement per table for the whole batch: GroupCommit
// pays a round trip per statement and two per savepoint.
type GroupCommit struct {
	db      TxBeginner
	timeout time.Duration
	b       *Batcher[*unit]
}

type unit struct {
	fn  func(ctx context.Context, tx pgx.Tx) error
	err error
}

// NewGroupCommit returns a GroupCommit opening its transactions on db,
// with lanes lanes (at least 1) and at most batch units per transaction;
// each transaction (its units and its commit) is bounded by timeout.
func NewGroupCommit(db TxBeginner, batch, lanes int, timeout time.Duration) *GroupCommit {
	g := &GroupCommit{db: db, timeout: timeout}
	g.b = NewBatcher(batch, lanes, g.run)
	return g
}

// Do runs fn in a transaction shared with concurrent calls of the same
// lane (chosen by key) and returns once that transaction committed (nil)
// or failed, or fn failed (its error). fn gets a context that does not
// follow the caller's: a batch belongs to all its callers, so Do waits for
// it even when ctx ends, bounded by the GroupCommit's timeout. Do returns
// ctx's error as soon as ctx ends while no batch has taken the call.
func (g *GroupCommit) Do(ctx context.Context, key string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	u := &unit{fn: fn}
	if err := g.b.Do(ctx, key, u); err != nil {
		return err
	}
	return u.err
}

// Stats returns how many transactions ran and how many units they carried.
func (g *GroupCommit) Stats() (batches, units int64) {
	return g.b.Stats()
}

// Queued returns how many units wait for a transaction to carry them.
func (g *GroupCommit) Queued() int {
	return g.b.Queued()
}

func (g *GroupCommit) run(ctx context.Context, batch []*unit) {
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	err := WithTx(ctx, g.db, func(tx pgx.Tx) error {
		for _, u := range batch {
			u.err = WithTx(ctx, tx, func(sp pgx.Tx) error {
				if err := runUnit(ctx, sp, u.fn); err != nil {
					return err
				}
				// A unit that dropped a failed statement's error leaves
				// the transaction failed; its savepoint must be rolled back
				// (releasing it would fail, and fail every unit after it).
				if sp.Conn().PgConn().TxStatus() == 'E' {
					return errUnitLeftTxFailed
				}
				return nil
			})
		}
		return nil
	})
	if err != nil {
		for _, u := range batch {
			if u.err == nil {
				u.err = err
			}
		}
	}
}

// errUnitLeftTxFailed is the error of a unit that returned nil with its
// transaction failed: a statement of it failed and it dropped the error.
var errUnitLeftTxFailed = errors.New("group-committed work returned no error, but a statement of it failed and left its transaction aborted")

// runUnit runs fn, turning a panic into its error so that one unit cannot
// take its batch's callers down with it.
func runUnit(ctx context.Context, tx pgx.Tx, fn func(context.Context, pgx.Tx) error) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in group-committed work: %v", p)
		}
	}()
	return fn(ctx, tx)
}
