package inbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

// Delivery is one event of a batch, as a BatchHandler gets it.
type Delivery struct {
	Event proto.Message
	Meta  eventbus.Meta
}

// Result is what a BatchHandler made of one delivery: the events it emits,
// which the runner writes to the outbox in the batch's transaction, or the
// error that fails this delivery alone. Mark the error with
// eventbus.Permanent when retrying cannot help.
type Result struct {
	Events []proto.Message
	Err    error
}

// BatchHandler does the database work of several deliveries in tx and
// returns one Result per delivery, in the batch's order. Unlike a Handler
// it sees the whole batch, so it can read and write the rows of every
// delivery with a few statements. The deliveries are distinct events not
// processed before, in the order they arrived; where order matters (two
// events of one order) the handler applies them in that order.
//
// A delivery whose Result has an error must leave no writes in tx that
// its retry does not expect: the runner drops its inbox row but cannot
// undo the handler's writes, so a handler decides every delivery before it
// writes (in memory, say, writing
// what the successful ones changed at the end). An error returned by the
// handler itself fails the batch as a whole: nothing commits. When it lost
// a serialization conflict or a deadlock (postgres.Conflict) the runner
// runs the batch again, a few times; unless the error is transient
// (postgres.Transient: an outage, a conflict still lost) the runner hands
// the deliveries to the handler again in halves, each in its own
// transaction, so that a delivery that fails every batch it is in (one
// row a statement refuses, say) fails alone. A handler may therefore see a
// delivery more than once, in rolled-back transactions. Like a Handler, it must do all its effects through tx.
type BatchHandler func(ctx context.Context, tx pgx.Tx, batch []Delivery) ([]Result, error)

// BatchRunner processes deliveries like a Runner with batching: concurrent
// deliveries share transactions, and each still succeeds or fails on its
// own. But where the Runner runs a Handler per delivery, each under its own
// savepoint, the BatchRunner hands each transaction's deliveries to one
// BatchHandler at once, and records them in the inbox and writes their
// events to the outbox with one statement each, so a transaction costs the
// same few round trips however many deliveries it carries.
//
// Deliveries are gathered by a postgres.Batcher with one lane: one
// transaction is in flight at a time, a delivery arriving while none is
// runs at once, and under load a transaction carries the deliveries that
// arrived while the previous one ran, up to the batch size. A BatchRunner
// is safe for concurrent use.
type BatchRunner struct {
	r       *Runner
	h       BatchHandler
	timeout time.Duration
	b       *postgres.Batcher[*batchCall]
}

// batchCall is one delivery of a batch and what came of it.
type batchCall struct {
	d   Delivery
	err error
}

// NewBatchRunner returns a BatchRunner handing batches of at most size
// deliveries to h. It opens its transactions on r's database and counts
// and reports its deliveries through r (Counts, Metrics) and calls r's
// OnCommit function after each transaction that processed a delivery; r's
// batching option does not apply to it. timeout bounds each transaction.
func NewBatchRunner(r *Runner, h BatchHandler, size int, timeout time.Duration) *BatchRunner {
	b := &BatchRunner{r: r, h: h, timeout: timeout}
	b.b = postgres.NewBatcher(size, 1, b.run)
	return b
}

// WrapBatch adapts b to the bus's typed handler signature, like Wrap:
// eventbus.Handle(sub, inbox.WrapBatch[*orderv1.OrderCreated](b)). Events
// of every type registered this way share b's batches.
func WrapBatch[PT proto.Message](b *BatchRunner) func(context.Context, PT, eventbus.Meta) error {
	return func(ctx context.Context, ev PT, meta eventbus.Meta) error {
		_, err := b.Process(ctx, ev, meta)
		return err
	}
}

