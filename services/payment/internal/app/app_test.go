package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/payment/internal/app"
	"github.com/ordermesh/ordermesh/services/payment/internal/payment"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
	"github.com/ordermesh/ordermesh/services/payment/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	pool     *pgxpool.Pool
	provider *provider.Deterministic
	app      *app.App
}

// newFixture gives a test its own migrated schema (payment, outbox and
// inbox tables), its own deterministic provider and an App on both.
func newFixture(t *testing.T) fixture {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations, inbox.Migrations)
	p := provider.NewDeterministic()
	return fixture{pool: pool, provider: p, app: app.New(pool, p, quiet)}
}

// inTx runs an event handler the way the inbox runner does: in one
// transaction, with its returned events written to the outbox.
func inTx[E any](t *testing.T, f fixture, h func(context.Context, pgx.Tx, E, eventbus.Meta) ([]proto.Message, error), ev E) error {
	t.Helper()
	ctx := context.Background()
	return postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
		out, err := h(ctx, tx, ev, eventbus.Meta{})
		if err != nil {
			return err
		}
		return outbox.AddEvents(ctx, tx, app.Source, "", out...)
	})
}

// mustTx is inTx failing the test on error.
func mustTx[E any](t *testing.T, f fixture, h func(context.Context, pgx.Tx, E, eventbus.Meta) ([]proto.Message, error), ev E) {
	t.Helper()
	if err := inTx(t, f, h, ev); err != nil {
		t.Fatalf("handle %T: %v", ev, err)
	}
}

func (f fixture) payment(t *testing.T, orderID string) payment.Payment {
	t.Helper()
	p, err := f.app.Payment(context.Background(), orderID)
	if err != nil {
		t.Fatalf("payment of %s: %v", orderID, err)
	}
	return p
}

// outboxEvents decodes the events waiting in the outbox, oldest first.
func outboxEvents(t *testing.T, pool *pgxpool.Pool) []proto.Message {
	t.Helper()
	msgs, err := outbox.Pending(context.Background(), pool, 1000)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	var out []proto.Message
	for _, m := range msgs {
		ev, err := eventbus.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func diffEvents(t *testing.T, want []proto.Message, pool *pgxpool.Pool) {
	t.Helper()
	if diff := cmp.Diff(want, outboxEvents(t, pool), protocmp.Transform()); diff != "" {
		t.Errorf("outbox events (-want +got):\n%s", diff)
	}
}

// total is the amount every test order costs: EUR 21.03.
var total = provider.Money{CurrencyCode: "EUR", Units: 21, Nanos: 30_000_000}

func totalProto() *moneyv1.Money {
	return &moneyv1.Money{CurrencyCode: total.CurrencyCode, Units: total.Units, Nanos: total.Nanos}
}

func created(id, token string) *orderv1.OrderCreated {
	return &orderv1.OrderCreated{
		OrderId:       id,
		CustomerEmail: "ada@example.com",
		Items:         []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 3, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 7, Nanos: 10_000_000}}},
		Total:         totalProto(),
		PaymentToken:  token,
		CreateTime:    timestamppb.Now(),
	}
}

func rejected(id string) *orderv1.OrderRejected {
	return &orderv1.OrderRejected{OrderId: id, CustomerEmail: "ada@example.com", Reason: "out of stock: SKU-1 (wanted 3, have 1)"}
}

func cancelled(id string) *orderv1.OrderCancelled {
	return &orderv1.OrderCancelled{OrderId: id, CustomerEmail: "ada@example.com", Reason: "changed my mind"}
}

func TestChargeSucceeds(t *testing.T) {
	f := newFixture(t)
	id := uuid.NewString()
	mustTx(t, f, f.app.OrderCreated, created(id, "tok_visa"))

	charges := f.provider.Charges()
	if len(charges) != 1 || charges[0].Amount != total {
		t.Fatalf("provider charges = %+v, want one of %v", charges, total)
	}
	diffEvents(t, []proto.Message{&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()}}, f.pool)
	want := payment.Payment{OrderID: id, Status: payment.StatusCharged, Amount: total, ChargeID: charges[0].ID}
	if diff := cmp.Diff(want, f.payment(t, id)); diff != "" {
		t.Errorf("payment record (-want +got):\n%s", diff)
	}
}

