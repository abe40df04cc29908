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
// Units are spread over lanes by a key; each lane has at most one
// transaction in flight. A call of Do joins its lane's queue. When the lane
// has no transaction in flight the call leads: it runs every queued unit
// (up to the batch size) in one transaction, each under its own savepoint,
// commits, and hands the lead to the first call that queued meanwhile.
// Alone, a call commits at once; under load a transaction carries what
// arrived while the previous one was flushing. Nothing runs in the
// background: leaders are callers.
//
// A unit that fails is rolled back to its savepoint and only its call
// fails; if the commit fails, every call of the batch fails. The units of
// a lane run one after another on one connection, so they should be short:
// a unit that blocks holds up its batch. Units with the same key always
// share a lane; give units that lock the same rows the same key (or use
// one lane), or two lanes can deadlock (PostgreSQL then aborts one batch,
// and its calls fail).
type GroupCommit struct {
	db      TxBeginner
	max     int
	timeout time.Duration
	lanes   []*lane

	batches, units atomic.Int64
}

// lane is one queue of a GroupCommit with at most one batch in flight.
type lane struct {
	mu      sync.Mutex
	queue   []*unit
	leading bool
}

type unit struct {
	fn   func(ctx context.Context, tx pgx.Tx) error
	err  error
	done chan struct{}
	lead chan struct{}
}

// NewGroupCommit returns a GroupCommit opening its transactions on db,
// with lanes lanes (at least 1) and at most batch units per transaction;
// each transaction (its units and its commit) is bounded by timeout.
func NewGroupCommit(db TxBeginner, batch, lanes int, timeout time.Duration) *GroupCommit {
	g := &GroupCommit{db: db, max: batch, timeout: timeout, lanes: make([]*lane, max(lanes, 1))}
	for i := range g.lanes {
		g.lanes[i] = &lane{}
	}
	return g
}

// Do runs fn in a transaction shared with concurrent calls of the same
// lane (chosen by key) and returns once
// that transaction committed (nil) or failed, or fn failed (its error). fn
// gets a context that does not follow the caller's: a batch belongs to all
// its callers, so Do waits for it even when ctx ends, bounded by the
// GroupCommit's timeout. Do returns ctx's error at once if ctx has ended
// before the call joined a batch.
func (g *GroupCommit) Do(ctx context.Context, key string, fn func(ctx context.Context, tx pgx.Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	l := g.lanes[laneOf(key, len(g.lanes))]
	u := &unit{fn: fn, done: make(chan struct{}), lead: make(chan struct{})}
	l.mu.Lock()
	l.queue = append(l.queue, u)
	if l.leading {
		l.mu.Unlock()
		select {
		case <-u.done:
			return u.err
		case <-u.lead:
		}
		l.mu.Lock()
	}
	l.leading = true
	n := min(len(l.queue), g.max)
	batch := l.queue[:n:n]
	l.queue = l.queue[n:]
	l.mu.Unlock()

	g.run(context.WithoutCancel(ctx), batch)

	l.mu.Lock()
	if len(l.queue) > 0 {
		close(l.queue[0].lead)
	} else {
		l.leading = false
	}
	l.mu.Unlock()
	return u.err
}

// laneOf maps a key to one of n lanes (FNV-1a).
func laneOf(key string, n int) int {
	if n == 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return int(h % uint32(n))
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
