// Package inbox gives event handlers effectively-once effects on top of the
// bus's at-least-once delivery. For each delivery a Runner, in one
// PostgreSQL transaction, records the event id in the inbox table, runs the
// handler's database work, and writes the handler's outgoing events to the
// outbox. A redelivered or duplicated event finds its id already recorded
// and is skipped without effect; a failing handler leaves no trace, so the
// bus's retry starts from scratch. A BatchRunner does the same for
// concurrent deliveries together: one transaction and one BatchHandler call
// for all of them, with one statement each for their inbox rows and their
// outgoing events.
//
// The inbox table lives in the service's own schema, reached through the
// connection's search_path (see postgres.Open); pass Migrations to
// postgres.Migrate with the service's own sources and outbox.Migrations.
//
// Deduplication lasts as long as inbox rows are kept: Prune must keep them
// well beyond the longest time an event can be redelivered, including the
// retry ladder and replays from the dead-letter queue.
package inbox

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the inbox table. Pass it to postgres.Migrate together
// with the service's own sources and outbox.Migrations.
var Migrations = postgres.Source{Name: "inbox", FS: migrationFS}

// ErrMissingID is returned, marked permanent, for a delivery without an
// event id: it cannot be deduplicated, so it must not be processed.
var ErrMissingID = errors.New("event has no id")

// Handler does one event's database work in tx and returns the events it
// emits, which the runner writes to the outbox in the same transaction.
// Returning an error rolls everything back; mark it with eventbus.Permanent
// when retrying cannot help. A handler must do all its effects through tx:
// anything else it does (a call to another system) is not undone on error
// and may happen again on redelivery.
type Handler[PT proto.Message] func(ctx context.Context, tx pgx.Tx, ev PT, meta eventbus.Meta) ([]proto.Message, error)

// Work is the untyped form of a Handler, bound to its event.
type Work func(ctx context.Context, tx pgx.Tx) ([]proto.Message, error)

// Outcome says what happened to a delivery.
type Outcome int

// Outcomes of Runner.Process.
const (
	// Processed: the handler ran and its transaction committed.
	Processed Outcome = iota + 1
	// Duplicate: the event had been processed before; nothing ran.
	Duplicate
)

func (o Outcome) String() string {
	switch o {
	case Processed:
		return "processed"
	case Duplicate:
		return "duplicate"
	default:
		return "unknown"
	}
}

// Metrics are hooks for counters, e.g. Prometheus ones; nil fields are
// skipped. They must be safe for concurrent use and must not block.
type Metrics struct {
	// Processed is called after an event's transaction committed.
	Processed func(meta eventbus.Meta)
	// Duplicate is called for an event skipped as already processed.
	Duplicate func(meta eventbus.Meta)
	// Failed is called when an event's processing failed and rolled back.
	Failed func(meta eventbus.Meta, err error)
}

// Counts are a Runner's totals since it was created.
type Counts struct {
	Processed  int64
	Duplicates int64
	Failed     int64
}

// Runner processes deliveries for one service. It is safe for concurrent
// use: deliveries of different events run in parallel, and concurrent
// deliveries of the same event are serialized by the inbox row's unique
// key, so exactly one of them runs the handler.
type Runner struct {
	db      postgres.TxBeginner
	service string
	metrics Metrics
	// group, when set, shares transactions among concurrent deliveries.
	group *postgres.GroupCommit
	// committed, when set, is called after a transaction that processed a
	// delivery commits.
	committed func()
	// probe, when set, checks that the database answers (WithProbe).
	probe func(context.Context) error

	processed, duplicates, failed atomic.Int64

	// ping remembers the last ping of the database that outage made.
	ping struct {
		sync.Mutex
		at time.Time
		ok bool
	}
}

// NewRunner returns a runner that opens its transactions on db (the
// service's pool) and writes outgoing events with service as their source.
func NewRunner(db postgres.TxBeginner, service string, metrics Metrics, opts ...Option) *Runner {
	r := &Runner{db: db, service: service, metrics: metrics}
	for _, opt := range opts {
		opt(r)
	}
	return r
}

