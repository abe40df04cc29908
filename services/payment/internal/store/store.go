// Package store keeps the payment service's record of each order's payment
// in PostgreSQL. Functions take the transaction or pool to run on, so the
// caller decides what commits together (payment records, their inbox rows
// and their outbox events).
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/payment/internal/payment"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the payments table.
var Migrations = postgres.Source{Name: "payment", FS: migrationFS}

// Querier runs statements; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// columns are the payments columns the functions read and write, in the
// order paymentFromRow scans them (after order_id).
const columns = `status, currency_code, units, nanos, charge_id, refund_id, reason`

// Get returns the payment of order id, with status payment.StatusNone (and
// no error) when there is none.
func Get(ctx context.Context, q Querier, id string) (payment.Payment, error) {
	p, err := paymentFromRow(q.QueryRow(ctx, `SELECT order_id::text, `+columns+` FROM payments WHERE order_id = $1`, id))
	if errors.Is(err, pgx.ErrNoRows) {
		return payment.Payment{OrderID: id}, nil
	}
	if err != nil {
		return payment.Payment{}, fmt.Errorf("get payment of order %s: %w", id, err)
	}
	p.OrderID = id
	return p, nil
}

// Load takes, for the rest of tx, the lock of each order in ids and
// returns the orders' payments by order id, in one round trip. Every id
// has an entry, with status payment.StatusNone when the service has no
// record of the order. The ids must be in canonical form (lower-case
// UUIDs), as the payments table returns them.
//
// Every transaction handling order events loads the payments of its
// orders so before it writes them (Save), which makes the events of one
// order apply one at a time, in whatever order they arrive, also across
// service instances: an order.created racing its own order.cancelled
// cannot both see no record. Different orders proceed in parallel.
//
// An order's lock is a transaction-level advisory lock keyed by the schema
// and the order id. Load takes the locks in order of id, so transactions
// locking some of the same orders wait for each other in one order and
// cannot deadlock. The read runs after the locks are granted: the
// statements are pipelined, and in READ COMMITTED each takes its snapshot
// when it starts, so it sees everything committed by the transactions that
// held the locks before.
func Load(ctx context.Context, tx pgx.Tx, ids []string) (map[string]payment.Payment, error) {
	ids = slices.Compact(slices.Sorted(slices.Values(ids)))
	b := &pgx.Batch{}
	// The subquery's ORDER BY keeps it from being flattened, so the locks
	// are taken in its order.
	b.Queue(`
		SELECT pg_advisory_xact_lock(hashtextextended('ordermesh.payment.order/' || current_schema() || '/' || id, 0))
		FROM (SELECT id FROM unnest($1::text[]) AS o(id) ORDER BY id COLLATE "C") AS o`, ids)
	var found []payment.Payment
	b.Queue(`SELECT order_id::text, `+columns+` FROM payments WHERE order_id = ANY($1::text[]::uuid[])`, ids).
		Query(func(rows pgx.Rows) error {
			var err error
			found, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (payment.Payment, error) {
				return paymentFromRow(row)
			})
			return err
		})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("lock and load payments of %d orders: %w", len(ids), err)
	}
	out := make(map[string]payment.Payment, len(ids))
	for _, id := range ids {
		out[id] = payment.Payment{OrderID: id}
	}
	for _, p := range found {
		out[p.OrderID] = p
	}
	return out, nil
}

// Save writes ps, the new payments of orders whose payments Load loaded
// and locked in tx, at most one per order, in one statement: a payment the
// service had no record of is inserted, a recorded one updated. The only
// moves of a recorded payment are refunds: of a charged one, or of a
// blocked one whose order was charged after all (an attempt that went
// unanswered before the order ended). Save updates those only, and
// returns an error if any payment of ps is none of them; tx must not
// commit then.
func Save(ctx context.Context, tx pgx.Tx, ps []payment.Payment) error {
	if len(ps) == 0 {
		return nil
	}
	n := len(ps)
	ids, statuses, currencies := make([]string, n), make([]string, n), make([]string, n)
	units, nanos := make([]int64, n), make([]int32, n)
	chargeIDs, refundIDs, reasons := make([]string, n), make([]string, n), make([]string, n)
	for i, p := range ps {
		ids[i], statuses[i] = p.OrderID, p.Status.String()
		currencies[i], units[i], nanos[i] = p.Amount.CurrencyCode, p.Amount.Units, p.Amount.Nanos
		chargeIDs[i], refundIDs[i], reasons[i] = p.ChargeID, p.RefundID, p.Reason
	}
	tag, err := tx.Exec(ctx, `
		INSERT INTO payments (order_id, `+columns+`)
		SELECT * FROM unnest($1::text[]::uuid[], $2::text[], $3::text[], $4::bigint[], $5::integer[], $6::text[], $7::text[], $8::text[])
		ON CONFLICT (order_id) DO UPDATE SET
			status = excluded.status, currency_code = excluded.currency_code, units = excluded.units,
			nanos = excluded.nanos, charge_id = excluded.charge_id, refund_id = excluded.refund_id,
			reason = excluded.reason, update_time = now()
		WHERE payments.status = 'CHARGED' OR (payments.status = 'BLOCKED' AND excluded.status = 'REFUNDED')`,
		ids, statuses, currencies, units, nanos, chargeIDs, refundIDs, reasons)
	if err != nil {
		return fmt.Errorf("save payments of %d orders: %w", n, err)
	}
	if got := tag.RowsAffected(); got != int64(n) {
		return fmt.Errorf("save payments of %d orders: wrote %d: a recorded payment that is not charged cannot change (but a blocked one to refunded)", n, got)
	}
	return nil
}

// paymentFromRow scans a row of order_id and columns.
func paymentFromRow(row pgx.Row) (payment.Payment, error) {
	var p payment.Payment
	var status string
	err := row.Scan(&p.OrderID, &status, &p.Amount.CurrencyCode, &p.Amount.Units, &p.Amount.Nanos, &p.ChargeID, &p.RefundID, &p.Reason)
	if err != nil {
		return payment.Payment{}, err
	}
	if p.Status, err = payment.ParseStatus(status); err != nil {
		return payment.Payment{}, err
	}
	return p, nil
}
