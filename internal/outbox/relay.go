package outbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

// Publisher sends messages to the broker. Publish returns nil only once the
// broker has confirmed every message; on error some messages may have been
// confirmed and some not, and the relay publishes all of them again later.
// It must honour ctx's deadline. internal/eventbus's publisher implements
// it.
type Publisher interface {
	Publish(ctx context.Context, msgs ...eventbus.Message) error
}

// Relay defaults, used for zero Config fields.
const (
	DefaultPollInterval   = 500 * time.Millisecond
	DefaultBatchSize      = 100
	DefaultPublishTimeout = 30 * time.Second
	DefaultMinBackoff     = 100 * time.Millisecond
	DefaultMaxBackoff     = 10 * time.Second
)

// Config tunes a Relay. Zero fields take the defaults above.
type Config struct {
	// PollInterval is how often the relay looks for rows when Wake was not
	// called. Wake makes publishing the rows of this process prompt;
	// polling picks up rows committed by other processes (another instance
	// that stopped before it published them, say).
	PollInterval time.Duration
	// BatchSize is the most rows claimed, published and deleted in one
	// transaction.
	BatchSize int
	// Workers is how many batches this relay publishes at once (default 1).
	// Workers, like separate relays, never claim the same row.
	Workers int
	// PublishTimeout bounds one batch's Publish call.
	PublishTimeout time.Duration
	// MinBackoff and MaxBackoff bound the wait after a failed batch; it
	// doubles on each consecutive failure.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives failures; nil discards them.
	Logger *slog.Logger
	// Metrics receives counts; nil fields are skipped.
	Metrics Metrics
}

// Metrics are hooks for counters, e.g. Prometheus ones. They are called
// from the relay's goroutines and must be safe for concurrent use. The
// backlog gauges come from ReadStats.
type Metrics struct {
	// Published is called with the number of rows a batch published, had
	// confirmed and deleted.
	Published func(n int)
	// Failed is called when a batch of n rows could not be published or
	// deleted; the rows stay and are retried.
	Failed func(n int, err error)
}

// Relay publishes committed outbox rows of one schema (the pool's
// search_path) through a Publisher, oldest first (the rows the broker
// refused, in outbox_deferred, the longest due first), and deletes them
// once confirmed. Any number of relays, in one process or many, can run against
// the same outbox: each row is claimed by one of them with FOR UPDATE SKIP
// LOCKED.
//
// Writers in the relay's process call Wake after they commit outbox rows,
// so the relay publishes them at once; other rows wait for the next poll.
// The relay is not woken by PostgreSQL notifications: a transaction that
// sends one (pg_notify, NOTIFY) holds a lock shared by the whole database
// cluster from its commit until its commit record is flushed, so
// notifying commits flush one at a time, and writers committing
// concurrently, in every service, would queue behind each other.
type Relay struct {
	pool *pgxpool.Pool
	pub  Publisher
	cfg  Config
	log  *slog.Logger
	// wakes has one channel per worker, each holding at most one pending
	// wake-up.
	wakes []chan struct{}
}