// Process handles one delivery in a transaction shared with concurrent
// calls and returns once that transaction committed or failed, like
// Runner.Process: Duplicate with a nil error for an event processed
// before, a zero Outcome and the error when it failed (errors from the
// handler are wrapped, so errors.Is, errors.As and eventbus.IsPermanent see
// through them). Copies of one event in the same batch share its outcome.
// Process returns ctx's error as soon as ctx ends while no batch has taken
// the delivery (waiting behind the batch in flight, say); once one has, it
// waits for the batch even when ctx ends, because the batch belongs to all
// its callers.
func (b *BatchRunner) Process(ctx context.Context, ev proto.Message, meta eventbus.Meta) (Outcome, error) {
	if meta.ID == "" {
		return b.r.settle(meta, eventbus.Permanent(fmt.Errorf("process %s: %w", meta.Type, ErrMissingID)))
	}
	c := &batchCall{d: Delivery{Event: ev, Meta: meta}}
	if err := b.b.Do(ctx, "", c); err != nil {
		return b.r.settle(meta, err)
	}
	return b.r.settle(meta, c.err)
}

// Stats returns how many batches the runner gathered and how many
// deliveries they carried: one transaction per batch, but for batches
// handled again in halves after failing as a whole.
func (b *BatchRunner) Stats() (transactions, deliveries int64) {
	return b.b.Stats()
}

// Queued returns how many deliveries wait for a transaction to carry
// them: those that arrived while one was in flight.
func (b *BatchRunner) Queued() int {
	return b.b.Queued()
}

// run processes batch in one transaction and sets each call's error.
func (b *BatchRunner) run(ctx context.Context, batch []*batchCall) {
	ctx, cancel := context.WithTimeout(ctx, b.timeout)
	defer cancel()
	ds := make([]Delivery, len(batch))
	for i, c := range batch {
		ds[i] = c.d
	}
	processed := false
	for i, err := range b.processApart(ctx, ds) {
		batch[i].err = err
		processed = processed || err == nil
	}
	if processed {
		b.r.afterCommit()
	}
}

// conflictRetries is how many times a batch that lost a serialization
// conflict or a deadlock to a concurrent transaction runs again at once,
// before its deliveries fail. Sent to the retry queues instead, each would
// wait there a second and spend one of its attempts on the conflict.
const conflictRetries = 3

// conflictPause is a random pause before the retry-th run again of a
// batch that lost a conflict, growing with retry, so that the transactions
// that conflicted do not meet again in step.
func conflictPause(retry int) time.Duration {
	return time.Duration(rand.Int64N(int64(10*time.Millisecond) << retry))
}

// processApart is process, running a batch again when it lost a
// conflict with a concurrent transaction (up to conflictRetries times),
// and handling again in halves, each in a
// transaction of its own, deliveries whose transaction failed as a whole
// for what it held rather than for an outage (see postgres.Transient): a
// statement that one delivery's data makes fail, say. Otherwise that one
// delivery would fail every delivery of its batch, which would go to the
// retry queues together, come back together, fail together, and in the
// end be dead-lettered together. Halving finds the deliveries that fail
// on their own in about 2·log2(n) transactions; the others succeed. A
// delivery whose transaction, alone, failed on the data it was given
// (postgres.DataException) fails permanently: it goes to the dead-letter
// queue at once rather than through the retry ladder.
func (b *BatchRunner) processApart(ctx context.Context, ds []Delivery) []error {
	errs, whole := b.process(ctx, ds)
	for try := 0; try < conflictRetries && postgres.Conflict(whole) && ctx.Err() == nil; try++ {
		if !ctxsleep.Sleep(ctx, conflictPause(try)) {
			break
		}
		errs, whole = b.process(ctx, ds)
	}
	if whole == nil || ctx.Err() != nil || postgres.Transient(whole) && !postgres.TooBig(whole) {
		return errs
	}
	if len(ds) < 2 {
		// Alone, its data made a statement fail (a NUL byte in a text
		// field, a number out of range): it would fail the same way at
		// every attempt.
		if postgres.DataException(whole) && !eventbus.IsPermanent(errs[0]) {
			errs[0] = eventbus.Permanent(errs[0])
		}
		return errs
	}
	mid := len(ds) / 2
	return append(b.processApart(ctx, ds[:mid]), b.processApart(ctx, ds[mid:])...)
}