func TestDeclineFailsPayment(t *testing.T) {
	f := newFixture(t)
	id := uuid.NewString()
	// A decline is an outcome, not an error: no retry.
	mustTx(t, f, f.app.OrderCreated, created(id, provider.TokenDecline))

	const reason = "payment declined: card declined"
	diffEvents(t, []proto.Message{&paymentv1.PaymentFailed{OrderId: id, Reason: reason}}, f.pool)
	want := payment.Payment{OrderID: id, Status: payment.StatusFailed, Amount: total, Reason: reason}
	if diff := cmp.Diff(want, f.payment(t, id)); diff != "" {
		t.Errorf("payment record (-want +got):\n%s", diff)
	}
	if n := len(f.provider.Charges()); n != 0 {
		t.Errorf("provider made %d charges, want none", n)
	}
	// The order is then rejected: there is nothing to refund.
	mustTx(t, f, f.app.OrderRejected, rejected(id))
	if n := len(outboxEvents(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d events after rejecting a declined order, want 1", n)
	}
	if n := len(f.provider.Refunds()); n != 0 {
		t.Errorf("provider made %d refunds, want none", n)
	}
}

// TestUnavailableProviderIsRetried delivers order.created the way the
// bus's retry ladder does: the first two attempts fail with a retryable
// error and leave nothing behind, the third charges once.
func TestUnavailableProviderIsRetried(t *testing.T) {
	f := newFixture(t)
	id := uuid.NewString()
	for attempt := 1; attempt <= provider.UnavailableAttempts; attempt++ {
		err := inTx(t, f, f.app.OrderCreated, created(id, provider.TokenUnavailable))
		if !errors.Is(err, provider.ErrUnavailable) || eventbus.IsPermanent(err) {
			t.Fatalf("attempt %d: err = %v, want a retryable ErrUnavailable", attempt, err)
		}
		if p := f.payment(t, id); p.Status != payment.StatusNone {
			t.Fatalf("attempt %d left a payment record %+v", attempt, p)
		}
	}
	mustTx(t, f, f.app.OrderCreated, created(id, provider.TokenUnavailable))

	charges := f.provider.Charges()
	if len(charges) != 1 {
		t.Fatalf("provider charges = %+v, want one", charges)
	}
	if got := f.provider.ChargeAttempts(id); got != provider.UnavailableAttempts+1 {
		t.Errorf("charge attempts = %d, want %d", got, provider.UnavailableAttempts+1)
	}
	diffEvents(t, []proto.Message{&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()}}, f.pool)
}

func TestInvalidChargeIsPermanent(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name  string
		event *orderv1.OrderCreated
		want  error
	}{
		{"bad currency", func() *orderv1.OrderCreated {
			ev := created(uuid.NewString(), "tok_visa")
			ev.Total.CurrencyCode = "eur"
			return ev
		}(), provider.ErrInvalidRequest},
		{"negative total", func() *orderv1.OrderCreated {
			ev := created(uuid.NewString(), "tok_visa")
			ev.Total.Units = -1
			return ev
		}(), provider.ErrInvalidRequest},
		{"bad order id", created("order-1", "tok_visa"), nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := inTx(t, f, f.app.OrderCreated, tt.event)
			if !eventbus.IsPermanent(err) || (tt.want != nil && !errors.Is(err, tt.want)) {
				t.Errorf("err = %v, want a permanent error (wrapping %v)", err, tt.want)
			}
		})
	}
	diffEvents(t, nil, f.pool)
	if n := len(f.provider.Charges()); n != 0 {
		t.Errorf("provider made %d charges, want none", n)
	}
}