// NewRelay returns a relay that moves rows from pool's outbox to pub. Call
// Run to start it.
func NewRelay(pool *pgxpool.Pool, pub Publisher, cfg Config) *Relay {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&cfg.PollInterval, DefaultPollInterval)
	def(&cfg.PublishTimeout, DefaultPublishTimeout)
	def(&cfg.MinBackoff, DefaultMinBackoff)
	def(&cfg.MaxBackoff, DefaultMaxBackoff)
	if cfg.MaxBackoff < cfg.MinBackoff {
		cfg.MaxBackoff = cfg.MinBackoff
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.Workers <= 0 {
		cfg.Workers = 1
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	wakes := make([]chan struct{}, cfg.Workers)
	for i := range wakes {
		wakes[i] = make(chan struct{}, 1)
	}
	return &Relay{pool: pool, pub: pub, cfg: cfg, log: log, wakes: wakes}
}

// Wake has the relay look for rows now rather than at its next poll. Call
// it after committing outbox rows (it does nothing useful before the
// commit: the rows are not visible yet). It never blocks, and wake-ups
// that come while the relay is busy are merged into one look. It is safe
// for concurrent use, also before Run.
func (r *Relay) Wake() {
	for _, w := range r.wakes {
		select {
		case w <- struct{}{}:
		default: // A wake-up is already pending; one is enough.
		}
	}
}

// Run publishes rows until ctx ends, then returns nil once its goroutines
// have stopped. Broker and database failures never end it: it logs them,
// backs off and tries again, keeping the rows. A batch in flight when ctx
// ends is rolled back unless the broker already confirmed it.
func (r *Relay) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	for i, w := range r.wakes {
		g.Go(func() error { return r.work(ctx, w, i == 0) })
	}
	return g.Wait()
}

// Stats returns the backlog of the relay's outbox.
func (r *Relay) Stats(ctx context.Context) (Stats, error) { return ReadStats(ctx, r.pool) }

// Drain publishes batches until it finds no row left to claim among those
// written before it began, or ctx ends or a batch fails. Rows another relay
// holds at that moment are not waited for, nor the rows the broker refused
// (outbox_deferred, due or not), nor rows written after Drain began: with other
// instances writing to the same outbox, a drain that took them too might
// never end. It suits a graceful shutdown ("flush the outbox") and tests.
func (r *Relay) Drain(ctx context.Context) error {
	var last int64
	if err := r.pool.QueryRow(ctx, `SELECT coalesce(max(seq), 0) FROM outbox`).Scan(&last); err != nil {
		return fmt.Errorf("drain outbox: read last row: %w", err)
	}
	for {
		claimed, _, err := r.publishFrom(ctx, outboxRows, last)
		if err != nil {
			return err
		}
		if claimed == 0 {
			return nil
		}
	}
}

// work publishes batches whenever woken or polled, backing off on failure.
// With retry set (one worker of the relay), each poll interval the
// deferred rows that are due go out too, between the outbox's batches, so
// that neither waits on the other.
func (r *Relay) work(ctx context.Context, wake <-chan struct{}, retry bool) error {
	timer := time.NewTimer(r.cfg.PollInterval)
	defer timer.Stop()
	backoff := r.cfg.MinBackoff
	var retryAt time.Time
	for {
		claimed, _, err := r.publishFrom(ctx, outboxRows, math.MaxInt64)
		if err == nil && retry && !time.Now().Before(retryAt) {
			retryAt = time.Now().Add(r.cfg.PollInterval)
			err = r.retryDeferred(ctx)
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			r.log.WarnContext(ctx, "outbox relay: batch failed; rows kept for retry", "error", err, "retry_in", backoff)
			if !ctxsleep.Sleep(ctx, jitter(backoff)) {
				return nil
			}
			backoff = min(2*backoff, r.cfg.MaxBackoff)
			continue
		}
		backoff = r.cfg.MinBackoff
		if claimed == r.cfg.BatchSize {
			continue // There may be more right away.
		}
		timer.Reset(r.cfg.PollInterval)
		select {
		case <-ctx.Done():
			return nil
		case <-wake:
		case <-timer.C:
		}
	}
}

// retryDeferred publishes the deferred rows that are due, batch after
// batch while batches are whole and the broker takes some of their rows
// (what it refuses again waits again, out of the next batch's way).
func (r *Relay) retryDeferred(ctx context.Context) error {
	for {
		claimed, published, err := r.publishFrom(ctx, deferredRows, math.MaxInt64)
		if err != nil || claimed < r.cfg.BatchSize || published == 0 {
			return err
		}
	}
}

