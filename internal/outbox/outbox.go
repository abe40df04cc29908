// Package outbox implements the transactional outbox: events are written in
// the same PostgreSQL transaction as the state change that caused them (Add),
// and a Relay publishes them to the bus after commit, deleting each row only
// once the broker has confirmed it.
//
// Publishing is therefore at-least-once: nothing committed is lost, nothing
// rolled back is published, and a crash between confirm and delete publishes
// a row again, which consumers absorb with their inbox.
//
// The outbox table lives in the service's own schema and is reached through
// the connection's search_path (see postgres.Open). Services create it by
// passing Migrations to postgres.Migrate with their own sources.
package outbox

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the outbox table. Pass it to postgres.Migrate together
// with the service's own sources.
var Migrations = postgres.Source{Name: "outbox", FS: migrationFS}

// Add writes msgs to the outbox in tx, the caller's transaction; they are
// published only if and after tx commits. It takes a pgx.Tx, never a pool,
// so an event cannot be written outside the transaction of the state change
// that caused it. Every message needs an id, a type, a routing key and a
// source; use eventbus.NewMessage, or AddEvents, to build them.
func Add(ctx context.Context, tx pgx.Tx, msgs ...eventbus.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	sql, args, err := insert(msgs)
	if err != nil {
		return err
	}
	if _, err := tx.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("insert outbox messages: %w", err)
	}
	return nil
}

// Queue queues the insert of msgs on b, to be sent with other statements
// in one round trip (tx.SendBatch); like Add, the batch must be sent on
// the transaction of the state change the messages announce. An error
// is returned for an invalid message; the insert's own error comes with
// the batch's results.
func Queue(b *pgx.Batch, msgs ...eventbus.Message) error {
	if len(msgs) == 0 {
		return nil
	}
	sql, args, err := insert(msgs)
	if err != nil {
		return err
	}
	b.Queue(sql, args...)
	return nil
}

// insert returns the statement writing msgs: one statement for them all,
// so one round trip and one notification.
func insert(msgs []eventbus.Message) (string, []any, error) {
	cols := struct {
		id, typ, key, source, corr, parent, state []string
		at                                        []time.Time
		body                                      [][]byte
	}{}
	for i, m := range msgs {
		if err := validate(m); err != nil {
			return "", nil, fmt.Errorf("add outbox message %d: %w", i, err)
		}
		at := m.Time
		if at.IsZero() {
			at = time.Now()
		}
		body := m.Body
		if body == nil {
			// An event with every field at its default encodes to no bytes.
			body = []byte{}
		}
		cols.id = append(cols.id, m.ID)
		cols.typ = append(cols.typ, m.Type)
		cols.key = append(cols.key, m.RoutingKey)
		cols.source = append(cols.source, m.Source)
		cols.corr = append(cols.corr, m.CorrelationID)
		cols.parent = append(cols.parent, m.TraceParent)
		cols.state = append(cols.state, m.TraceState)
		cols.at = append(cols.at, at)
		cols.body = append(cols.body, body)
	}
	// WITH ORDINALITY keeps seq in the order the caller gave.
	return `
		INSERT INTO outbox (id, type, routing_key, source, correlation_id, trace_parent, trace_state, event_time, body)
		SELECT id, type, routing_key, source, correlation_id, trace_parent, trace_state, event_time, body
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::timestamptz[], $9::bytea[])
			WITH ORDINALITY AS m(id, type, routing_key, source, correlation_id, trace_parent, trace_state, event_time, body, n)
		ORDER BY n`,
		[]any{cols.id, cols.typ, cols.key, cols.source, cols.corr, cols.parent, cols.state, cols.at, cols.body}, nil
}

// AddEvents encodes events with eventbus.NewMessage (new ids, the current
// time, source as the producing service, correlationID as the order id)
// and writes them to the outbox in tx like Add.
func AddEvents(ctx context.Context, tx pgx.Tx, source, correlationID string, events ...proto.Message) error {
	msgs, err := Messages(source, correlationID, events...)
	if err != nil {
		return err
	}
	return Add(ctx, tx, msgs...)
}

// Messages encodes events with eventbus.NewMessage.
func Messages(source, correlationID string, events ...proto.Message) ([]eventbus.Message, error) {
	msgs := make([]eventbus.Message, 0, len(events))
	for _, ev := range events {
		if ev == nil {
			return nil, errors.New("encode outbox event: nil event")
		}
		m, err := eventbus.NewMessage(ev, source, correlationID)
		if err != nil {
			return nil, fmt.Errorf("encode outbox event: %w", err)
		}
		msgs = append(msgs, m)
	}
	return msgs, nil
}

func validate(m eventbus.Message) error {
	switch {
	case m.ID == "":
		return errors.New("missing id")
	case m.Type == "":
		return errors.New("missing type")
	case m.RoutingKey == "":
		return errors.New("missing routing key")
	case m.Source == "":
		return errors.New("missing source")
	}
	return nil
}