// Option configures a Runner.
type Option func(*Runner)

// WithBatching makes concurrent deliveries share transactions (group
// commit, see postgres.GroupCommit): up to max deliveries, each under its
// own savepoint, commit together, so the service needs one commit for many
// events. Each delivery still succeeds or fails on its own. Deliveries are
// spread over lanes by correlation id (the order), so the events of one
// order share a lane; lanes run their batches in parallel. Within a lane
// handlers run one after another: use batching only for handlers that do
// nothing slow besides their SQL (not for ones that call out, like sending
// email), and use one lane when handlers of different orders lock the same
// rows (e.g. stock), or lanes can deadlock. timeout bounds a batch. A
// BatchRunner batches too, with a few statements per batch instead of a
// few per delivery, for a handler written to take a batch at once.
func WithBatching(max, lanes int, timeout time.Duration) Option {
	return func(r *Runner) {
		if max > 1 {
			r.group = postgres.NewGroupCommit(r.db, max, lanes, timeout)
		}
	}
}

// OnCommit has the runner call f after each transaction in which it
// processed a delivery commits, so that f can wake the process's outbox
// relay (outbox.Relay.Wake) to publish the events the transaction wrote.
// Deliveries that shared a transaction (WithBatching) each call f once it
// committed, so f may run several times for one commit: it must be cheap,
// must not block and should not mind repeats, as Relay.Wake does not. It
// is not called for ProcessTx, whose caller commits.
func OnCommit(f func()) Option {
	return func(r *Runner) { r.committed = f }
}

// WithProbe has the runner check that the database answers with probe
// (the service's postgres.Prober.Ping, which its health check uses too)
// when a delivery fails in a way an outage could explain. Without it the
// runner opens a connection of its own, as db's connections are opened,
// for each check.
func WithProbe(probe func(context.Context) error) Option {
	return func(r *Runner) { r.probe = probe }
}

// Batches returns how many transactions the runner's deliveries shared and
// how many deliveries they carried, when batching is on.
func (r *Runner) Batches() (transactions, deliveries int64) {
	if r.group == nil {
		return 0, 0
	}
	return r.group.Stats()
}

// Counts returns the runner's totals. Duplicates is the number of
// deliveries absorbed as already processed.
func (r *Runner) Counts() Counts {
	return Counts{Processed: r.processed.Load(), Duplicates: r.duplicates.Load(), Failed: r.failed.Load()}
}

// Wrap adapts h to the bus's typed handler signature, so a service
// registers eventbus.Handle(sub, inbox.Wrap(runner, handleOrderCreated)).
// The returned function returns nil for a processed or duplicate event (the
// bus acks it) and the error otherwise (the bus retries it, or
// dead-letters it if the error is permanent).
func Wrap[PT proto.Message](r *Runner, h Handler[PT]) func(context.Context, PT, eventbus.Meta) error {
	return func(ctx context.Context, ev PT, meta eventbus.Meta) error {
		_, err := r.Process(ctx, meta, func(ctx context.Context, tx pgx.Tx) ([]proto.Message, error) {
			return h(ctx, tx, ev, meta)
		})
		return err
	}
}

// errDuplicate rolls back the transaction of a duplicate delivery.
var errDuplicate = errors.New("duplicate event")

// Process handles one delivery in its own transaction: it records meta.ID,
// runs work and writes work's events to the outbox, committing all or
// nothing. A delivery whose id is already recorded is not run and reports
// Duplicate with a nil error. On error the Outcome is zero and nothing was
// committed. Errors from work are returned wrapped, so errors.Is, errors.As
// and eventbus.IsPermanent see through them.
func (r *Runner) Process(ctx context.Context, meta eventbus.Meta, work Work) (Outcome, error) {
	run := func(ctx context.Context, tx pgx.Tx) error { return r.process(ctx, tx, meta, work) }
	var err error
	if r.group != nil {
		key := meta.CorrelationID
		if key == "" {
			key = meta.ID
		}
		err = r.group.Do(ctx, key, run)
	} else {
		err = postgres.WithTx(ctx, r.db, func(tx pgx.Tx) error { return run(ctx, tx) })
	}
	if err == nil {
		r.afterCommit()
	}
	return r.settle(meta, err)
}