// rowSource is a table a batch's rows come from, with the statements
// that claim them and that defer the ones the broker refused.
type rowSource struct {
	table string
	// claim locks up to $1 rows of seq at most $2 that no other
	// transaction holds, in the order they are due.
	claim string
	// refuse takes the refused rows ($1) out of the way until their next
	// attempt: 2^attempts × MinBackoff ($2) from now, at most MaxBackoff
	// ($3), attempts counting the refusals before this one.
	refuse string
}

var (
	// outboxRows are the rows not yet tried, oldest first; refused ones
	// move to outbox_deferred.
	outboxRows = &rowSource{
		table: "outbox",
		claim: `
			SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body
			FROM outbox
			WHERE seq <= $2
			ORDER BY seq
			LIMIT $1
			FOR UPDATE SKIP LOCKED`,
		refuse: `
			WITH moved AS (
				DELETE FROM outbox WHERE seq = ANY($1)
				RETURNING seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state,
					body, created_at, attempts
			)
			INSERT INTO outbox_deferred (seq, id, type, routing_key, source, correlation_id, event_time, trace_parent,
				trace_state, body, created_at, attempts, next_attempt_at)
			SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state,
				body, created_at, attempts + 1, now() + least($2::interval * power(2, least(attempts, 20)), $3::interval)
			FROM moved`,
	}
	// deferredRows are the rows the broker refused, once due, the longest
	// due first; refused again, they wait longer.
	deferredRows = &rowSource{
		table: "outbox_deferred",
		claim: `
			SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body
			FROM outbox_deferred
			WHERE next_attempt_at <= now() AND seq <= $2
			ORDER BY next_attempt_at
			LIMIT $1
			FOR UPDATE SKIP LOCKED`,
		refuse: `
			UPDATE outbox_deferred SET attempts = attempts + 1,
				next_attempt_at = now() + least($2::interval * power(2, least(attempts, 20)), $3::interval)
			WHERE seq = ANY($1)`,
	}
)

// publishFrom claims up to BatchSize of from's rows whose seq is at most
// last, publishes them and deletes them in one transaction, and returns how
// many it claimed and how many the broker confirmed. A row is deleted only
// once the broker confirmed it. Rows the broker refused (an unroutable
// event, a nack) are deferred (from.refuse), with a delay before their next
// attempt that grows with their refusals, so they hold up nothing, even
// when they fill the batch. Rows it left unanswered (the link went down,
// the confirms timed out) stay as they were, due at once, and publishFrom
// returns an error saying how many, after settling the others; when no row
// was confirmed or refused the transaction rolls back and every row stays.
//
// The transaction takes two round trips around the publishing: BEGIN with
// the claim, and the DELETE with COMMIT. It is run on a connection of its
// own rather than through pgx.Tx, which would spend a round trip on COMMIT
// alone.
func (r *Relay) publishFrom(ctx context.Context, from *rowSource, last int64) (claimed, published int, err error) {
	conn, err := r.pool.Acquire(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("claim outbox rows: %w", err)
	}
	defer conn.Release()
	defer postgres.RollbackConn(ctx, conn) // A no-op once committed.

	// The commit does not wait for its WAL flush: a crash can lose only
	// what the batch settled (the deletion of rows the broker has, which
	// are then published again and absorbed by the consumers' inboxes; a
	// refused row's move or back-off, which is tried again).
	var seqs []int64
	var msgs []eventbus.Message
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`SET LOCAL synchronous_commit TO off`)
	claim(b, from, r.cfg.BatchSize, last, &seqs, &msgs)
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		return 0, 0, fmt.Errorf("claim outbox rows: %w", err)
	}
	if len(msgs) == 0 {
		return 0, 0, nil
	}
	pctx, cancel := context.WithTimeout(ctx, r.cfg.PublishTimeout)
	pubErr := r.pub.Publish(pctx, msgs...)
	cancel()
	confirmed, failed, unanswered, known := settle(seqs, pubErr)
	if !known {
		r.failed(len(msgs), pubErr)
		return len(msgs), 0, fmt.Errorf("publish %d outbox messages: %w", len(msgs), pubErr)
	}
	// The broker has the confirmed messages now. Finish even if ctx just
	// ended, so a graceful stop does not publish them a second time.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	b = &pgx.Batch{}
	if len(confirmed) > 0 {
		b.Queue(`DELETE FROM `+from.table+` WHERE seq = ANY($1)`, confirmed)
	}
	if len(failed) > 0 {
		b.Queue(from.refuse, failed, r.cfg.MinBackoff, r.cfg.MaxBackoff)
	}
	b.Queue(`COMMIT`).Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
	if err := conn.SendBatch(dctx, b).Close(); err != nil {
		r.failed(len(msgs), err)
		return len(msgs), 0, fmt.Errorf("finish outbox batch (delete %d published rows, defer %d, commit): %w", len(confirmed), len(failed), err)
	}
	if r.cfg.Metrics.Published != nil && len(confirmed) > 0 {
		r.cfg.Metrics.Published(len(confirmed))
	}
	if len(failed) > 0 {
		r.failed(len(failed), pubErr)
		r.log.WarnContext(ctx, "outbox relay: the broker refused some events; they wait and are retried",
			"confirmed", len(confirmed), "refused", len(failed), "error", pubErr)
	}
	if len(unanswered) > 0 {
		// Left as they were, due at once: the broker said nothing against
		// them, but the link that lost their answers needs the back-off.
		r.failed(len(unanswered), pubErr)
		return len(msgs), len(confirmed), fmt.Errorf("publish %d outbox messages: %d unanswered: %w", len(msgs), len(unanswered), pubErr)
	}
	return len(msgs), len(confirmed), nil
}

