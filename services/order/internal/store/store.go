// Package store keeps orders in PostgreSQL. It translates rows to and from
// the order domain and driver errors into the domain's sentinel errors.
// Functions take the transaction or pool to run on, so the caller decides
// what commits together (an order change and its outbox events).
package store

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
)

//go:embed migrations/*.sql
var migrationFS embed.FS

// Migrations creates the order tables.
var Migrations = postgres.Source{Name: "order", FS: migrationFS}

// Querier runs statements; *pgxpool.Pool, *pgx.Conn and pgx.Tx implement it.
type Querier interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

const columns = `id, request_id, customer_email, items, total_currency, total_units, total_nanos,
	payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id,
	create_time, update_time, seq`

// itemRow is the JSON form of a line item in the items column.
type itemRow struct {
	ProductID    string `json:"product_id"`
	Quantity     int32  `json:"quantity"`
	CurrencyCode string `json:"currency_code"`
	Units        int64  `json:"units"`
	Nanos        int32  `json:"nanos"`
}

func itemsToRows(items []order.LineItem) []itemRow {
	rows := make([]itemRow, len(items))
	for i, it := range items {
		rows[i] = itemRow{
			ProductID: it.ProductID, Quantity: it.Quantity,
			CurrencyCode: it.UnitPrice.CurrencyCode, Units: it.UnitPrice.Units, Nanos: it.UnitPrice.Nanos,
		}
	}
	return rows
}

func itemsFromRows(rows []itemRow) []order.LineItem {
	items := make([]order.LineItem, len(rows))
	for i, r := range rows {
		items[i] = order.LineItem{
			ProductID: r.ProductID, Quantity: r.Quantity,
			UnitPrice: order.Money{CurrencyCode: r.CurrencyCode, Units: r.Units, Nanos: r.Nanos},
		}
	}
	return items
}

const insertSQL = `
	INSERT INTO orders (id, request_id, customer_email, items, total_currency, total_units, total_nanos,
		payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id,
		create_time, update_time)
	VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
	ON CONFLICT (request_id) DO NOTHING`

func insertArgs(o order.Order) ([]any, error) {
	items, err := json.Marshal(itemsToRows(o.Items))
	if err != nil {
		return nil, fmt.Errorf("encode items of order %s: %w", o.ID, err)
	}
	return []any{o.ID, o.RequestID, o.CustomerEmail, items, o.Total.CurrencyCode, o.Total.Units, o.Total.Nanos,
		o.PaymentToken, o.Status.String(), o.StatusReason, o.StockReserved, o.PaymentSucceeded, o.PaymentID,
		o.CreateTime, o.UpdateTime}, nil
}

// Insert stores a new order unless one with its request id exists; it
// reports whether it inserted.
func Insert(ctx context.Context, q Querier, o order.Order) (bool, error) {
	args, err := insertArgs(o)
	if err != nil {
		return false, err
	}
	tag, err := q.Exec(ctx, insertSQL, args...)
	if err != nil {
		return false, fmt.Errorf("insert order %s: %w", o.ID, err)
	}
	return tag.RowsAffected() == 1, nil
}

// Get returns the order with id, or an error wrapping order.ErrNotFound.
func Get(ctx context.Context, q Querier, id string) (order.Order, error) {
	o, _, err := scanOne(q.QueryRow(ctx, `SELECT `+columns+` FROM orders WHERE id = $1`, id))
	if err != nil {
		return order.Order{}, fmt.Errorf("get order %s: %w", id, err)
	}
	return o, nil
}

// GetForUpdate returns the order with id and locks its row until tx ends,
// or an error wrapping order.ErrNotFound.
func GetForUpdate(ctx context.Context, tx pgx.Tx, id string) (order.Order, error) {
	o, _, err := scanOne(tx.QueryRow(ctx, `SELECT `+columns+` FROM orders WHERE id = $1 FOR UPDATE`, id))
	if err != nil {
		return order.Order{}, fmt.Errorf("get order %s for update: %w", id, err)
	}
	return o, nil
}

