package postgres

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
)

// GroupCommit runs concurrent units of work in shared transactions, so
// that under load one commit (one WAL flush) carries many of them.
//
// A call of Do joins a queue. When no transaction of the GroupCommit is in
// flight the call leads: it runs every queued unit (up to the batch size)
// in one transaction, each under its own savepoint, commits, and hands the
// lead to the first call that queued meanwhile. Alone, a call commits at
// once; under load a transaction carries what arrived while the previous
// one was flushing. Nothing runs in the background: leaders are callers.
//
// A unit that fails is rolled back to its savepoint and only its call
// fails; if the commit fails, every call of the batch fails. Units run one
// after another on one connection, so they must not wait for each other
// and should be short: a unit that blocks holds up its whole batch.
type GroupCommit struct {
	db      TxBeginner
	max     int
	timeout time.Duration

	mu      sync.Mutex
	queue   []*unit
	leading bool

	batches, units atomic.Int64
}

type unit struct {
	fn   func(ctx context.Context, tx pgx.Tx) error
	err  error
	done chan struct{}
	lead chan struct{}
}

// NewGroupCommit returns a GroupCommit opening its transactions on db,
// with at most max units per transaction; each transaction (its units and
// its commit) is bounded by timeout.
func NewGroupCommit(db TxBeginner, max int, timeout time.Duration) *GroupCommit {
	return &GroupCommit{db: db, max: max, timeout: timeout}
}

// Do runs fn in a transaction shared with concurrent calls and returns once
// that transaction committed (nil) or failed, or fn failed (its error). fn
// gets a context that does not follow the caller's: a batch belongs to all
// its callers, so Do waits for it even when ctx ends, bounded by the
// GroupCommit's timeout. Do returns ctx's error at once if ctx has ended
// before the call joined a batch.
func (g *GroupCommit) Do(ctx context.Context, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	u := &unit{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	g.mu.Lock()
	g.queue = append(g.queue, u)
	if g.leading {
		g.mu.Unlock()
		select {
		case <-u.done:
			return u.err
		case <-u.lead:
		}
		g.mu.Lock()
	}
	g.leading = true
	n := min(len(g.queue), g.max)
	batch := g.queue[:n:n]
	g.queue = g.queue[n:]
	g.mu.Unlock()

	g.run(context.WithoutCancel(ctx), batch)

	g.mu.Lock()
	if len(g.queue) > 0 {
		close(g.queue[0].lead)
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	return u.err
}

// Stats returns how many transactions ran and how many units they carried.
func (g *GroupCommit) Stats() (batches, units int64) {
	return g.batches.Load(), g.units.Load()
}

func (g *GroupCommit) run(ctx context.Context, batch []*unit) {
	defer func() {
		for _, u := range batch {
			close(u.done)
		}
	}()
	g.batches.Add(1)
	g.units.Add(int64(len(batch)))
	ctx, cancel := context.WithTimeout(ctx, g.timeout)
	defer cancel()
	err := WithTx(ctx, g.db, func(tx pgx.Tx) error {
		for _, u := range batch {
			u.err = WithTx(ctx, tx, func(sp pgx.Tx) error { return runUnit(ctx, sp, u.fn) })
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
