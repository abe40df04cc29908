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
	"github.com/jackc/pgx/v5/pgtype"

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

// An order's columns as scanOrder reads them: columnsHead, items, then
// columnsTail. columnsNoItems leave out the items, for reads whose callers
// need no line items (decoding them is most of the cost of reading an
// order).
const (
	columnsHead = `id, request_id, customer_email`
	columnsTail = `total_currency, total_units, total_nanos, payment_token, status, status_reason,
	stock_reserved, payment_succeeded, payment_id, create_time, update_time, seq`
	columns        = columnsHead + `, items, ` + columnsTail
	columnsNoItems = columnsHead + `, ` + columnsTail
)

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

// QueueInsert queues on b the statement storing new orders, except those
// whose request id is already taken; when b's results are read, the ids of
// the orders it inserted are added to inserted. Of several orders with the
// same request id, at most one is inserted.
func QueueInsert(b *pgx.Batch, inserted map[string]bool, orders ...order.Order) error {
	if len(orders) == 0 {
		return nil
	}
	args, err := insertArgs(orders)
	if err != nil {
		return err
	}
	b.Queue(insertSQL+`
		ON CONFLICT (request_id) DO NOTHING
		RETURNING id::text`, args...,
	).Query(func(rows pgx.Rows) error {
		for rows.Next() {
			var id string
			if err := rows.Scan(&id); err != nil {
				return fmt.Errorf("insert %d orders: %w", len(orders), err)
			}
			inserted[id] = true
		}
		if err := rows.Err(); err != nil {
			return fmt.Errorf("insert %d orders: %w", len(orders), err)
		}
		return nil
	})
	return nil
}

// QueueInsertAll queues on b the statement storing new orders, all or
// none: a request id already taken, or repeated among orders, fails the
// statement with a unique violation (see IsRequestIDTaken), so a caller
// can queue what follows the orders in the same round trip.
func QueueInsertAll(b *pgx.Batch, orders ...order.Order) error {
	if len(orders) == 0 {
		return nil
	}
	args, err := insertArgs(orders)
	if err != nil {
		return err
	}
	b.Queue(insertSQL, args...).Exec(func(tag pgconn.CommandTag) error {
		if n := tag.RowsAffected(); n != int64(len(orders)) {
			return fmt.Errorf("insert %d orders: %d inserted", len(orders), n)
		}
		return nil
	})
	return nil
}

// IsRequestIDTaken reports whether err is an insert of orders failing
// because a request id was taken already (or twice in one statement).
func IsRequestIDTaken(err error) bool {
	var pgErr *pgconn.PgError
	return errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "orders_request_id_key"
}

// insertSQL inserts the orders of insertArgs' arrays, in the order given:
// WITH ORDINALITY keeps seq in that order.
const insertSQL = `
		INSERT INTO orders (id, request_id, customer_email, items, total_currency, total_units, total_nanos,
			payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id,
			create_time, update_time)
		SELECT id, request_id, customer_email, items, total_currency, total_units, total_nanos,
			payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id,
			create_time, update_time
		FROM unnest($1::text[]::uuid[], $2::text[]::uuid[], $3::text[], $4::text[]::jsonb[], $5::text[],
			$6::bigint[], $7::integer[], $8::text[], $9::text[], $10::text[], $11::boolean[], $12::boolean[],
			$13::text[], $14::timestamptz[], $15::timestamptz[])
			WITH ORDINALITY AS o(id, request_id, customer_email, items, total_currency, total_units, total_nanos,
				payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id,
				create_time, update_time, n)
		ORDER BY n`