// settle splits a batch's rows by the outcome of Publish: all confirmed
// when it returned nil; otherwise, when it says message by message
// (eventbus.PublishError), the confirmed rows, the rows the broker refused
// (unroutable, nacked) and the rows it left unanswered. known is false
// when Publish said nothing of any message, or that none was either
// confirmed or refused (the link went down, the confirms timed out): the
// batch is then retried whole.
func settle(seqs []int64, err error) (confirmed, refused, unanswered []int64, known bool) {
	if err == nil {
		return seqs, nil, nil, true
	}
	var pe *eventbus.PublishError
	if !errors.As(err, &pe) || len(pe.Confirmed) != len(seqs) || len(pe.Refused) != len(seqs) {
		return nil, nil, nil, false
	}
	for i, seq := range seqs {
		switch {
		case pe.Confirmed[i]:
			confirmed = append(confirmed, seq)
		case pe.Refused[i]:
			refused = append(refused, seq)
		default:
			unanswered = append(unanswered, seq)
		}
	}
	if len(confirmed) == 0 && len(refused) == 0 {
		return nil, nil, nil, false
	}
	return confirmed, refused, unanswered, true
}

func (r *Relay) failed(n int, err error) {
	if r.cfg.Metrics.Failed != nil {
		r.cfg.Metrics.Failed(n, err)
	}
}

// claim queues on b from's claim of up to limit rows of seq at most last.
// Reading b's results decodes them into seqs and msgs.
func claim(b *pgx.Batch, from *rowSource, limit int, last int64, seqs *[]int64, msgs *[]eventbus.Message) {
	b.Queue(from.claim, limit, last).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var (
				seq int64
				m   eventbus.Message
			)
			if err := rows.Scan(&seq, &m.ID, &m.Type, &m.RoutingKey, &m.Source, &m.CorrelationID, &m.Time, &m.TraceParent, &m.TraceState, &m.Body); err != nil {
				return fmt.Errorf("read outbox row: %w", err)
			}
			m.Time = m.Time.UTC()
			*seqs = append(*seqs, seq)
			*msgs = append(*msgs, m)
		}
		return rows.Err()
	})
}

// jitter spreads d by ±20% so relays that failed together do not retry in
// lockstep.
func jitter(d time.Duration) time.Duration {
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}