// afterCommit calls the OnCommit function, if any.
func (r *Runner) afterCommit() {
	if r.committed != nil {
		r.committed()
	}
}

// ProcessTx handles one delivery like Process but inside tx, the caller's
// transaction, under a savepoint: on error the delivery's writes are undone
// and tx stays usable, so several deliveries can share one transaction. The
// caller commits tx; until it does, nothing is processed, and if it rolls
// back, the caller must treat every delivery in it as failed. A delivery
// whose id another open transaction has just recorded waits for that
// transaction to end, so callers batching deliveries should not hold the
// same event in two batches at once.
func (r *Runner) ProcessTx(ctx context.Context, tx pgx.Tx, meta eventbus.Meta, work Work) (Outcome, error) {
	err := postgres.WithTx(ctx, tx, func(sp pgx.Tx) error {
		return r.process(ctx, sp, meta, work)
	})
	return r.settle(meta, err)
}

// process is one delivery's work inside tx.
func (r *Runner) process(ctx context.Context, tx pgx.Tx, meta eventbus.Meta, work Work) error {
	if meta.ID == "" {
		return eventbus.Permanent(fmt.Errorf("process %s: %w", meta.Type, ErrMissingID))
	}
	tag, err := tx.Exec(ctx, `INSERT INTO inbox (event_id) VALUES ($1) ON CONFLICT (event_id) DO NOTHING`, meta.ID)
	if err != nil {
		return fmt.Errorf("record event %s in inbox: %w", meta.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return errDuplicate
	}
	events, err := work(ctx, tx)
	if err != nil {
		return fmt.Errorf("handle %s %s: %w", meta.Type, meta.ID, err)
	}
	msgs, err := r.messages(meta, events)
	if err != nil {
		return fmt.Errorf("handle %s %s: %w", meta.Type, meta.ID, err)
	}
	if err := outbox.Add(ctx, tx, msgs...); err != nil {
		return fmt.Errorf("handle %s %s: %w", meta.Type, meta.ID, err)
	}
	return nil
}

// messages encodes the events a handler emitted for the delivery meta, as
// the runner's service, correlated like the delivery and continuing its
// trace.
func (r *Runner) messages(meta eventbus.Meta, events []proto.Message) ([]eventbus.Message, error) {
	if len(events) == 0 {
		return nil, nil
	}
	msgs, err := outbox.Messages(r.service, meta.CorrelationID, events...)
	if err != nil {
		return nil, err
	}
	for i := range msgs {
		msgs[i].TraceParent, msgs[i].TraceState = meta.TraceParent, meta.TraceState
	}
	return msgs, nil
}

// settle counts the outcome of a finished delivery.
func (r *Runner) settle(meta eventbus.Meta, err error) (Outcome, error) {
	switch {
	case err == nil:
		r.processed.Add(1)
		if r.metrics.Processed != nil {
			r.metrics.Processed(meta)
		}
		return Processed, nil
	case errors.Is(err, errDuplicate):
		r.duplicates.Add(1)
		if r.metrics.Duplicate != nil {
			r.metrics.Duplicate(meta)
		}
		return Duplicate, nil
	default:
		r.failed.Add(1)
		if r.metrics.Failed != nil {
			r.metrics.Failed(meta, err)
		}
		if errors.Is(err, postgres.ErrNotRun) && !eventbus.IsUnavailable(err) {
			// It never ran: the transactions ahead of it took its time
			// (a slow batch), which is no attempt of its own.
			err = eventbus.Unavailable(err)
		}
		if !eventbus.IsPermanent(err) && !eventbus.IsUnavailable(err) && r.outage(err, meta) {
			// The database was away (or too busy): the bus retries the
			// event without counting the attempt.
			err = eventbus.Unavailable(err)
		}
		return 0, err
	}
}

// pingTimeout bounds outage's check of the database, and pingReuse is how
// long its answer stands for the deliveries failing after it.
const (
	pingTimeout = 2 * time.Second
	pingReuse   = time.Second
)

// outage reports whether err, meta's delivery's failure, says the database
// was out of reach or too busy rather than anything about the delivery.
//
// Out of reach, however long it lasts: a connection to it could not be
// opened (pgconn.ConnectError), the server said it was closing the
// connection or refusing it (SQLSTATE classes 08 and 57P: a restart, a
// failover), or the error is one an outage causes (a broken connection, a
// network error, a timeout: what postgres.Unreachable names, or
// context.DeadlineExceeded) and the database does not answer a ping
// either (on the probe's connection, WithProbe, or a new one). The check matters: a handler's own network errors (a
// mail server dropping its connection) look the same in the error chain,
// and a network that stops carrying packets ends in timeouts, not errors;
// a timeout while the database answers (a slow handler, a lock held long)
// is the delivery's own failure. The check pings on a connection of its
// own rather than one of the pool's, which may be busy with the very work
// that timed out; one check serves the deliveries that fail within
// pingReuse of it.
//
// Too busy (postgres.Busy: short of connections or disk, conflicts still
// lost after the batch runner's reruns, a lock not had within a
// lock_timeout), for up to BusyRetries uncounted retries in a row: a
// compensation parked in the dead-letter queue after a minute of a busy
// database would leave stock reserved, or a customer charged, for an
// ended order. After that a failure so lasting is more likely the
// delivery's own, and its attempts count, so that it reaches the
// dead-letter queue rather than going round for ever.
func (r *Runner) outage(err error, meta eventbus.Meta) bool {
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return true
	}
	if postgres.ServerEnding(err) {
		return true
	}
	if postgres.Busy(err) {
		return meta.OutageRetries < BusyRetries
	}
	if !postgres.Unreachable(err) && !errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	return !r.answers()
}

