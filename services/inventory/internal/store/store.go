// Package store keeps stock levels and order reservations in PostgreSQL. It
// translates rows to and from the stock domain and driver errors into the
// domain's sentinel errors. Functions take the transaction or pool to run
// on, so the caller decides what commits together (a reservation, its
// stock changes, its inbox row and its outbox events).
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the stock and reservation tables.
var Migrations = postgres.Source{Name: "inventory", FS: migrationFS}

// Querier runs statements; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// SetStock sets the available units of product id, creating the product
// if it is new; its reserved units are not touched. It returns the
// product's stock after the change.
func SetStock(ctx context.Context, q Querier, id string, available int64) (stock.Level, error) {
	var l stock.Level
	err := q.QueryRow(ctx, `
		INSERT INTO stock (product_id, available) VALUES ($1, $2)
		ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, update_time = now()
		RETURNING product_id, available, reserved`, id, available).Scan(&l.ProductID, &l.Available, &l.Reserved)
	if err != nil {
		return stock.Level{}, fmt.Errorf("set stock of %s: %w", id, err)
	}
	return l, nil
}

// SetStockIf is SetStock on the condition that the product's available
// units are expected (0 for a product not stocked yet); otherwise it
// changes nothing and returns an error wrapping stock.ErrLevelChanged.
func SetStockIf(ctx context.Context, q Querier, id string, available, expected int64) (stock.Level, error) {
	// Expecting 0 also takes a product not stocked yet (which has 0);
	// expecting more, the product must exist.
	sql := `
		UPDATE stock SET available = $2, update_time = now()
		WHERE product_id = $1 AND available = $3
		RETURNING product_id, available, reserved`
	if expected == 0 {
		sql = `
		INSERT INTO stock (product_id, available) VALUES ($1, $2)
		ON CONFLICT (product_id) DO UPDATE SET available = EXCLUDED.available, update_time = now()
			WHERE stock.available = $3
		RETURNING product_id, available, reserved`
	}
	var l stock.Level
	err := q.QueryRow(ctx, sql, id, available, expected).Scan(&l.ProductID, &l.Available, &l.Reserved)
	if errors.Is(err, pgx.ErrNoRows) {
		return stock.Level{}, fmt.Errorf("set stock of %s: %w: available is not %d", id, stock.ErrLevelChanged, expected)
	}
	if err != nil {
		return stock.Level{}, fmt.Errorf("set stock of %s: %w", id, err)
	}
	return l, nil
}

// GetStock returns the stock of product id, or an error wrapping
// stock.ErrNotFound for a product never stocked.
func GetStock(ctx context.Context, q Querier, id string) (stock.Level, error) {
	var l stock.Level
	err := q.QueryRow(ctx, `SELECT product_id, available, reserved FROM stock WHERE product_id = $1`, id).
		Scan(&l.ProductID, &l.Available, &l.Reserved)
	if errors.Is(err, pgx.ErrNoRows) {
		return stock.Level{}, fmt.Errorf("get stock of %s: %w", id, stock.ErrNotFound)
	}
	if err != nil {
		return stock.Level{}, fmt.Errorf("get stock of %s: %w", id, err)
	}
	return l, nil
}

// LoadLedger takes, for the rest of tx, the locks of orderIDs and of the
// stock of productIDs and of the orders' reserved products, and returns a
// ledger of those orders' reservations and those products' stock, in one
// round trip. Every transaction handling order events loads its ledger so
// before it writes (SaveLedger), which makes the events of one order apply
// one at a time, also across service instances, and keeps concurrent
// reservations of the same products from overselling.
//
// The locks are taken in one order, so transactions cannot deadlock over
// them: first each order's (a transaction-level advisory lock keyed by the
// schema and the order id), by order id, then the stock rows, by product
// id. The reads run after the order locks are granted: the statements are
// pipelined, and in READ COMMITTED each takes its snapshot when it starts,
// so they see everything committed by the transactions that held the locks
// before.
func LoadLedger(ctx context.Context, tx pgx.Tx, orderIDs, productIDs []string) (*stock.Ledger, error) {
	orderIDs = slices.Compact(slices.Sorted(slices.Values(orderIDs)))
	b := &pgx.Batch{}
	// The subquery's ORDER BY keeps it from being flattened, so the locks
	// are taken in its order.
	b.Queue(`
		SELECT pg_advisory_xact_lock(hashtextextended('ordermesh.inventory.order/' || current_schema() || '/' || id, 0))
		FROM (SELECT id FROM unnest($1::text[]) AS o(id) ORDER BY id COLLATE "C") AS o`, orderIDs)
	var reservations []stock.Reservation
	b.Queue(`SELECT order_id::text, status, reason FROM reservations WHERE order_id = ANY($1::text[]::uuid[])`, orderIDs).
		Query(func(rows pgx.Rows) error {
			var err error
			reservations, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (stock.Reservation, error) {
				var r stock.Reservation
				var status string
				if err := row.Scan(&r.OrderID, &status, &r.Reason); err != nil {
					return r, err
				}
				r.Status, err = stock.ParseStatus(status)
				return r, err
			})
			return err
		})
	lines := map[string][]stock.Line{}
	b.Queue(`
		SELECT order_id::text, product_id, quantity FROM reservation_lines
		WHERE order_id = ANY($1::text[]::uuid[])
		ORDER BY order_id, product_id COLLATE "C"`, orderIDs).
		Query(func(rows pgx.Rows) error {
			var order string
			var l stock.Line
			_, err := pgx.ForEachRow(rows, []any{&order, &l.ProductID, &l.Quantity}, func() error {
				lines[order] = append(lines[order], l)
				return nil
			})
			return err
		})
	var levels []stock.Level
	// LockRows runs above the sort in the plan, so rows are locked in the
	// ORDER BY order.
	b.Queue(`
		SELECT product_id, available, reserved FROM stock
		WHERE product_id = ANY($1::text[] || ARRAY(
			SELECT product_id FROM reservation_lines WHERE order_id = ANY($2::text[]::uuid[])))
		ORDER BY product_id COLLATE "C"
		FOR UPDATE`, productIDs, orderIDs).
		Query(func(rows pgx.Rows) error {
			var err error
			levels, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (stock.Level, error) {
				var l stock.Level
				err := row.Scan(&l.ProductID, &l.Available, &l.Reserved)
				return l, err
			})
			return err
		})
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("load %d orders and their stock: %w", len(orderIDs), err)
	}
	for i := range reservations {
		reservations[i].Lines = lines[reservations[i].OrderID]
	}
	return stock.NewLedger(levels, reservations), nil
}

