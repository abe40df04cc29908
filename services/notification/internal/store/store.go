// Package store keeps the notification service's record of the emails it
// has sent, in PostgreSQL. Functions take the transaction or pool to run
// on, so the caller decides what commits together (a notification row,
// the outbox row announcing the email and the inbox row of the event that
// caused it).
package store

import (
	"context"
	"embed"
	"fmt"
	"slices"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the notification tables.
var Migrations = postgres.Source{Name: "notification", FS: migrationFS}

// Querier runs statements; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// Notification is one email sent for an order.
type Notification struct {
	OrderID string
	// Kind is one of "received", "confirmed", "rejected", "cancelled".
	Kind      string
	Recipient string
	MessageID string
	// EventID is the id of the event that caused the email.
	EventID string
	// SupersededBy, if set, is a kind whose notification, once recorded
	// for the order, makes this one moot: Claim does not claim it then.
	SupersededBy string
	// SentAt is set by the database; Claim ignores it.
	SentAt time.Time
}

// Claim records ns in tx, each unless a notification of the same order
// and kind is recorded already, or one of the order and the kind it is
// SupersededBy, and reports for each whether it recorded it (claimed[i]
// for ns[i]). ns must not hold two notifications of the same order and
// kind. It takes two statements, in one round trip, whatever ns holds.
//
// If another transaction has claimed one of the same orders and kinds and
// not yet ended, Claim waits for it: that notification is then not
// claimed if that transaction committed, and claimed if it rolled back.
// So at most one transaction at a time holds a claim, and at most one
// ever commits it. Claim first takes a lock (a transaction-level advisory
// lock keyed by the schema, the order id and the kind) on each
// notification's order and kind, and on its order and the kind it is
// SupersededBy, so a claim also waits for a transaction claiming the
// notification that supersedes it: a cancellation another instance is
// sending stops a confirmation's claim once that transaction commits,
// instead of going unseen while it runs. Notifications of other kinds of
// the same order do not wait for each other. Claim takes the locks in
// (order id, kind) order and inserts in that order too, so two
// transactions claiming some of the same notifications wait for each
// other in one order and cannot deadlock.
//
// If then is not nil, it queues statements on the batch that carries the
// claims, and they run right after them, in the same round trip: what the
// claims entitle the caller to write (the outbox rows announcing the
// emails) costs no round trip of its own. Unlike the claims, they cannot
// know which notifications were claimed: the caller undoes what they
// wrote for those that were not (see Release). An error from then is
// returned before anything is sent; the queued statements' own errors are
// returned with the claims'.
func Claim(ctx context.Context, tx pgx.Tx, ns []Notification, then func(*pgx.Batch) error) (claimed []bool, err error) {
	if len(ns) == 0 {
		return nil, nil
	}
	cols := struct{ order, kind, recipient, messageID, eventID, supersededBy []string }{}
	for _, n := range ns {
		cols.order = append(cols.order, n.OrderID)
		cols.kind = append(cols.kind, n.Kind)
		cols.recipient = append(cols.recipient, n.Recipient)
		cols.messageID = append(cols.messageID, n.MessageID)
		cols.eventID = append(cols.eventID, n.EventID)
		cols.supersededBy = append(cols.supersededBy, n.SupersededBy)
	}
	b := &pgx.Batch{}
	// The subquery's ORDER BY keeps it from being flattened, so the locks
	// are taken in its order.
	b.Queue(`
		SELECT pg_advisory_xact_lock(hashtextextended('ordermesh.notification/' || current_schema() || '/' || id, 0))
		FROM (SELECT id FROM unnest($1::text[]) AS o(id) ORDER BY id COLLATE "C") AS o`,
		lockKeys(ns))
	b.Queue(`
		INSERT INTO notifications (order_id, kind, recipient, message_id, event_id)
		SELECT order_id, kind, recipient, message_id, event_id
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
			AS n(order_id, kind, recipient, message_id, event_id, superseded_by)
		WHERE superseded_by = '' OR NOT EXISTS (
			SELECT FROM notifications s WHERE s.order_id = n.order_id AND s.kind = n.superseded_by)
		ORDER BY order_id COLLATE "C", kind COLLATE "C"
		ON CONFLICT (order_id, kind) DO NOTHING
		RETURNING order_id, kind`,
		cols.order, cols.kind, cols.recipient, cols.messageID, cols.eventID, cols.supersededBy)
	if then != nil {
		if err := then(b); err != nil {
			return nil, fmt.Errorf("claim %d notifications: %w", len(ns), err)
		}
	}
	won, err := sendClaims(ctx, tx, b)
	if err != nil {
		return nil, fmt.Errorf("claim %d notifications: %w", len(ns), err)
	}
	claimed = make([]bool, len(ns))
	for i, n := range ns {
		claimed[i] = won[key{n.OrderID, n.Kind}]
	}
	return claimed, nil
}

// lockKeys returns the keys Claim locks for ns, sorted: "order/kind" for
// each notification, and "order/superseding kind" for those that have one.
func lockKeys(ns []Notification) []string {
	keys := make([]string, 0, 2*len(ns))
	for _, n := range ns {
		keys = append(keys, n.OrderID+"/"+n.Kind)
		if n.SupersededBy != "" {
			keys = append(keys, n.OrderID+"/"+n.SupersededBy)
		}
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// key is a notification's primary key.
type key struct{ orderID, kind string }

// sendClaims sends b, the orders' locks, the claims and what follows
// them, and returns the keys of the notifications the claims inserted.
func sendClaims(ctx context.Context, tx pgx.Tx, b *pgx.Batch) (won map[key]bool, err error) {
	br := tx.SendBatch(ctx, b)
	defer func() {
		// Close reads the results not read yet and returns their first
		// error: that of the statements queued after the claims.
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := br.Exec(); err != nil { // the orders' locks
		return nil, err
	}
	rows, err := br.Query()
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	won = map[key]bool{}
	var k key
	_, err = pgx.ForEachRow(rows, []any{&k.orderID, &k.kind}, func() error {
		won[k] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	return won, nil
}

// Release undoes claims made in tx and what was written with them: it
// deletes the notifications ns (by order id and kind) and the outbox rows
// whose ids are outboxIDs, in one statement. It is how a transaction
// gives up the claims of emails it could not send, and drops the outbox
// rows it wrote with claims it did not win, so that they leave nothing
// behind.
func Release(ctx context.Context, tx pgx.Tx, ns []Notification, outboxIDs []string) error {
	if len(ns) == 0 && len(outboxIDs) == 0 {
		return nil
	}
	orders, kinds := make([]string, len(ns)), make([]string, len(ns))
	for i, n := range ns {
		orders[i], kinds[i] = n.OrderID, n.Kind
	}
	// The outbox has no index on id; the rows to drop are rare (a failed
	// send, a notice already sent), and the outbox is short unless the
	// broker is away. The statement is planned each time it runs, not
	// prepared: it is rare, and a plan cached while the notifications were
	// few reads the whole table (it grows with every email) once they are
	// many.
	_, err := tx.Exec(ctx, `
		WITH dropped AS (DELETE FROM outbox WHERE id = ANY($3::text[]))
		DELETE FROM notifications n
		USING unnest($1::text[], $2::text[]) AS r(order_id, kind)
		WHERE n.order_id = r.order_id AND n.kind = r.kind`,
		pgx.QueryExecModeExec, orders, kinds, outboxIDs)
	if err != nil {
		return fmt.Errorf("release %d notifications and %d outbox rows: %w", len(ns), len(outboxIDs), err)
	}
	return nil
}

// List returns the notifications recorded for order orderID, oldest first.
func List(ctx context.Context, q Querier, orderID string) ([]Notification, error) {
	rows, err := q.Query(ctx, `
		SELECT order_id, kind, recipient, message_id, event_id, sent_at
		FROM notifications WHERE order_id = $1 ORDER BY sent_at, kind`, orderID)
	if err != nil {
		return nil, fmt.Errorf("list notifications of order %s: %w", orderID, err)
	}
	ns, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Notification, error) {
		var n Notification
		err := row.Scan(&n.OrderID, &n.Kind, &n.Recipient, &n.MessageID, &n.EventID, &n.SentAt)
		n.SentAt = n.SentAt.UTC()
		return n, err
	})
	if err != nil {
		return nil, fmt.Errorf("list notifications of order %s: %w", orderID, err)
	}
	return ns, nil
}
