package store_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

func notification(orderID, kind string) store.Notification {
	return store.Notification{
		OrderID: orderID, Kind: kind, Recipient: "ada@example.com",
		MessageID: orderID + "." + kind + "@ordermesh", EventID: uuid.NewString(),
	}
}

type claimResult struct {
	claimed []bool
	err     error
}

// claimBlocked claims ns as claim does, in a goroutine, and returns once
// that claim's transaction waits for a lock, failing the test if it ends
// first. Its result comes on the channel returned.
func claimBlocked(ctx context.Context, t *testing.T, pool *pgxpool.Pool, ns ...store.Notification) <-chan claimResult {
	t.Helper()
	pids := make(chan uint32, 1)
	result := make(chan claimResult, 1)
	go func() {
		var r claimResult
		r.err = postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
			var pid uint32
			err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid)
			pids <- pid // 0 when err is not nil
			if err != nil {
				return err
			}
			r.claimed, err = store.Claim(ctx, tx, ns, nil)
			return err
		})
		result <- r
	}()
	var pid uint32
	select {
	case pid = <-pids:
	case <-ctx.Done():
		t.Fatalf("the claim's transaction did not begin: %v", ctx.Err())
	}
	if pid == 0 {
		t.Fatalf("the claim's transaction: read its backend pid: %v", (<-result).err)
	}
	for {
		var waiting bool
		if err := pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_locks WHERE pid = $1 AND NOT granted)`, pid).Scan(&waiting); err != nil {
			t.Fatalf("wait for the claim to wait for a lock: %v", err)
		}
		if waiting {
			return result
		}
		select {
		case r := <-result:
			t.Fatalf("the claim returned %+v without waiting for a lock", r)
		case <-time.After(time.Millisecond):
		}
	}
}

// claimInFlight claims n in a transaction it leaves open (rolled back
// when the test ends) and returns it.
func claimInFlight(ctx context.Context, t *testing.T, pool *pgxpool.Pool, n store.Notification) pgx.Tx {
	t.Helper()
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	if ok, err := store.Claim(ctx, tx, []store.Notification{n}, nil); err != nil || !ok[0] {
		t.Fatalf("%s claim: %v, %v", n.Kind, ok, err)
	}
	return tx
}

// claim claims ns in a transaction of its own, which it commits.
func claim(ctx context.Context, db postgres.TxBeginner, ns ...store.Notification) ([]bool, error) {
	var claimed []bool
	err := postgres.WithTx(ctx, db, func(tx pgx.Tx) error {
		var err error
		claimed, err = store.Claim(ctx, tx, ns, nil)
		return err
	})
	return claimed, err
}

func TestClaimOncePerOrderAndKind(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx := context.Background()
	order := uuid.NewString()

	tests := []struct {
		name string
		ns   []store.Notification
		want []bool
	}{
		{"first received", []store.Notification{notification(order, "received")}, []bool{true}},
		{"received again", []store.Notification{notification(order, "received")}, []bool{false}},
		{"confirmed", []store.Notification{notification(order, "confirmed")}, []bool{true}},
		{"received of another order", []store.Notification{notification(uuid.NewString(), "received")}, []bool{true}},
		{
			"a batch, reported in its order",
			[]store.Notification{notification(order, "rejected"), notification(order, "received"), notification(uuid.NewString(), "rejected")},
			[]bool{true, false, true},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := claim(ctx, pool, tt.ns...)
			if err != nil {
				t.Fatalf("claim: %v", err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("claimed (-want +got):\n%s", diff)
			}
		})
	}

	ns, err := store.List(ctx, pool, order)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	want := []store.Notification{notification(order, "received"), notification(order, "confirmed"), notification(order, "rejected")}
	opts := []cmp.Option{
		cmpopts.IgnoreFields(store.Notification{}, "EventID", "SentAt"),
		cmpopts.SortSlices(func(a, b store.Notification) bool { return a.Kind < b.Kind }),
	}
	if diff := cmp.Diff(want, ns, opts...); diff != "" {
		t.Errorf("notifications (-want +got):\n%s", diff)
	}
	for _, n := range ns {
		if n.SentAt.IsZero() || n.EventID == "" {
			t.Errorf("notification %+v lacks its event id or time", n)
		}
	}
}

func TestClaimRejectsUnknownKind(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	if _, err := claim(context.Background(), pool, notification(uuid.NewString(), "shipped")); err == nil {
		t.Error("claimed a notification of an unknown kind")
	}
}

// TestClaimWaitsForAConcurrentClaim shows what the app relies on: a second
// claim of the same order and kind waits for the first transaction, then
// loses if it committed and wins if it rolled back.
func TestClaimWaitsForAConcurrentClaim(t *testing.T) {
	tests := []struct {
		name         string
		firstCommits bool
		wantSecond   bool
	}{
		{name: "first commits", firstCommits: true, wantSecond: false},
		{name: "first rolls back", firstCommits: false, wantSecond: true},
	}
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			n := notification(uuid.NewString(), "rejected")

			first, err := pool.Begin(ctx)
			if err != nil {
				t.Fatalf("begin: %v", err)
			}
			defer first.Rollback(ctx)
			if ok, err := store.Claim(ctx, first, []store.Notification{n}, nil); err != nil || !ok[0] {
				t.Fatalf("first claim: %v, %v", ok, err)
			}

			// With another notification, which it claims either way.
			second := claimBlocked(ctx, t, pool, notification(uuid.NewString(), "rejected"), n)

			if tt.firstCommits {
				err = first.Commit(ctx)
			} else {
				err = first.Rollback(ctx)
			}
			if err != nil {
				t.Fatalf("end first transaction: %v", err)
			}
			r := <-second
			if r.err != nil {
				t.Fatalf("second claim: %v", r.err)
			}
			if diff := cmp.Diff([]bool{true, tt.wantSecond}, r.claimed); diff != "" {
				t.Errorf("second claimed (-want +got):\n%s", diff)
			}
		})
	}
}

// TestClaimWaitsForASupersedingClaimInFlight: a confirmation claimed
// while another transaction (another instance) holds the same order's
// cancellation claim, and is sending its email, waits for it, and is not
// claimed once that transaction commits: the customer's last email is
// never a confirmation sent after the cancellation.
func TestClaimWaitsForASupersedingClaimInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	order := uuid.NewString()
	first := claimInFlight(ctx, t, pool, notification(order, "cancelled"))
	confirmed := notification(order, "confirmed")
	confirmed.SupersededBy = "cancelled"
	second := claimBlocked(ctx, t, pool, confirmed)
	if err := first.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	r := <-second
	if r.err != nil || len(r.claimed) != 1 || r.claimed[0] {
		t.Errorf("confirmation claim = %v, %v; want it not claimed, the cancellation committed", r.claimed, r.err)
	}
}

// TestClaimOfAnotherKindDoesNotWait: claims of an order's notifications
// that do not supersede each other (received, confirmed) do not wait for
// each other's transactions.
func TestClaimOfAnotherKindDoesNotWait(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	order := uuid.NewString()
	claimInFlight(ctx, t, pool, notification(order, "received"))
	confirmed := notification(order, "confirmed")
	confirmed.SupersededBy = "cancelled"
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if ok, err := claim(wctx, pool, confirmed); err != nil || !ok[0] {
		t.Errorf("confirmation claim while the received one is in flight = %v, %v; want claimed at once", ok, err)
	}
}

// TestClaimTakesItsClaimsInOrder: a transaction claiming C and A (in that
// order) claims A first, so while it waits for A, held by another
// transaction, it holds nothing that transaction could wait for: the other
// claims C without waiting, instead of deadlocking.
func TestClaimTakesItsClaimsInOrder(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	a := notification("a-"+uuid.NewString(), "received")
	c := notification("c-"+uuid.NewString(), "received")

	first, err := pool.Begin(ctx)
	if err != nil {
		t.Fatalf("begin: %v", err)
	}
	defer first.Rollback(ctx)
	if ok, err := store.Claim(ctx, first, []store.Notification{a}, nil); err != nil || !ok[0] {
		t.Fatalf("claim A: %v, %v", ok, err)
	}

	second := claimBlocked(ctx, t, pool, c, a) // It waits for A.

	// Not claimed by the second transaction yet, C is free: no wait, no
	// deadlock. Had the second claimed C before waiting for A, this would
	// wait for it: a deadlock, which PostgreSQL reports (after
	// deadlock_timeout, a second by default) by failing one of the two.
	if ok, err := store.Claim(ctx, first, []store.Notification{c}, nil); err != nil || !ok[0] {
		t.Fatalf("claim C while the other transaction waits: %v, %v", ok, err)
	}
	if err := first.Commit(ctx); err != nil {
		t.Fatalf("commit: %v", err)
	}
	r := <-second
	if r.err != nil {
		t.Fatalf("second claim: %v", r.err)
	}
	if diff := cmp.Diff([]bool{false, false}, r.claimed); diff != "" {
		t.Errorf("second claimed (-want +got):\n%s", diff)
	}
}

// TestClaimRunsWhatFollows queues, after the claims, the insert of an
// outbox row, as the app does: it runs whether or not the claims were
// won, and an error in it, or from then, fails the claim.
func TestClaimRunsWhatFollows(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	ctx := context.Background()
	order := uuid.NewString()
	then := func(b *pgx.Batch) error {
		return outbox.Queue(b, eventbus.Message{Meta: eventbus.Meta{ID: uuid.NewString(), Type: "t", RoutingKey: "k", Source: "notification"}})
	}
	claimThen := func(then func(*pgx.Batch) error, ns ...store.Notification) ([]bool, error) {
		var claimed []bool
		err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			claimed, err = store.Claim(ctx, tx, ns, then)
			return err
		})
		return claimed, err
	}
	outboxRows := func() int {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox`).Scan(&n); err != nil {
			t.Fatalf("count outbox: %v", err)
		}
		return n
	}

	if ok, err := claimThen(then, notification(order, "received")); err != nil || !ok[0] {
		t.Fatalf("first claim: %v, %v; want claimed", ok, err)
	}
	if ok, err := claimThen(then, notification(order, "received")); err != nil || ok[0] {
		t.Fatalf("second claim: %v, %v; want not claimed", ok, err)
	}
	if n := outboxRows(); n != 2 {
		t.Errorf("outbox has %d rows, want 2: what follows runs either way", n)
	}

	failing := func(b *pgx.Batch) error {
		b.Queue(`INSERT INTO outbox (id) VALUES ('x')`) // violates NOT NULL
		return nil
	}
	if _, err := claimThen(failing, notification(order, "cancelled")); err == nil {
		t.Error("a claim followed by a failing statement succeeded")
	}
	errThen := errors.New("cannot queue")
	if _, err := claimThen(func(*pgx.Batch) error { return errThen }, notification(order, "cancelled")); !errors.Is(err, errThen) {
		t.Errorf("claim with a failing then: err = %v, want %v", err, errThen)
	}
	ns, err := store.List(ctx, pool, order)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(ns) != 1 || ns[0].Kind != "received" {
		t.Errorf("notifications after failed claims = %+v, want received only", ns)
	}
}