// GetByRequestID returns the order placed by the request with requestID,
// or an error wrapping order.ErrNotFound.
func GetByRequestID(ctx context.Context, q Querier, requestID string) (order.Order, error) {
	o, _, err := scanOne(q.QueryRow(ctx, `SELECT `+columns+` FROM orders WHERE request_id = $1`, requestID))
	if err != nil {
		return order.Order{}, fmt.Errorf("get order of request %s: %w", requestID, err)
	}
	return o, nil
}

// Update writes o's status and saga progress. Watchers are notified when
// the transaction commits.
func Update(ctx context.Context, q Querier, o order.Order) error {
	tag, err := q.Exec(ctx, `
		UPDATE orders SET status = $2, status_reason = $3, stock_reserved = $4,
			payment_succeeded = $5, payment_id = $6, update_time = $7
		WHERE id = $1`,
		o.ID, o.Status.String(), o.StatusReason, o.StockReserved, o.PaymentSucceeded, o.PaymentID, o.UpdateTime)
	if err != nil {
		return fmt.Errorf("update order %s: %w", o.ID, err)
	}
	if tag.RowsAffected() != 1 {
		return fmt.Errorf("update order %s: %w", o.ID, order.ErrNotFound)
	}
	return nil
}

// Filter selects orders for List; zero fields match any order.
type Filter struct {
	Status        order.Status
	CustomerEmail string
}

// Page is one page of a listing.
type Page struct {
	Orders []order.Order
	// Next is the cursor of the next page, or 0 after the last page.
	Next int64
}

// List returns up to limit orders matching f, newest first, starting after
// the cursor (0 for the first page).
func List(ctx context.Context, q Querier, f Filter, cursor int64, limit int) (Page, error) {
	args := []any{limit + 1}
	where := "TRUE"
	if cursor > 0 {
		args = append(args, cursor)
		where += fmt.Sprintf(" AND seq < $%d", len(args))
	}
	if f.Status != order.StatusUnspecified {
		args = append(args, f.Status.String())
		where += fmt.Sprintf(" AND status = $%d", len(args))
	}
	if f.CustomerEmail != "" {
		args = append(args, f.CustomerEmail)
		where += fmt.Sprintf(" AND customer_email = $%d", len(args))
	}
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM orders WHERE `+where+` ORDER BY seq DESC LIMIT $1`, args...)
	if err != nil {
		return Page{}, fmt.Errorf("list orders: %w", err)
	}
	defer rows.Close()
	var page Page
	var lastSeq int64
	for rows.Next() {
		o, seq, err := scanOne(rows)
		if err != nil {
			return Page{}, fmt.Errorf("list orders: %w", err)
		}
		if len(page.Orders) == limit {
			page.Next = lastSeq
			break
		}
		page.Orders = append(page.Orders, o)
		lastSeq = seq
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("list orders: %w", err)
	}
	return page, nil
}

func scanOne(row pgx.Row) (order.Order, int64, error) {
	var (
		o           order.Order
		items       []byte
		status      string
		seq         int64
		create, upd time.Time
	)
	err := row.Scan(&o.ID, &o.RequestID, &o.CustomerEmail, &items, &o.Total.CurrencyCode, &o.Total.Units, &o.Total.Nanos,
		&o.PaymentToken, &status, &o.StatusReason, &o.StockReserved, &o.PaymentSucceeded, &o.PaymentID,
		&create, &upd, &seq)
	if errors.Is(err, pgx.ErrNoRows) {
		return order.Order{}, 0, order.ErrNotFound
	}
	if err != nil {
		return order.Order{}, 0, err
	}
	var rows []itemRow
	if err := json.Unmarshal(items, &rows); err != nil {
		return order.Order{}, 0, fmt.Errorf("decode items of order %s: %w", o.ID, err)
	}
	o.Items = itemsFromRows(rows)
	if o.Status, err = order.ParseStatus(status); err != nil {
		return order.Order{}, 0, fmt.Errorf("order %s: %w", o.ID, err)
	}
	o.CreateTime, o.UpdateTime = create.UTC(), upd.UTC()
	return o, seq, nil
}
