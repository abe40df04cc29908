package app_test

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/testproxy"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// TestHandleFailsTheWholeBatchWhenTheDatabaseFails makes the database fail
// while Handle works on a batch. Handle must return the failure itself,
// which fails every delivery of the batch (see inbox.BatchHandler), and
// not as permanent, so the bus retries the batch instead of parking its
// events in the dead-letter queue; nothing of the batch commits; and the
// retry, with the database back, applies the batch. A transaction of the
// test's own holds a lock Handle needs, so that Handle waits at a known
// point until the database fails under it. The test calls Handle as the
// inbox runner does rather than through an inbox.BatchRunner: with the
// connection gone, the runner's own statements would fail the batch anyway
// and hide a Handle that swallowed the failure.
func TestHandleFailsTheWholeBatchWhenTheDatabaseFails(t *testing.T) {
	cut := func(_ *testing.T, proxy *testproxy.Proxy, _ *pgxpool.Pool, _ uint32) {
		proxy.SetUp(false)
	}
	terminate := func(t *testing.T, _ *testproxy.Proxy, admin *pgxpool.Pool, pid uint32) {
		var ok bool
		if err := admin.QueryRow(context.Background(), `SELECT pg_terminate_backend($1)`, pid).Scan(&ok); err != nil || !ok {
			t.Fatalf("terminate backend %d: %v, %v", pid, ok, err)
		}
	}
	// Handle writes the changed orders, their timelines and the outbox in
	// that order: a writer waiting for the outbox has run the rest.
	lockOutbox := func(ctx context.Context, tx pgx.Tx, _ []string) error {
		_, err := tx.Exec(ctx, `LOCK TABLE outbox IN SHARE MODE`)
		return err
	}
	lockAnOrder := func(ctx context.Context, tx pgx.Tx, ids []string) error {
		_, err := store.GetForUpdate(ctx, tx, ids[0])
		return err
	}
	isTerminated := func(err error) bool {
		var pgErr *pgconn.PgError
		return errors.As(err, &pgErr) && pgErr.Code == "57P01" // admin_shutdown
	}
	tests := []struct {
		name string
		// block, in a transaction of its own, takes a lock Handle then
		// waits for; waitsFor names it as pg_locks does (the relation, or
		// else the lock type).
		block    func(ctx context.Context, tx pgx.Tx, ids []string) error
		waitsFor string
		// fail makes the database fail under the app's connection, whose
		// backend is pid; admin is a pool of the test's own.
		fail func(t *testing.T, proxy *testproxy.Proxy, admin *pgxpool.Pool, pid uint32)
		// isFailure, when set, checks Handle's error is the database's.
		isFailure func(error) bool
	}{
		{name: "connection cut while writing", block: lockOutbox, waitsFor: "outbox", fail: cut},
		{name: "backend terminated while writing", block: lockOutbox, waitsFor: "outbox", fail: terminate, isFailure: isTerminated},
		{name: "backend terminated while locking the orders", block: lockAnOrder, waitsFor: "transactionid", fail: terminate, isFailure: isTerminated},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			admin, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
			proxy, proxied := postgrestest.Proxied(t)
			appPool, err := postgres.Open(ctx, proxied, schema)
			if err != nil {
				t.Fatalf("open: %v", err)
			}
			t.Cleanup(appPool.Close)
			f := fixture{pool: admin, schema: schema, app: newApp(t, appPool, schema)}

			ids := make([]string, 3)
			for i := range ids {
				o, err := f.app.Create(ctx, request())
				if err != nil {
					t.Fatal(err)
				}
				ids[i] = o.ID
			}
			// The first order is confirmed, the second rejected, the third
			// only gets a timeline entry.
			batch := []inbox.Delivery{
				delivery(t, &inventoryv1.StockReserved{OrderId: ids[0]}),
				delivery(t, &paymentv1.PaymentFailed{OrderId: ids[1], Reason: "card declined"}),
				delivery(t, &paymentv1.PaymentSucceeded{OrderId: ids[0], PaymentId: "ch_1"}),
				delivery(t, &notificationv1.NotificationSent{OrderId: ids[2], Recipient: "ada@example.com"}),
			}

			holder, err := admin.Begin(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer func() { _ = holder.Rollback(ctx) }()
			if err := tt.block(ctx, holder, ids); err != nil {
				t.Fatalf("block: %v", err)
			}
			type handled struct {
				results []inbox.Result
				err     error // Handle's
				txErr   error // the transaction's: fn's, or else its commit's
			}
			pids := make(chan uint32, 1)
			done := make(chan handled, 1)
			go func() {
				var h handled
				h.txErr = postgres.WithTx(ctx, appPool, func(tx pgx.Tx) error {
					var pid uint32
					err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid)
					pids <- pid // 0 when err is not nil
					if err != nil {
						return err
					}
					h.results, h.err = f.app.Handle(ctx, tx, batch)
					return h.err
				})
				done <- h
			}()
			var pid uint32
			select {
			case pid = <-pids:
			case <-ctx.Done():
				t.Fatalf("the app's transaction did not begin: %v", ctx.Err())
			}
			if pid == 0 {
				t.Fatalf("read the app's backend pid: %v", (<-done).txErr)
			}
			for waited := ""; waited != tt.waitsFor; time.Sleep(time.Millisecond) {
				err := admin.QueryRow(ctx, `
					SELECT coalesce(max(coalesce(relation::regclass::text, locktype)), '')
					FROM pg_locks WHERE pid = $1 AND NOT granted`, pid).Scan(&waited)
				if err != nil {
					t.Fatalf("wait for Handle to wait for %s (it waits for %q): %v", tt.waitsFor, waited, err)
				}
			}
			tt.fail(t, proxy, admin, pid)
			var h handled
			select {
			case h = <-done:
			case <-ctx.Done():
				t.Fatalf("Handle did not return after the database failed: %v", ctx.Err())
			}
			_ = holder.Rollback(ctx)
			proxy.SetUp(true)

			if h.err == nil {
				t.Fatalf("Handle returned no error (results %v; its transaction: %v); want the database's failure, failing the whole batch", h.results, h.txErr)
			}
			// Handle's error ended the transaction, which rolled back:
			// WithTx returns it as is, never a commit's.
			if !errors.Is(h.txErr, h.err) {
				t.Errorf("the batch's transaction ended with %v, want Handle's error %v", h.txErr, h.err)
			}
			if eventbus.IsPermanent(h.err) {
				t.Errorf("Handle's error %v is permanent; want it retried", h.err)
			}
			if tt.isFailure != nil && !tt.isFailure(h.err) {
				t.Errorf("Handle's error %v is not the database's failure", h.err)
			}
			t.Logf("Handle: %v", h.err)

			for _, id := range ids {
				o, err := store.Get(ctx, admin, id)
				if err != nil {
					t.Fatal(err)
				}
				if o.Status != order.StatusPending || o.StockReserved || o.PaymentSucceeded {
					t.Errorf("after the failed batch order %s is %v (reserved %v, paid %v); want it untouched", id, o.Status, o.StockReserved, o.PaymentSucceeded)
				}
				if events, err := store.ListEvents(ctx, admin, id); err != nil || len(events) != 1 {
					t.Errorf("after the failed batch order %s has %d timeline entries (%v); want only its creation", id, len(events), err)
				}
			}
			if got := outboxTypes(t, admin); len(got) != len(ids) || slices.ContainsFunc(got, func(typ string) bool { return typ != "ordermesh.order.v1.OrderCreated" }) {
				t.Errorf("after the failed batch the outbox holds %v; want only the %d OrderCreated", got, len(ids))
			}

			// The bus's retries: the same deliveries in new transactions,
			// until one commits. A dead connection the cut left in the
			// pool can fail the first.
			for attempt := 1; ; attempt++ {
				err := postgres.WithTx(ctx, appPool, func(tx pgx.Tx) error {
					return handleAllOK(ctx, f, tx, batch)
				})
				if err == nil {
					break
				}
				if attempt == 3 || eventbus.IsPermanent(err) {
					t.Fatalf("retry %d of the batch with the database back: %v", attempt, err)
				}
				t.Logf("retry %d of the batch: %v", attempt, err)
			}
			for i, want := range []order.Status{order.StatusConfirmed, order.StatusRejected, order.StatusPending} {
				if o, err := store.Get(ctx, admin, ids[i]); err != nil || o.Status != want {
					t.Errorf("after the retry order %d is %v (%v); want %v", i, o.Status, err, want)
				}
			}
			if got := outboxTypes(t, admin); len(got) != len(ids)+2 {
				t.Errorf("after the retry the outbox holds %v; want the %d OrderCreated, OrderRejected and OrderConfirmed", got, len(ids))
			}
		})
	}
}