// insertArgs returns insertSQL's arguments for orders.
func insertArgs(orders []order.Order) ([]any, error) {
	var c struct {
		id, requestID, email, items, currency, token, status, reason, paymentID []string
		units                                                                   []int64
		nanos                                                                   []int32
		reserved, paid                                                          []bool
		created, updated                                                        []time.Time
	}
	for _, o := range orders {
		items, err := json.Marshal(itemsToRows(o.Items))
		if err != nil {
			return nil, fmt.Errorf("encode items of order %s: %w", o.ID, err)
		}
		c.id = append(c.id, o.ID)
		c.requestID = append(c.requestID, o.RequestID)
		c.email = append(c.email, o.CustomerEmail)
		c.items = append(c.items, string(items))
		c.currency = append(c.currency, o.Total.CurrencyCode)
		c.units = append(c.units, o.Total.Units)
		c.nanos = append(c.nanos, o.Total.Nanos)
		c.token = append(c.token, o.PaymentToken)
		c.status = append(c.status, o.Status.String())
		c.reason = append(c.reason, o.StatusReason)
		c.reserved = append(c.reserved, o.StockReserved)
		c.paid = append(c.paid, o.PaymentSucceeded)
		c.paymentID = append(c.paymentID, o.PaymentID)
		c.created = append(c.created, o.CreateTime)
		c.updated = append(c.updated, o.UpdateTime)
	}
	return []any{c.id, c.requestID, c.email, c.items, c.currency, c.units, c.nanos, c.token, c.status, c.reason,
		c.reserved, c.paid, c.paymentID, c.created, c.updated}, nil
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

// LockMany returns the orders with ids, by id, without their line items
// (Items is nil: applying saga outcomes needs none, and QueueUpdate writes
// none), and locks their rows until tx ends; ids of no order are missing
// from the result. The rows are locked in id order, so two transactions
// locking some of the same orders wait for each other in one order and
// cannot deadlock. ids must be UUIDs.
func LockMany(ctx context.Context, tx pgx.Tx, ids []string) (map[string]order.Order, error) {
	if len(ids) == 0 {
		return map[string]order.Order{}, nil
	}
	rows, err := tx.Query(ctx, `SELECT `+columnsNoItems+` FROM orders WHERE id = ANY($1::text[]::uuid[]) ORDER BY id FOR UPDATE`, ids)
	out, err := collect(rows, err, len(ids), false, func(o order.Order) string { return o.ID })
	if err != nil {
		return nil, fmt.Errorf("lock %d orders: %w", len(ids), err)
	}
	return out, nil
}

// collect reads the orders of rows (or returns err, the query's) by key;
// the rows have columns, or columnsNoItems unless withItems.
func collect(rows pgx.Rows, err error, n int, withItems bool, key func(order.Order) string) (map[string]order.Order, error) {
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := make(map[string]order.Order, n)
	for rows.Next() {
		o, _, err := scanOrder(rows, withItems)
		if err != nil {
			return nil, err
		}
		out[key(o)] = o
	}
	return out, rows.Err()
}

// GetByRequestIDs returns the orders placed by the requests with ids, by
// request id; requests that placed no order are missing from the result.
func GetByRequestIDs(ctx context.Context, q Querier, ids []string) (map[string]order.Order, error) {
	rows, err := q.Query(ctx, `SELECT `+columns+` FROM orders WHERE request_id = ANY($1::text[]::uuid[])`, ids)
	out, err := collect(rows, err, len(ids), true, func(o order.Order) string { return o.RequestID })
	if err != nil {
		return nil, fmt.Errorf("get orders of %d requests: %w", len(ids), err)
	}
	return out, nil
}

// ListPendingSince returns the ids of up to limit orders still PENDING
// that were placed before before, oldest first.
func ListPendingSince(ctx context.Context, q Querier, before time.Time, limit int) ([]string, error) {
	rows, err := q.Query(ctx, `
		SELECT id::text FROM orders
		WHERE status = 'PENDING' AND create_time < $1
		ORDER BY seq LIMIT $2`, before, limit)
	if err != nil {
		return nil, fmt.Errorf("list orders pending since %s: %w", before.Format(time.RFC3339), err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list orders pending since %s: %w", before.Format(time.RFC3339), err)
	}
	return ids, nil
}

// Update writes o's status and saga progress in tx, like QueueUpdate for
// one order. Watchers are notified when the transaction commits.
func Update(ctx context.Context, tx pgx.Tx, o order.Order) error {
	b := &pgx.Batch{}
	QueueUpdate(b, o)
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("update order %s: %w", o.ID, err)
	}
	return nil
}

// QueueUpdate queues on b the statement writing the status and saga
// progress of orders, like Update for each in one statement. When b's
// results are read it fails, wrapping order.ErrNotFound, unless every
// order was there to update.
func QueueUpdate(b *pgx.Batch, orders ...order.Order) {
	if len(orders) == 0 {
		return
	}
	var c struct {
		id, status, reason, paymentID []string
		reserved, paid                []bool
		updated                       []time.Time
	}
	for _, o := range orders {
		c.id = append(c.id, o.ID)
		c.status = append(c.status, o.Status.String())
		c.reason = append(c.reason, o.StatusReason)
		c.reserved = append(c.reserved, o.StockReserved)
		c.paid = append(c.paid, o.PaymentSucceeded)
		c.paymentID = append(c.paymentID, o.PaymentID)
		c.updated = append(c.updated, o.UpdateTime)
	}
	// The redundant = ANY keeps the plan on the index: joined with unnest
	// alone, a table planned while small is read whole by a hash join, and
	// the cached plan stays so as the table grows (until it is analyzed
	// again).
	b.Queue(`
		UPDATE orders AS o SET status = u.status, status_reason = u.status_reason,
			stock_reserved = u.stock_reserved, payment_succeeded = u.payment_succeeded,
			payment_id = u.payment_id, update_time = u.update_time
		FROM unnest($1::text[]::uuid[], $2::text[], $3::text[], $4::boolean[], $5::boolean[], $6::text[], $7::timestamptz[])
			AS u(id, status, status_reason, stock_reserved, payment_succeeded, payment_id, update_time)
		WHERE o.id = u.id AND o.id = ANY($1::text[]::uuid[])`,
		c.id, c.status, c.reason, c.reserved, c.paid, c.paymentID, c.updated,
	).Exec(func(tag pgconn.CommandTag) error {
		if n := tag.RowsAffected(); n != int64(len(orders)) {
			return fmt.Errorf("update %d orders: %d updated: %w", len(orders), n, order.ErrNotFound)
		}
		return nil
	})
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

// MaxPageBytes bounds a page of List by the encoded size of its orders:
// a page of 1000 orders of 100 lines each can reach several MiB, past
// the 4 MiB a gRPC client takes by default, and a client could then never
// read it. A page ends early, with a cursor for the rest, once the next
// order would take it past this (a page holds at least one order).
const MaxPageBytes = 2 << 20

// List returns up to limit orders matching f, newest first, starting after
// the cursor (0 for the first page), and fewer when they would take the
// page past MaxPageBytes. Without withItems the orders' Items are nil and
// their line items are not read at all.
func List(ctx context.Context, q Querier, f Filter, cursor int64, limit int, withItems bool) (Page, error) {
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
	cols := columnsNoItems
	if withItems {
		cols = columns
	}
	rows, err := q.Query(ctx, `SELECT `+cols+` FROM orders WHERE `+where+` ORDER BY seq DESC LIMIT $1`, args...)
	if err != nil {
		return Page{}, fmt.Errorf("list orders: %w", err)
	}
	defer rows.Close()
	var page Page
	var lastSeq int64
	size := 0
	for rows.Next() {
		o, seq, err := scanOrder(rows, withItems)
		if err != nil {
			return Page{}, fmt.Errorf("list orders: %w", err)
		}
		n := encodedSizeBound(o)
		if len(page.Orders) == limit || (len(page.Orders) > 0 && size+n > MaxPageBytes) {
			page.Next = lastSeq
			break
		}
		page.Orders = append(page.Orders, o)
		size += n
		lastSeq = seq
	}
	if err := rows.Err(); err != nil {
		return Page{}, fmt.Errorf("list orders: %w", err)
	}
	return page, nil
}

// encodedSizeBound is at least the size of o in a protobuf response: 256
// bytes for its ids, status, money, times and framing, its email, reason
// and token, and 48 bytes a line besides the product id.
func encodedSizeBound(o order.Order) int {
	n := 256 + len(o.CustomerEmail) + len(o.StatusReason) + len(o.PaymentToken)
	for _, it := range o.Items {
		n += 48 + len(it.ProductID)
	}
	return n
}

func scanOne(row pgx.Row) (order.Order, int64, error) { return scanOrder(row, true) }

// scanOrder reads an order from row, which has columns, or columnsNoItems
// unless withItems (the order's Items are then nil).
func scanOrder(row pgx.Row, withItems bool) (order.Order, int64, error) {
	var (
		o           order.Order
		items       []byte
		status      string
		seq         int64
		create, upd time.Time
	)
	dest := []any{&o.ID, &o.RequestID, &o.CustomerEmail} // columnsHead
	if withItems {
		dest = append(dest, &items)
	}
	dest = append(dest, &o.Total.CurrencyCode, &o.Total.Units, &o.Total.Nanos, // columnsTail
		&o.PaymentToken, &status, &o.StatusReason, &o.StockReserved, &o.PaymentSucceeded, &o.PaymentID,
		&create, &upd, &seq)
	err := row.Scan(dest...)
	if errors.Is(err, pgx.ErrNoRows) {
		return order.Order{}, 0, order.ErrNotFound
	}
	if err != nil {
		return order.Order{}, 0, err
	}
	if withItems {
		var rows []itemRow
		if err := json.Unmarshal(items, &rows); err != nil {
			return order.Order{}, 0, fmt.Errorf("decode items of order %s: %w", o.ID, err)
		}
		o.Items = itemsFromRows(rows)
	}
	if o.Status, err = order.ParseStatus(status); err != nil {
		return order.Order{}, 0, fmt.Errorf("order %s: %w", o.ID, err)
	}
	o.CreateTime, o.UpdateTime = create.UTC(), upd.UTC()
	return o, seq, nil
}

// SweepRecord is what an expiry sweep records (see RecordSweep).
type SweepRecord struct {
	// Shift is added to the database's clock, the one every instance's
	// sweeps are timed by: 0 but in tests.
	Shift time.Duration
	// Timeout is the order timeout: a pause the sweep starts lasts it,
	// and no pause ends later than it from now, whatever timeout was in
	// force when it began.
	Timeout time.Duration
	// Backlog is set when the sweep saw the outbox behind: the pause
	// lasts at least Timeout from now.
	Backlog bool
	// Away is how long after the previous sweep of any instance a sweep
	// finds the service to have been away, and pauses for Timeout from
	// now; 0: not judged.
	Away time.Duration
}

// Sweep is what RecordSweep learned.
type Sweep struct {
	// Now is the sweep's time: the database's clock, shifted.
	Now time.Time
	// HeldUntil is when the timeout's pause ends (the zero time or one
	// before Now: none).
	HeldUntil time.Time
	// Previous is when an instance last swept before this one, as the
	// statement's snapshot saw it (the zero time: none since the
	// migration that made the record). With instances sweeping at once it
	// may be older than the sweep the pause was judged by; it serves the
	// logs only.
	Previous time.Time
}

// Held reports whether the timeout is paused at the sweep's time.
func (s Sweep) Held() bool { return s.Now.Before(s.HeldUntil) }

// RecordSweep records an expiry sweep in the record the service's
// instances share, on the database's clock, and returns the pause in
// force: one statement, so that instances sweeping at once see each
// other's pauses.
func RecordSweep(ctx context.Context, q Querier, r SweepRecord) (Sweep, error) {
	var s Sweep
	var held, prev pgtype.Timestamptz
	err := q.QueryRow(ctx, `
		WITH t AS (SELECT now() + $1::interval AS now),
			prev AS (SELECT swept_at FROM expiry_hold)
		UPDATE expiry_hold AS h SET
			swept_at = GREATEST(h.swept_at, t.now),
			held_until = LEAST(
				GREATEST(h.held_until,
					CASE WHEN $3::boolean THEN t.now + $2::interval END,
					CASE WHEN $4::interval > interval '0' AND h.swept_at < t.now - $4::interval THEN t.now + $2::interval END),
				t.now + $2::interval)
		FROM t
		RETURNING t.now, h.held_until, (SELECT swept_at FROM prev)`,
		r.Shift, r.Timeout, r.Backlog, r.Away).Scan(&s.Now, &held, &prev)
	if err != nil {
		return Sweep{}, fmt.Errorf("record the expiry sweep: %w", err)
	}
	if held.InfinityModifier == pgtype.Finite {
		s.HeldUntil = held.Time
	}
	if prev.InfinityModifier == pgtype.Finite {
		s.Previous = prev.Time
	}
	return s, nil
}

// TouchSweep records that a sweep went on until now (the database's
// clock, shifted by shift): a long sweep's own length is no absence.
func TouchSweep(ctx context.Context, q Querier, shift time.Duration) error {
	if _, err := q.Exec(ctx, `UPDATE expiry_hold SET swept_at = GREATEST(swept_at, now() + $1::interval)`, shift); err != nil {
		return fmt.Errorf("record the expiry sweep's end: %w", err)
	}
	return nil
}