// BusyRetries is how many retries in a row a delivery failing because the
// database was too busy makes without counting attempts.
const BusyRetries = eventbus.OutageRetryLimit

// answers reports whether the database answers within pingTimeout: the
// probe's answer (WithProbe), or else that of a new connection, or for a
// db that is no pool a ping.
func (r *Runner) answers() bool {
	r.ping.Lock()
	defer r.ping.Unlock()
	if time.Since(r.ping.at) <= pingReuse {
		return r.ping.ok
	}
	ctx, cancel := context.WithTimeout(context.Background(), pingTimeout)
	defer cancel()
	probe := r.probe
	if probe == nil {
		switch db := r.db.(type) {
		case *pgxpool.Pool:
			p := postgres.NewProber(db)
			defer p.Close()
			probe = p.Ping
		case interface{ Ping(context.Context) error }:
			probe = db.Ping
		default:
			probe = func(context.Context) error { return nil } // nothing to ask: count the attempt
		}
	}
	r.ping.ok = probe(ctx) == nil
	r.ping.at = time.Now()
	return r.ping.ok
}

// Execer runs a statement; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// pruneBatch bounds each DELETE so pruning a large backlog never holds many
// locks or a long transaction.
const pruneBatch = 10000

// Prune deletes inbox rows processed more than retention ago, in batches,
// and returns how many it deleted. Events older than that are no longer
// deduplicated: keep retention well above the longest redelivery horizon.
func Prune(ctx context.Context, db Execer, retention time.Duration) (int64, error) {
	if retention <= 0 {
		return 0, fmt.Errorf("prune inbox: retention must be positive, got %s", retention)
	}
	var total int64
	for {
		tag, err := db.Exec(ctx, `
			DELETE FROM inbox WHERE event_id IN (
				SELECT event_id FROM inbox
				WHERE processed_at < now() - make_interval(secs => $1)
				ORDER BY processed_at
				LIMIT $2)`,
			retention.Seconds(), pruneBatch)
		if err != nil {
			return total, fmt.Errorf("prune inbox: %w", err)
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < pruneBatch {
			return total, nil
		}
	}
}