// TestDuplicateCreatedChargesOnce delivers order.created again and again:
// under the same event id (through the real inbox runner, concurrently)
// and under new ids (a republished event). The order is charged once.
func TestDuplicateCreatedChargesOnce(t *testing.T) {
	f := newFixture(t)
	runner := inbox.NewRunner(f.pool, app.Source, inbox.Metrics{})
	handle := inbox.Wrap(runner, f.app.OrderCreated)
	ctx := context.Background()
	id := uuid.NewString()
	meta := eventbus.Meta{ID: uuid.NewString(), Type: "ordermesh.order.v1.OrderCreated", CorrelationID: id}

	var g errgroup.Group
	for range 8 {
		g.Go(func() error { return handle(ctx, created(id, "tok_visa"), meta) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("deliver order.created: %v", err)
	}
	for range 3 {
		other := meta
		other.ID = uuid.NewString()
		if err := handle(ctx, created(id, "tok_visa"), other); err != nil {
			t.Fatalf("deliver order.created under a new id: %v", err)
		}
	}

	charges := f.provider.Charges()
	if len(charges) != 1 {
		t.Fatalf("provider charges = %+v, want one", charges)
	}
	if got := f.provider.ChargeAttempts(id); got != 1 {
		t.Errorf("charge attempts = %d, want 1 (repeats must not reach the provider)", got)
	}
	if got, want := runner.Counts(), (inbox.Counts{Processed: 4, Duplicates: 7}); got != want {
		t.Errorf("runner counts = %+v, want %+v", got, want)
	}
	diffEvents(t, []proto.Message{&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()}}, f.pool)
	var corr, source string
	if err := f.pool.QueryRow(ctx, `SELECT correlation_id, source FROM outbox`).Scan(&corr, &source); err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	if corr != id || source != app.Source {
		t.Errorf("outbox correlation %q, source %q; want %q, %q", corr, source, id, app.Source)
	}
}

func TestRefund(t *testing.T) {
	tests := []struct {
		name string
		end  func(t *testing.T, f fixture, id string)
	}{
		{"rejected", func(t *testing.T, f fixture, id string) { mustTx(t, f, f.app.OrderRejected, rejected(id)) }},
		{"cancelled", func(t *testing.T, f fixture, id string) { mustTx(t, f, f.app.OrderCancelled, cancelled(id)) }},
		{"rejected and cancelled", func(t *testing.T, f fixture, id string) {
			mustTx(t, f, f.app.OrderRejected, rejected(id))
			mustTx(t, f, f.app.OrderCancelled, cancelled(id))
			mustTx(t, f, f.app.OrderRejected, rejected(id))
		}},
		{"rejected and cancelled at once", func(t *testing.T, f fixture, id string) {
			var g errgroup.Group
			for range 4 {
				g.Go(func() error { return inTx(t, f, f.app.OrderRejected, rejected(id)) })
				g.Go(func() error { return inTx(t, f, f.app.OrderCancelled, cancelled(id)) })
			}
			if err := g.Wait(); err != nil {
				t.Fatalf("handle: %v", err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			id := uuid.NewString()
			mustTx(t, f, f.app.OrderCreated, created(id, "tok_visa"))
			tt.end(t, f, id)

			charges, refunds := f.provider.Charges(), f.provider.Refunds()
			if len(charges) != 1 || len(refunds) != 1 {
				t.Fatalf("provider: %d charges, %d refunds; want one each", len(charges), len(refunds))
			}
			diffEvents(t, []proto.Message{
				&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()},
				&paymentv1.PaymentRefunded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()},
			}, f.pool)
			want := payment.Payment{OrderID: id, Status: payment.StatusRefunded, Amount: total, ChargeID: charges[0].ID, RefundID: refunds[0].ID}
			if diff := cmp.Diff(want, f.payment(t, id)); diff != "" {
				t.Errorf("payment record (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEndedBeforeCreatedNeverCharges(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T, f fixture, id string)
	}{
		{"cancelled first", func(t *testing.T, f fixture, id string) { mustTx(t, f, f.app.OrderCancelled, cancelled(id)) }},
		{"rejected first", func(t *testing.T, f fixture, id string) { mustTx(t, f, f.app.OrderRejected, rejected(id)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			id := uuid.NewString()
			tt.first(t, f, id)
			mustTx(t, f, f.app.OrderCreated, created(id, "tok_visa"))
			mustTx(t, f, f.app.OrderCancelled, cancelled(id))

			if p := f.payment(t, id); p.Status != payment.StatusBlocked {
				t.Errorf("payment status = %v, want BLOCKED", p.Status)
			}
			if got := f.provider.ChargeAttempts(id); got != 0 {
				t.Errorf("provider saw %d charge attempts, want none", got)
			}
			diffEvents(t, nil, f.pool)
		})
	}
}

// TestCreatedRacingCancelled handles each order's order.created and
// order.cancelled at the same time. Whichever wins, no money is kept: an
// order is either never charged (blocked) or charged and refunded.
func TestCreatedRacingCancelled(t *testing.T) {
	f := newFixture(t)
	ids := make([]string, 20)
	var g errgroup.Group
	for i := range ids {
		ids[i] = uuid.NewString()
		g.Go(func() error { return inTx(t, f, f.app.OrderCreated, created(ids[i], "tok_visa")) })
		g.Go(func() error { return inTx(t, f, f.app.OrderCancelled, cancelled(ids[i])) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("handle: %v", err)
	}
	var refunded int
	for _, id := range ids {
		switch p := f.payment(t, id); p.Status {
		case payment.StatusRefunded:
			refunded++
		case payment.StatusBlocked:
		default:
			t.Errorf("order %s: payment %v, want REFUNDED or BLOCKED", id, p.Status)
		}
	}
	if c, r := len(f.provider.Charges()), len(f.provider.Refunds()); c != refunded || r != refunded {
		t.Errorf("provider: %d charges, %d refunds; want %d each", c, r, refunded)
	}
}
