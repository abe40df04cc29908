package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

func newOrders(t *testing.T, n int) []order.Order {
	t.Helper()
	now := time.Now().UTC().Truncate(time.Microsecond)
	orders := make([]order.Order, n)
	for i := range orders {
		o, err := order.New(uuid.NewString(), order.Request{
			RequestID: uuid.NewString(), CustomerEmail: "ada@example.com", PaymentToken: "tok_visa",
			Items: []order.LineItem{{ProductID: "SKU-1", Quantity: 1, UnitPrice: order.Money{CurrencyCode: "EUR", Units: 3}}},
		}, now)
		if err != nil {
			t.Fatal(err)
		}
		orders[i] = o
	}
	return orders
}

// TestQueueUpdateByIndexAfterTheTableGrew updates batches of orders on one
// connection while the table is small, until PostgreSQL caches a generic
// plan, then grows the table: the update must still read the orders it
// changes by index, not the whole table.
func TestQueueUpdateByIndexAfterTheTableGrew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	send := func(tx pgx.Tx, queue func(b *pgx.Batch) error) {
		t.Helper()
		b := &pgx.Batch{}
		if err := queue(b); err != nil {
			t.Fatal(err)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
	}
	// batch inserts 20 orders and updates them, each in a transaction on
	// conn; it returns the update's transaction uncommitted, with the
	// sequential reads of orders before the update.
	batch := func() (pgx.Tx, int64) {
		t.Helper()
		orders := newOrders(t, 20)
		if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
			send(tx, func(b *pgx.Batch) error { return store.QueueInsertAll(b, orders...) })
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		before := postgrestest.SeqTuplesRead(t, tx, "orders")
		for i := range orders {
			orders[i].StatusReason = "updated"
		}
		send(tx, func(b *pgx.Batch) error { store.QueueUpdate(b, orders...); return nil })
		return tx, before
	}
	// More than the five custom plans after which PostgreSQL may settle
	// on a generic one.
	for range 8 {
		tx, _ := batch()
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		send(tx, func(b *pgx.Batch) error { return store.QueueInsertAll(b, newOrders(t, 20000)...) })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	tx, before := batch()
	defer func() { _ = tx.Rollback(ctx) }()
	if n := postgrestest.SeqTuplesRead(t, tx, "orders") - before; n > 0 {
		t.Errorf("updating 20 orders read %d orders sequentially, want them read by index", n)
	}
}

// LockMany reads every field Get reads but the line items.
func TestLockManyReadsOrdersWithoutItems(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	orders := newOrders(t, 3)
	b := &pgx.Batch{}
	if err := store.QueueInsertAll(b, orders...); err != nil {
		t.Fatal(err)
	}
	if err := pool.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}
	ids := []string{orders[0].ID, orders[1].ID, orders[2].ID, uuid.NewString()}
	var locked map[string]order.Order
	if err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) (err error) {
		locked, err = store.LockMany(ctx, tx, ids)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if len(locked) != len(orders) {
		t.Fatalf("LockMany returned %d orders, want %d (the unknown id missing)", len(locked), len(orders))
	}
	for _, o := range orders {
		want, err := store.Get(ctx, pool, o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if len(want.Items) == 0 {
			t.Fatalf("Get returned order %s without items", o.ID)
		}
		want.Items = nil
		if diff := cmp.Diff(want, locked[o.ID]); diff != "" {
			t.Errorf("LockMany's order %s differs from Get's without items (-want +got):\n%s", o.ID, diff)
		}
	}
}

// The orders table's trigger notifies the channel "orders.<schema>":
// PostgreSQL must take it for a schema of MaxSchemaLen bytes, and refuses
// one byte more.
func TestMaxSchemaLenIsTheChannelNamesLimit(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	for n, fits := range map[int]bool{store.MaxSchemaLen: true, store.MaxSchemaLen + 1: false} {
		_, err := conn.Exec(ctx, `SELECT pg_notify($1, '')`, "orders."+strings.Repeat("s", n))
		if fits && err != nil {
			t.Errorf("schema of %d bytes: %v", n, err)
		}
		if !fits && err == nil {
			t.Errorf("schema of %d bytes: pg_notify took its channel, want an error", n)
		}
	}
}
