package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

// TestLoadLedgerSeesWhatTheLockHolderCommitted loads an order's ledger
// while another transaction holds the order's lock and has reserved it.
// The load waits for the lock, and its reads, pipelined behind the lock,
// see what the holder committed: the reservation, not an order it never
// heard of.
func TestLoadLedgerSeesWhatTheLockHolderCommitted(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	if _, err := store.SetStock(ctx, pool, "SKU-1", 10); err != nil {
		t.Fatal(err)
	}
	order := uuid.NewString()
	ids, products := []string{order}, []string{"SKU-1"}

	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = holder.Rollback(ctx) }()
	l, err := store.LoadLedger(ctx, holder, ids, products)
	if err != nil {
		t.Fatalf("holder: load: %v", err)
	}
	if _, _, err := l.Reserve(order, []stock.Line{{ProductID: "SKU-1", Quantity: 4}}); err != nil {
		t.Fatal(err)
	}
	if err := store.SaveLedger(ctx, holder, l.Changes()); err != nil {
		t.Fatalf("holder: save: %v", err)
	}

	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var pid int
	if err := conn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	waiter, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = waiter.Rollback(ctx) }()
	type loaded struct {
		l   *stock.Ledger
		err error
	}
	done := make(chan loaded, 1)
	go func() {
		l, err := store.LoadLedger(ctx, waiter, ids, products)
		done <- loaded{l, err}
	}()
	waitForLock(ctx, t, pool, pid)
	select {
	case <-done:
		t.Fatal("load returned while another transaction held the order's lock")
	default:
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatalf("holder: commit: %v", err)
	}

	got := <-done
	if got.err != nil {
		t.Fatalf("waiter: load: %v", got.err)
	}
	want := stock.Reservation{OrderID: order, Status: stock.StatusReserved, Lines: []stock.Line{{ProductID: "SKU-1", Quantity: 4}}}
	if diff := cmp.Diff(want, got.l.Reservation(order)); diff != "" {
		t.Errorf("reservation the waiter loaded (-want +got):\n%s", diff)
	}
	if lv, _ := got.l.Level("SKU-1"); lv != (stock.Level{ProductID: "SKU-1", Available: 6, Reserved: 4}) {
		t.Errorf("level the waiter loaded = %+v, want 6 available, 4 reserved", lv)
	}
	if _, err := got.l.Confirm(order); err != nil {
		t.Fatal(err)
	}
	if err := store.SaveLedger(ctx, waiter, got.l.Changes()); err != nil {
		t.Fatalf("waiter: save: %v", err)
	}
	if err := waiter.Commit(ctx); err != nil {
		t.Fatalf("waiter: commit: %v", err)
	}
	if lv, err := store.GetStock(ctx, pool, "SKU-1"); err != nil || lv != (stock.Level{ProductID: "SKU-1", Available: 6}) {
		t.Errorf("stock after the confirmation = %+v, %v; want 6 available, none reserved", lv, err)
	}
	r, err := store.GetReservation(ctx, pool, order)
	if err != nil || r.Status != stock.StatusCommitted {
		t.Errorf("reservation after the confirmation = %+v, %v; want COMMITTED", r, err)
	}
}

// waitForLock waits until the backend pid waits for a lock.
func waitForLock(ctx context.Context, t *testing.T, db interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, pid int) {
	t.Helper()
	for {
		var waiting bool
		err := db.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waiting)
		if err != nil {
			t.Fatalf("wait for backend %d to wait for a lock: %v", pid, err)
		}
		if waiting {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("backend %d never waited for a lock", pid)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestSaveLedgerUpdatesByIndexAfterTheTableGrew has SaveLedger confirm
// batches of reservations, of 20 products, on one connection while the
// tables are small, until PostgreSQL caches generic plans, then grows the
// reservations and the catalog: the updates must still read the rows they
// change by index, not whole tables.
func TestSaveLedgerUpdatesByIndexAfterTheTableGrew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	// Each order of a batch takes one of 20 products, so each batch
	// updates 20 stock levels too.
	products := make([]string, 20)
	for i := range products {
		products[i] = fmt.Sprintf("SKU-%d", i)
		if _, err := store.SetStock(ctx, pool, products[i], 1_000_000); err != nil {
			t.Fatal(err)
		}
	}
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	var before, beforeStock int64
	// batch reserves 20 orders in one transaction on conn, then confirms
	// them in another, whose transaction it returns uncommitted if keep.
	batch := func(keep bool) pgx.Tx {
		t.Helper()
		orders := make([]string, 20)
		for i := range orders {
			orders[i] = uuid.NewString()
		}
		for _, confirm := range []bool{false, true} {
			tx, err := conn.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if confirm && keep {
				before = postgrestest.SeqTuplesRead(t, tx, "reservations")
				beforeStock = postgrestest.SeqTuplesRead(t, tx, "stock")
			}
			l, err := store.LoadLedger(ctx, tx, orders, products)
			if err != nil {
				t.Fatal(err)
			}
			for i, o := range orders {
				if confirm {
					_, err = l.Confirm(o)
				} else {
					_, _, err = l.Reserve(o, []stock.Line{{ProductID: products[i], Quantity: 1}})
				}
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := store.SaveLedger(ctx, tx, l.Changes()); err != nil {
				t.Fatal(err)
			}
			if confirm && keep {
				return tx
			}
			if err := tx.Commit(ctx); err != nil {
				t.Fatal(err)
			}
		}
		return nil
	}
	// More than the five custom plans after which PostgreSQL may settle
	// on a generic one.
	for range 8 {
		batch(false)
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO reservations (order_id, status, reason)
		SELECT gen_random_uuid(), 'RESERVED', '' FROM generate_series(1, 20000)`); err != nil {
		t.Fatal(err)
	}
	// A catalog of 20,000 products.
	if _, err := conn.Exec(ctx, `
		INSERT INTO stock (product_id, available) SELECT 'SKU-X' || i, 1 FROM generate_series(1, 20000) AS i`); err != nil {
		t.Fatal(err)
	}
	tx := batch(true)
	defer func() { _ = tx.Rollback(ctx) }()
	// The confirming transaction's scans: LoadLedger's reads and the
	// update.
	if n := postgrestest.SeqTuplesRead(t, tx, "reservations") - before; n > 0 {
		t.Errorf("confirming 20 orders read %d reservations sequentially, want them read by index", n)
	}
	if n := postgrestest.SeqTuplesRead(t, tx, "stock") - beforeStock; n > 0 {
		t.Errorf("confirming 20 orders read %d stock rows sequentially, want them read by index", n)
	}
}
