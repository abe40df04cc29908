// Package store keeps the notification service's record of the emails it
// has sent, in PostgreSQL. Functions take the transaction or pool to run
// on, so the caller decides what commits together (a notification row and
// the inbox row of the event that caused it).
package store

import (
	"context"
	"embed"
	"fmt"
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
	// SentAt is set by the database; Claim ignores it.
	SentAt time.Time
}

// Claim records n in tx unless a notification of the same order and kind
// is recorded already, and reports whether it recorded n. If another
// transaction has claimed the same order and kind and not yet ended, Claim
// waits for it: it then returns false if that transaction committed, and
// claims n if it rolled back. So at most one transaction at a time holds
// the claim, and at most one ever commits it.
//
// If then is not nil, it queues statements on the batch that carries the
// claim, and they run right after it, in the same round trip: what the
// claim entitles the caller to write (the outbox row announcing the
// email) costs no round trip of its own. Their effects are kept only if
// Claim recorded n: they run under a savepoint, rolled back when the
// claim was held already. An error from then is returned before anything
// is sent; the queued statements' own errors are returned with the
// claim's.
func Claim(ctx context.Context, tx pgx.Tx, n Notification, then func(*pgx.Batch) error) (bool, error) {
	const claim = `
		INSERT INTO notifications (order_id, kind, recipient, message_id, event_id)
		VALUES ($1, $2, $3, $4, $5)
		ON CONFLICT (order_id, kind) DO NOTHING`
	args := []any{n.OrderID, n.Kind, n.Recipient, n.MessageID, n.EventID}
	if then == nil {
		tag, err := tx.Exec(ctx, claim, args...)
		if err != nil {
			return false, fmt.Errorf("claim %s notification of order %s: %w", n.Kind, n.OrderID, err)
		}
		return tag.RowsAffected() == 1, nil
	}
	b := &pgx.Batch{}
	b.Queue(`SAVEPOINT claim`)
	b.Queue(claim, args...)
	if err := then(b); err != nil {
		return false, fmt.Errorf("claim %s notification of order %s: %w", n.Kind, n.OrderID, err)
	}
	claimed, err := sendClaim(ctx, tx, b)
	if err != nil {
		return false, fmt.Errorf("claim %s notification of order %s: %w", n.Kind, n.OrderID, err)
	}
	if !claimed {
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT claim`); err != nil {
			return false, fmt.Errorf("claim %s notification of order %s: undo what followed the claim: %w", n.Kind, n.OrderID, err)
		}
	}
	return claimed, nil
}

// sendClaim sends b, a savepoint, the claim and what follows it, and
// reports whether the claim inserted its row.
func sendClaim(ctx context.Context, tx pgx.Tx, b *pgx.Batch) (claimed bool, err error) {
	br := tx.SendBatch(ctx, b)
	defer func() {
		// Close reads the results not read yet and returns their first
		// error: that of the statements queued after the claim.
		if cerr := br.Close(); err == nil {
			err = cerr
		}
	}()
	if _, err := br.Exec(); err != nil {
		return false, err
	}
	tag, err := br.Exec()
	if err != nil {
		return false, err
	}
	return tag.RowsAffected() == 1, nil
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