// TestRelease deletes the given claims and outbox rows of the transaction
// and nothing else.
func TestRelease(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	ctx := context.Background()
	order := uuid.NewString()
	received, confirmed := notification(order, "received"), notification(order, "confirmed")
	msgs := []eventbus.Message{
		{Meta: eventbus.Meta{ID: uuid.NewString(), Type: "t", RoutingKey: "k", Source: "notification"}},
		{Meta: eventbus.Meta{ID: uuid.NewString(), Type: "t", RoutingKey: "k", Source: "notification"}},
	}
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		ok, err := store.Claim(ctx, tx, []store.Notification{received, confirmed}, func(b *pgx.Batch) error {
			return outbox.Queue(b, msgs...)
		})
		if err != nil {
			return err
		}
		if !ok[0] || !ok[1] {
			t.Errorf("claimed = %v, want both", ok)
		}
		if err := store.Release(ctx, tx, nil, nil); err != nil {
			return err
		}
		return store.Release(ctx, tx, []store.Notification{confirmed}, []string{msgs[1].ID})
	})
	if err != nil {
		t.Fatalf("claim and release: %v", err)
	}
	ns, err := store.List(ctx, pool, order)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if len(ns) != 1 || ns[0].Kind != "received" {
		t.Errorf("notifications = %+v, want received only", ns)
	}
	pending, err := outbox.Pending(ctx, pool, 10)
	if err != nil {
		t.Fatalf("pending: %v", err)
	}
	if len(pending) != 1 || pending[0].ID != msgs[0].ID {
		t.Errorf("outbox = %+v, want %s only", pending, msgs[0].ID)
	}
}

