// Package store keeps the payment service's record of each order's payment
// in PostgreSQL. Functions take the transaction or pool to run on, so the
// caller decides what commits together (a payment record, its inbox row
// and its outbox events).
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/payment/internal/payment"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the payments table.
var Migrations = postgres.Source{Name: "payment", FS: migrationFS}

// Querier runs statements; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// LockOrder takes a lock on order id that tx holds until it ends. Every
// handler of an order event takes it before it reads the order's payment,
// so events of one order are handled one at a time — an order.created
// racing its own order.cancelled cannot both see no record — while
// different orders proceed in parallel. It is a transaction-level advisory
// lock keyed by the schema and the order id.
func LockOrder(ctx context.Context, tx pgx.Tx, id string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('ordermesh.payment.order/' || current_schema() || '/' || $1, 0))`, id); err != nil {
		return fmt.Errorf("lock order %s: %w", id, err)
	}
	return nil
}

// Get returns the payment of order id, with status payment.StatusNone (and
// no error) when there is none.
func Get(ctx context.Context, q Querier, id string) (payment.Payment, error) {
	p := payment.Payment{OrderID: id}
	var status string
	err := q.QueryRow(ctx, `
		SELECT status, currency_code, units, nanos, charge_id, refund_id, reason
		FROM payments WHERE order_id = $1`, id).
		Scan(&status, &p.Amount.CurrencyCode, &p.Amount.Units, &p.Amount.Nanos, &p.ChargeID, &p.RefundID, &p.Reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return p, nil
	}
	if err != nil {
		return payment.Payment{}, fmt.Errorf("get payment of order %s: %w", id, err)
	}
	if p.Status, err = payment.ParseStatus(status); err != nil {
		return payment.Payment{}, fmt.Errorf("get payment of order %s: %w", id, err)
	}
	return p, nil
}

// Insert records p, the payment of an order the service has no record of.
func Insert(ctx context.Context, q Querier, p payment.Payment) error {
	_, err := q.Exec(ctx, `
		INSERT INTO payments (order_id, status, currency_code, units, nanos, charge_id, refund_id, reason)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8)`,
		p.OrderID, p.Status.String(), p.Amount.CurrencyCode, p.Amount.Units, p.Amount.Nanos, p.ChargeID, p.RefundID, p.Reason)
	if err != nil {
		return fmt.Errorf("insert payment of order %s: %w", p.OrderID, err)
	}
	return nil
}

// MarkRefunded records that the charge of order id was refunded with the
// provider's refund refundID.
func MarkRefunded(ctx context.Context, q Querier, id, refundID string) error {
	tag, err := q.Exec(ctx, `
		UPDATE payments SET status = 'REFUNDED', refund_id = $2, update_time = now()
		WHERE order_id = $1 AND status = 'CHARGED'`, id, refundID)
	if err != nil {
		return fmt.Errorf("mark payment of order %s refunded: %w", id, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("mark payment of order %s refunded: no charged payment", id)
	}
	return nil
}
