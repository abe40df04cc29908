package store_test

import (
	"context"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/payment/internal/payment"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
	"github.com/ordermesh/ordermesh/services/payment/internal/store"
)

var amount = provider.Money{CurrencyCode: "EUR", Units: 21, Nanos: 30_000_000}

// save loads ids and saves ps in one transaction, as a handler does.
func save(ctx context.Context, pool *pgxpool.Pool, ids []string, ps ...payment.Payment) error {
	return postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := store.Load(ctx, tx, ids); err != nil {
			return err
		}
		return store.Save(ctx, tx, ps)
	})
}

func TestLoadAndSave(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx := context.Background()
	charged, blocked, unknown := uuid.NewString(), uuid.NewString(), uuid.NewString()
	ids := []string{charged, blocked, unknown, charged}

	want := map[string]payment.Payment{
		charged: {OrderID: charged, Status: payment.StatusCharged, Amount: amount, ChargeID: "ch_1"},
		blocked: {OrderID: blocked, Status: payment.StatusBlocked},
	}
	if err := save(ctx, pool, ids, want[charged], want[blocked]); err != nil {
		t.Fatalf("insert: %v", err)
	}
	refunded := want[charged]
	refunded.Status, refunded.RefundID = payment.StatusRefunded, "re_1"
	if err := save(ctx, pool, ids, refunded); err != nil {
		t.Fatalf("refund: %v", err)
	}
	want[charged] = refunded
	want[unknown] = payment.Payment{OrderID: unknown}

	var got map[string]payment.Payment
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		var err error
		got, err = store.Load(ctx, tx, ids)
		return err
	})
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("loaded payments (-want +got):\n%s", diff)
	}
	for id, w := range want {
		p, err := store.Get(ctx, pool, id)
		if err != nil {
			t.Fatalf("get %s: %v", id, err)
		}
		if diff := cmp.Diff(w, p); diff != "" {
			t.Errorf("payment of %s (-want +got):\n%s", id, diff)
		}
	}
}

// TestSaveChangesChargedOnly saves payments over recorded ones that may
// not change: every save fails, and nothing is written.
func TestSaveChangesChargedOnly(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations)
	ctx := context.Background()
	blocked, refunded, fresh := uuid.NewString(), uuid.NewString(), uuid.NewString()
	recorded := []payment.Payment{
		{OrderID: blocked, Status: payment.StatusBlocked},
		{OrderID: refunded, Status: payment.StatusRefunded, Amount: amount, ChargeID: "ch_1", RefundID: "re_1"},
	}
	if err := save(ctx, pool, []string{blocked, refunded}, recorded...); err != nil {
		t.Fatalf("insert: %v", err)
	}
	tests := []struct {
		name string
		p    payment.Payment
	}{
		{"charge a blocked order", payment.Payment{OrderID: blocked, Status: payment.StatusCharged, Amount: amount, ChargeID: "ch_2"}},
		{"refund a refunded order again", payment.Payment{OrderID: refunded, Status: payment.StatusRefunded, Amount: amount, ChargeID: "ch_1", RefundID: "re_2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			newOne := payment.Payment{OrderID: fresh, Status: payment.StatusBlocked}
			if err := save(ctx, pool, []string{tt.p.OrderID, fresh}, newOne, tt.p); err == nil {
				t.Fatal("save succeeded")
			}
		})
	}
	for _, want := range append(recorded, payment.Payment{OrderID: fresh}) {
		got, err := store.Get(ctx, pool, want.OrderID)
		if err != nil {
			t.Fatalf("get %s: %v", want.OrderID, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("payment of %s (-want +got):\n%s", want.OrderID, diff)
		}
	}
}