// TestReleaseByIndexAfterTheTableGrew releases batches of claims on one
// connection while the notifications table is small, until PostgreSQL
// caches a generic plan, then grows the table: releasing must still find
// the notifications it deletes by index, not read the whole table.
func TestReleaseByIndexAfterTheTableGrew(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	// release claims 20 notifications in a transaction on conn and
	// releases them; it returns the transaction uncommitted, with the
	// sequential reads of notifications before the release.
	release := func() (pgx.Tx, int64) {
		t.Helper()
		ns := make([]store.Notification, 20)
		for i := range ns {
			ns[i] = notification(uuid.NewString(), "received")
		}
		tx, err := conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Claim(ctx, tx, ns, nil); err != nil {
			t.Fatal(err)
		}
		before := postgrestest.SeqTuplesRead(t, tx, "notifications")
		if err := store.Release(ctx, tx, ns, nil); err != nil {
			t.Fatal(err)
		}
		return tx, before
	}
	// More than the five custom plans after which PostgreSQL may settle
	// on a generic one; a few notifications stay, so the table is not
	// empty.
	if _, err := claim(ctx, conn, notification(uuid.NewString(), "received")); err != nil {
		t.Fatal(err)
	}
	for range 8 {
		tx, _ := release()
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `
		INSERT INTO notifications (order_id, kind, recipient, message_id, event_id)
		SELECT gen_random_uuid()::text, 'received', 'ada@example.com', i || '@ordermesh', gen_random_uuid()::text
		FROM generate_series(1, 20000) AS i`); err != nil {
		t.Fatal(err)
	}
	tx, before := release()
	defer func() { _ = tx.Rollback(ctx) }()
	if n := postgrestest.SeqTuplesRead(t, tx, "notifications") - before; n > 0 {
		t.Errorf("releasing 20 claims read %d notifications sequentially, want them read by index", n)
	}
}

func TestClaimSupersededByARecordedKind(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx := context.Background()
	confirmedOf := func(order string) store.Notification {
		n := notification(order, "confirmed")
		n.SupersededBy = "cancelled"
		return n
	}
	early, late := uuid.NewString(), uuid.NewString()
	for _, step := range []struct {
		name string
		ns   []store.Notification
		want []bool
	}{
		{"confirmed before its order's cancellation", []store.Notification{confirmedOf(early)}, []bool{true}},
		{"the cancellations", []store.Notification{notification(early, "cancelled"), notification(late, "cancelled")}, []bool{true, true}},
		// Only the superseded kind: received is claimed.
		{"confirmed after its order's cancellation", []store.Notification{confirmedOf(late), notification(late, "received")}, []bool{false, true}},
	} {
		got, err := claim(ctx, pool, step.ns...)
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		if diff := cmp.Diff(step.want, got); diff != "" {
			t.Errorf("%s: claimed (-want +got):\n%s", step.name, diff)
		}
	}
}