// process handles ds in one transaction and returns each delivery's error
// (nil when processed, errDuplicate when it had been before) and, when the
// transaction failed as a whole, why.
func (b *BatchRunner) process(ctx context.Context, ds []Delivery) (errs []error, whole error) {
	errs = make([]error, len(ds))
	// Only the first copy of an event runs; copies share its outcome.
	first := make(map[string]int, len(ds))
	var distinct []int
	for i, d := range ds {
		if _, ok := first[d.Meta.ID]; !ok {
			first[d.Meta.ID] = i
			distinct = append(distinct, i)
		}
	}
	ids := make([]string, len(distinct))
	for k, i := range distinct {
		ids[k] = ds[i].Meta.ID
	}
	var fresh map[string]bool
	err := postgres.WithTxBatch(ctx, b.r.db, func(b *pgx.Batch) { queueRecord(b, ids, &fresh) }, func(tx pgx.Tx) error {
		var run []int
		for _, i := range distinct {
			if fresh[ds[i].Meta.ID] {
				run = append(run, i)
			} else {
				errs[i] = errDuplicate
			}
		}
		if len(run) == 0 {
			return nil
		}
		batch := make([]Delivery, len(run))
		for k, i := range run {
			batch[k] = ds[i]
		}
		results, err := callBatch(ctx, tx, b.h, batch)
		if err != nil {
			return fmt.Errorf("handle batch of %d events: %w", len(batch), err)
		}
		if len(results) != len(batch) {
			return fmt.Errorf("handle batch of %d events: handler returned %d results", len(batch), len(results))
		}
		var failed []string
		var msgs []eventbus.Message
		for k, i := range run {
			meta := ds[i].Meta
			if err := results[k].Err; err != nil {
				errs[i] = fmt.Errorf("handle %s %s: %w", meta.Type, meta.ID, err)
				failed = append(failed, meta.ID)
				continue
			}
			m, err := b.r.messages(meta, results[k].Events)
			if err != nil {
				// The handler's writes for this delivery cannot be undone
				// alone: the whole batch fails.
				return fmt.Errorf("handle %s %s: %w", meta.Type, meta.ID, err)
			}
			msgs = append(msgs, m...)
		}
		if err := addMessages(ctx, tx, msgs); err != nil {
			return err
		}
		if len(failed) > 0 {
			if _, err := tx.Exec(ctx, `DELETE FROM inbox WHERE event_id = ANY($1)`, failed); err != nil {
				return fmt.Errorf("drop failed events from inbox: %w", err)
			}
		}
		return nil
	})
	for _, i := range distinct {
		// A failed transaction fails every delivery but those that failed
		// on their own.
		if err != nil && (errs[i] == nil || errors.Is(errs[i], errDuplicate)) {
			errs[i] = err
		}
	}
	for i, d := range ds {
		if j := first[d.Meta.ID]; j != i {
			errs[i] = errs[j]
			if errs[j] == nil {
				errs[i] = errDuplicate
			}
		}
	}
	return errs, err
}

// queueRecord queues on b the insert of ids into the inbox; reading its
// result sets *fresh to those that were not there. It inserts in id order,
// so two transactions recording some of the same events (two instances of
// a service, or one and the transaction of a killed one) wait for each
// other in one order and cannot deadlock.
func queueRecord(b *pgx.Batch, ids []string, fresh *map[string]bool) {
	b.Queue(`
		INSERT INTO inbox (event_id)
		SELECT id FROM unnest($1::text[]) AS e(id) ORDER BY id COLLATE "C"
		ON CONFLICT (event_id) DO NOTHING
		RETURNING event_id`, ids,
	).Query(func(rows pgx.Rows) error {
		inserted, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return fmt.Errorf("record %d events in inbox: %w", len(ids), err)
		}
		*fresh = make(map[string]bool, len(inserted))
		for _, id := range inserted {
			(*fresh)[id] = true
		}
		return nil
	})
}

// callBatch runs h, turning a panic into its error so that one batch
// cannot take its callers down with it.
func callBatch(ctx context.Context, tx pgx.Tx, h BatchHandler, batch []Delivery) (results []Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic in batch handler: %v", p)
		}
	}()
	return h(ctx, tx, slices.Clip(batch))
}

// addMessages writes the outgoing events of a batch to the outbox.
func addMessages(ctx context.Context, tx pgx.Tx, msgs []eventbus.Message) error {
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return fmt.Errorf("write outgoing events: %w", err)
	}
	return nil
}
