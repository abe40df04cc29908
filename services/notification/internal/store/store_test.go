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

func claim(ctx context.Context, db postgres.TxBeginner, n store.Notification) (bool, error) {
	var claimed bool
	err := postgres.WithTx(ctx, db, func(tx pgx.Tx) error {
		var err error
		claimed, err = store.Claim(ctx, tx, n, nil)
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
		n    store.Notification
		want bool
	}{
		{"first received", notification(order, "received"), true},
		{"received again", notification(order, "received"), false},
		{"confirmed", notification(order, "confirmed"), true},
		{"received of another order", notification(uuid.NewString(), "received"), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := claim(ctx, pool, tt.n)
			if err != nil {
				t.Fatalf("claim: %v", err)
			}
			if got != tt.want {
				t.Errorf("claimed = %v, want %v", got, tt.want)
			}
		})
	}

	ns, err := store.List(ctx, pool, order)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	want := []store.Notification{notification(order, "received"), notification(order, "confirmed")}
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
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			n := notification(uuid.NewString(), "rejected")

			first, err := pool.Begin(ctx)
			if err != nil {
				t.Fatalf("begin: %v", err)
			}
			defer first.Rollback(ctx)
			if ok, err := store.Claim(ctx, first, n, nil); err != nil || !ok {
				t.Fatalf("first claim: %v, %v", ok, err)
			}

			type result struct {
				claimed bool
				err     error
			}
			second := make(chan result, 1)
			go func() {
				ok, err := claim(ctx, pool, n)
				second <- result{ok, err}
			}()
			select {
			case r := <-second:
				t.Fatalf("second claim returned %+v while the first transaction was open", r)
			case <-time.After(200 * time.Millisecond):
			}

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
			if r.claimed != tt.wantSecond {
				t.Errorf("second claimed = %v, want %v", r.claimed, tt.wantSecond)
			}
		})
	}
}

// TestClaimKeepsWhatFollowsOnlyWhenItClaims queues, after each claim, the
// insert of another notification, as the app queues its outbox row: it
// stays when the claim is won and is undone when the claim was held
// already, and an error in it fails the claim.
func TestClaimKeepsWhatFollowsOnlyWhenItClaims(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx := context.Background()
	order := uuid.NewString()
	// then inserts the order's notification of kind, or fails in the
	// database for an unknown kind.
	then := func(kind string) func(*pgx.Batch) error {
		return func(b *pgx.Batch) error {
			n := notification(order, kind)
			b.Queue(`INSERT INTO notifications (order_id, kind, recipient, message_id, event_id) VALUES ($1, $2, $3, $4, $5)`,
				n.OrderID, n.Kind, n.Recipient, n.MessageID, n.EventID)
			return nil
		}
	}
	claimThen := func(n store.Notification, then func(*pgx.Batch) error) (bool, error) {
		var claimed bool
		err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
			var err error
			claimed, err = store.Claim(ctx, tx, n, then)
			return err
		})
		return claimed, err
	}
	kinds := func() []string {
		ns, err := store.List(ctx, pool, order)
		if err != nil {
			t.Fatalf("list: %v", err)
		}
		var ks []string
		for _, n := range ns {
			ks = append(ks, n.Kind)
		}
		return ks
	}

	if ok, err := claimThen(notification(order, "received"), then("confirmed")); err != nil || !ok {
		t.Fatalf("first claim: %v, %v; want claimed", ok, err)
	}
	if diff := cmp.Diff([]string{"confirmed", "received"}, kinds(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("after a won claim, kinds (-want +got):\n%s", diff)
	}

	if ok, err := claimThen(notification(order, "received"), then("rejected")); err != nil || ok {
		t.Fatalf("second claim: %v, %v; want not claimed", ok, err)
	}
	if diff := cmp.Diff([]string{"confirmed", "received"}, kinds(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("after a lost claim, kinds (-want +got):\n%s", diff)
	}

	if _, err := claimThen(notification(order, "cancelled"), then("shipped")); err == nil {
		t.Error("a claim followed by a failing statement succeeded")
	}
	errThen := errors.New("cannot queue")
	if _, err := claimThen(notification(order, "cancelled"), func(*pgx.Batch) error { return errThen }); !errors.Is(err, errThen) {
		t.Errorf("claim with a failing then: err = %v, want %v", err, errThen)
	}
	if diff := cmp.Diff([]string{"confirmed", "received"}, kinds(), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
		t.Errorf("after failed claims, kinds (-want +got):\n%s", diff)
	}
}
