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

// LockLevels locks the stock rows of the products ids until tx ends and
// returns their levels by product id; products never stocked are missing
// from the result. Rows are locked in product id order, whatever the order
// of ids, so transactions locking overlapping products cannot deadlock.
func LockLevels(ctx context.Context, tx pgx.Tx, ids []string) (map[string]stock.Level, error) {
	// LockRows runs above the sort in the plan, so rows are locked in the
	// ORDER BY order.
	rows, err := tx.Query(ctx, `
		SELECT product_id, available, reserved FROM stock
		WHERE product_id = ANY($1)
		ORDER BY product_id COLLATE "C"
		FOR UPDATE`, ids)
	if err != nil {
		return nil, fmt.Errorf("lock stock: %w", err)
	}
	levels, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stock.Level, error) {
		var l stock.Level
		err := row.Scan(&l.ProductID, &l.Available, &l.Reserved)
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("lock stock: %w", err)
	}
	out := make(map[string]stock.Level, len(levels))
	for _, l := range levels {
		out[l.ProductID] = l
	}
	return out, nil
}

// Adjust applies e to the stock of every line, in tx. It locks the rows
// first (see LockLevels), so it may be called with or without them locked.
// Every product must have been stocked. A change that would make a level
// negative fails (the table's CHECKs) and leaves tx unusable: callers check
// levels under lock first.
func Adjust(ctx context.Context, tx pgx.Tx, lines []stock.Line, e stock.Effect) error {
	if e == stock.EffectNone || len(lines) == 0 {
		return nil
	}
	ids := stock.ProductIDs(lines)
	levels, err := LockLevels(ctx, tx, ids)
	if err != nil {
		return fmt.Errorf("%s stock: %w", e, err)
	}
	avail := make([]int64, len(lines))
	resv := make([]int64, len(lines))
	for i, l := range lines {
		if _, ok := levels[l.ProductID]; !ok {
			return fmt.Errorf("%s stock: %w: %s", e, stock.ErrNotFound, l.ProductID)
		}
		avail[i], resv[i] = e.Deltas(l.Quantity)
	}
	tag, err := tx.Exec(ctx, `
		UPDATE stock s SET available = s.available + d.available, reserved = s.reserved + d.reserved, update_time = now()
		FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS d(product_id, available, reserved)
		WHERE s.product_id = d.product_id`, ids, avail, resv)
	if err != nil {
		return fmt.Errorf("%s stock: %w", e, err)
	}
	if int(tag.RowsAffected()) != len(lines) {
		return fmt.Errorf("%s stock: updated %d products, want %d (repeated product in lines?)", e, tag.RowsAffected(), len(lines))
	}
	return nil
}

// LockOrder takes a lock on order id that tx holds until it ends. Every
// handler of an order event takes it before it reads the order's
// reservation, so events of one order are handled one at a time — also an
// order.created racing its own order.cancelled — while different orders
// proceed in parallel. It is a transaction-level advisory lock keyed by the
// schema and the order id; take it before any stock row lock, always.
func LockOrder(ctx context.Context, tx pgx.Tx, id string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('ordermesh.inventory.order/' || current_schema() || '/' || $1, 0))`, id); err != nil {
		return fmt.Errorf("lock order %s: %w", id, err)
	}
	return nil
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

// InsertReservation records r, a reservation the service has no record
// of, with its lines.
func InsertReservation(ctx context.Context, tx pgx.Tx, r stock.Reservation) error {
	if _, err := tx.Exec(ctx, `INSERT INTO reservations (order_id, status, reason) VALUES ($1, $2, $3)`,
		r.OrderID, r.Status.String(), r.Reason); err != nil {
		return fmt.Errorf("insert reservation of order %s: %w", r.OrderID, err)
	}
	if len(r.Lines) == 0 {
		return nil
	}
	qty := make([]int64, len(r.Lines))
	for i, l := range r.Lines {
		qty[i] = l.Quantity
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO reservation_lines (order_id, product_id, quantity)
		SELECT $1, product_id, quantity FROM unnest($2::text[], $3::bigint[]) AS l(product_id, quantity)`,
		r.OrderID, stock.ProductIDs(r.Lines), qty); err != nil {
		return fmt.Errorf("insert reservation lines of order %s: %w", r.OrderID, err)
	}
	return nil
}

// UpdateStatus records that the reservation of order id is now in status
// s, or returns an error wrapping stock.ErrNoReservation when it has none.
func UpdateStatus(ctx context.Context, q Querier, id string, s stock.Status) error {
	tag, err := q.Exec(ctx, `UPDATE reservations SET status = $2, update_time = now() WHERE order_id = $1`, id, s.String())
	if err != nil {
		return fmt.Errorf("update reservation of order %s: %w", id, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("update reservation of order %s: %w", id, stock.ErrNoReservation)
	}
	return nil
}