// GetReservation returns the reservation of order id, with status
// stock.StatusNone (and no error) when there is none.
func GetReservation(ctx context.Context, q Querier, id string) (stock.Reservation, error) {
	r := stock.Reservation{OrderID: id}
	var status string
	err := q.QueryRow(ctx, `SELECT status, reason FROM reservations WHERE order_id = $1`, id).Scan(&status, &r.Reason)
	if errors.Is(err, pgx.ErrNoRows) {
		return r, nil
	}
	if err != nil {
		return stock.Reservation{}, fmt.Errorf("get reservation of order %s: %w", id, err)
	}
	if r.Status, err = stock.ParseStatus(status); err != nil {
		return stock.Reservation{}, fmt.Errorf("get reservation of order %s: %w", id, err)
	}
	rows, err := q.Query(ctx, `SELECT product_id, quantity FROM reservation_lines WHERE order_id = $1 ORDER BY product_id COLLATE "C"`, id)
	if err != nil {
		return stock.Reservation{}, fmt.Errorf("get reservation lines of order %s: %w", id, err)
	}
	r.Lines, err = pgx.CollectRows(rows, func(row pgx.CollectableRow) (stock.Line, error) {
		var l stock.Line
		err := row.Scan(&l.ProductID, &l.Quantity)
		return l, err
	})
	if err != nil {
		return stock.Reservation{}, fmt.Errorf("get reservation lines of order %s: %w", id, err)
	}
	return r, nil
}

// SaveLedger writes c, the changes of a ledger that LoadLedger loaded in
// tx, in one round trip: the stock levels, the new reservations with their
// lines, and the new statuses of the others.
func SaveLedger(ctx context.Context, tx pgx.Tx, c stock.Changes) error {
	b := &pgx.Batch{}
	if len(c.Levels) > 0 {
		ids := make([]string, len(c.Levels))
		avail := make([]int64, len(c.Levels))
		resv := make([]int64, len(c.Levels))
		for i, l := range c.Levels {
			ids[i], avail[i], resv[i] = l.ProductID, l.Available, l.Reserved
		}
		// The redundant = ANY keeps the plan on the index: joined with
		// unnest alone, a table planned while small is read whole by a
		// hash join, and the cached plan stays so as the table grows
		// (until the table is analyzed again).
		b.Queue(`
			UPDATE stock s SET available = s.available + d.available, reserved = s.reserved + d.reserved, update_time = now()
			FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(product_id, available, reserved)
			WHERE s.product_id = d.product_id AND s.product_id = ANY($1::text[])`, ids, avail, resv).
			Exec(func(tag pgconn.CommandTag) error {
				if n := tag.RowsAffected(); n != int64(len(ids)) {
					return fmt.Errorf("update stock: updated %d products, want %d: %w", n, len(ids), stock.ErrNotFound)
				}
				return nil
			})
	}
	if len(c.Created) > 0 {
		var ids, statuses, reasons, lineOrders, lineProducts []string
		var lineQty []int64
		for _, r := range c.Created {
			ids, statuses, reasons = append(ids, r.OrderID), append(statuses, r.Status.String()), append(reasons, r.Reason)
			for _, l := range r.Lines {
				lineOrders, lineProducts, lineQty = append(lineOrders, r.OrderID), append(lineProducts, l.ProductID), append(lineQty, l.Quantity)
			}
		}
		b.Queue(`
			INSERT INTO reservations (order_id, status, reason)
			SELECT * FROM unnest($1::text[]::uuid[], $2::text[], $3::text[])`, ids, statuses, reasons)
		if len(lineOrders) > 0 {
			b.Queue(`
				INSERT INTO reservation_lines (order_id, product_id, quantity)
				SELECT * FROM unnest($1::text[]::uuid[], $2::text[], $3::bigint[])`, lineOrders, lineProducts, lineQty)
		}
	}
	if len(c.Updated) > 0 {
		ids := make([]string, len(c.Updated))
		statuses := make([]string, len(c.Updated))
		for i, r := range c.Updated {
			ids[i], statuses[i] = r.OrderID, r.Status.String()
		}
		// = ANY: as for stock above.
		b.Queue(`
			UPDATE reservations r SET status = u.status, update_time = now()
			FROM unnest($1::text[]::uuid[], $2::text[]) AS u(order_id, status)
			WHERE r.order_id = u.order_id AND r.order_id = ANY($1::text[]::uuid[])`, ids, statuses).
			Exec(func(tag pgconn.CommandTag) error {
				if n := tag.RowsAffected(); n != int64(len(ids)) {
					return fmt.Errorf("update reservations: updated %d, want %d: %w", n, len(ids), stock.ErrNoReservation)
				}
				return nil
			})
	}
	if b.Len() == 0 {
		return nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("save %d stock levels and %d reservations: %w", len(c.Levels), len(c.Created)+len(c.Updated), err)
	}
	return nil
}