// Querier runs a query; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Lister runs a query; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Lister interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// Pending returns up to limit messages waiting in the outbox reached by
// db's search_path, deferred ones included, oldest first, without claiming
// them: for inspection and tests.
func Pending(ctx context.Context, db Lister, limit int) ([]eventbus.Message, error) {
	rows, err := db.Query(ctx, `
		SELECT id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body FROM (
			SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body FROM outbox
			UNION ALL
			SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body FROM outbox_deferred
		) AS pending ORDER BY seq LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	msgs, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (eventbus.Message, error) {
		var m eventbus.Message
		err := row.Scan(&m.ID, &m.Type, &m.RoutingKey, &m.Source, &m.CorrelationID, &m.Time, &m.TraceParent, &m.TraceState, &m.Body)
		m.Time = m.Time.UTC()
		return m, err
	})
	if err != nil {
		return nil, fmt.Errorf("list outbox: %w", err)
	}
	return msgs, nil
}

// Stats describes the outbox backlog.
type Stats struct {
	// Pending is the number of rows not yet confirmed by the broker,
	// including rows a relay is publishing right now and rows the broker
	// refused, waiting for their next attempt. It is exact up to
	// StatsExactUpTo rows in each table and an estimate beyond (see
	// Estimated).
	Pending int64
	// Estimated reports that Pending is an estimate: the outbox's span of
	// sequence numbers (an upper bound), and for refused rows the higher
	// of the statistics' live rows (reset by a crash or failover) and the
	// planner's count (-1 until the table was analyzed), when that is
	// higher than StatsExactUpTo.
	Estimated bool
	// OldestAge is how long the oldest pending row has waited since its
	// transaction wrote it; zero when nothing is pending. It is the relay's
	// lag.
	OldestAge time.Duration
}

// StatsExactUpTo is how many rows ReadStats counts in each table before
// it estimates instead: counting is a scan of every row, which a backlog
// of millions (a long broker outage) would make take seconds at every
// scrape, just when the database has the most to do.
const StatsExactUpTo = 100_000

// ReadStats returns the backlog of the outbox reached by db's search_path.
// It is cheap enough to back a gauge scraped every few seconds, however
// large the backlog.
func ReadStats(ctx context.Context, db Querier) (Stats, error) {
	return readStats(ctx, db, StatsExactUpTo)
}

// readStats is ReadStats counting up to exactUpTo rows in each table.
func readStats(ctx context.Context, db Querier, exactUpTo int64) (Stats, error) {
	var s Stats
	var age *float64
	var outboxRows, span, deferredRows int64
	var deferredLive int64
	// created_at is the inserting transaction's start time: the age is an
	// upper bound on the time since commit. The outbox's oldest row is
	// read through its primary key (seq follows the inserts' order, near
	// enough for an age), not found among all of its rows, and so is its
	// span of sequence numbers; likewise the oldest refused row.
	err := db.QueryRow(ctx, `
		SELECT (SELECT count(*) FROM (SELECT 1 FROM outbox LIMIT $1) AS o),
			coalesce((SELECT max(seq) - min(seq) + 1 FROM outbox), 0),
			(SELECT count(*) FROM (SELECT 1 FROM outbox_deferred LIMIT $1) AS d),
			greatest(
				coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'outbox_deferred'::regclass), 0),
				(SELECT reltuples::bigint FROM pg_class WHERE oid = 'outbox_deferred'::regclass)),
			extract(epoch FROM now() - least(
				(SELECT created_at FROM outbox ORDER BY seq LIMIT 1),
				(SELECT created_at FROM outbox_deferred ORDER BY seq LIMIT 1)))::float8`, exactUpTo+1).
		Scan(&outboxRows, &span, &deferredRows, &deferredLive, &age)
	if err != nil {
		return Stats{}, fmt.Errorf("read outbox stats: %w", err)
	}
	if outboxRows > exactUpTo {
		// Rows leave about in the order they came, so the span is close.
		outboxRows, s.Estimated = max(span, outboxRows), true
	}
	if deferredRows > exactUpTo {
		deferredRows, s.Estimated = max(deferredLive, deferredRows), true
	}
	s.Pending = outboxRows + deferredRows
	if age != nil && *age > 0 {
		s.OldestAge = time.Duration(*age * float64(time.Second))
	}
	return s, nil
}

// OldestWaiting returns how long the oldest event not yet published has
// waited (0 when there is none): how far behind the relay is, or for how
// long the broker has not been taking events. Rows the broker refused
// (outbox_deferred: nacked, or unroutable while no queue is bound) count
// too: their events have not gone out either. It reads a row of each
// table through its primary key; the age is measured from the start of
// the row's transaction, on the database's clock.
func OldestWaiting(ctx context.Context, db Querier) (time.Duration, error) {
	var age *float64
	err := db.QueryRow(ctx, `SELECT extract(epoch FROM now() - least(
		(SELECT created_at FROM outbox ORDER BY seq LIMIT 1),
		(SELECT created_at FROM outbox_deferred ORDER BY seq LIMIT 1)))::float8`).Scan(&age)
	if err != nil {
		return 0, fmt.Errorf("read the outbox's oldest row: %w", err)
	}
	if age == nil || *age <= 0 {
		return 0, nil
	}
	return time.Duration(*age * float64(time.Second)), nil
}

// CountIn counts every row waiting in the outbox of schema, those the
// broker refused (outbox_deferred) included: for harnesses that watch
// several services' schemas on one connection. It scans both tables;
// ReadStats is the cheap read for a service's own metrics.
func CountIn(ctx context.Context, db Querier, schema string) (int64, error) {
	var n int64
	err := db.QueryRow(ctx, "SELECT (SELECT count(*) FROM "+pgx.Identifier{schema, "outbox"}.Sanitize()+
		") + (SELECT count(*) FROM "+pgx.Identifier{schema, "outbox_deferred"}.Sanitize()+")").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("count the outbox of %s: %w", schema, err)
	}
	return n, nil
}

// Empty reports whether the outbox has no pending rows, deferred ones
// included: every committed event has been confirmed by the broker.
func Empty(ctx context.Context, db Querier) (bool, error) {
	var exists bool
	if err := db.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM outbox) OR EXISTS (SELECT 1 FROM outbox_deferred)`).Scan(&exists); err != nil {
		return false, fmt.Errorf("check outbox empty: %w", err)
	}
	return !exists, nil
}
