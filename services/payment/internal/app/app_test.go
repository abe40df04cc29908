package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync/atomic"
	"testing"
	"time"

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

// handleBatch hands evs to the handler as one batch, the way the inbox
// runner does: in one transaction, under new event ids, writing the events
// of the deliveries that succeeded to the outbox and committing even when
// some failed. It returns each delivery's Result, or the error the handler
// returned for the whole batch, in which case nothing commits.
func handleBatch(t *testing.T, f fixture, evs ...proto.Message) ([]inbox.Result, error) {
	t.Helper()
	var results []inbox.Result
	err := postgres.WithTx(context.Background(), f.pool, func(tx pgx.Tx) error {
		var err error
		results, err = handleBatchIn(t, f, tx, evs...)
		return err
	})
	if err != nil {
		return nil, err
	}
	return results, nil
}

// handleBatchIn is handleBatch in tx, which the caller commits.
func handleBatchIn(t *testing.T, f fixture, tx pgx.Tx, evs ...proto.Message) ([]inbox.Result, error) {
	t.Helper()
	ctx := context.Background()
	ds := make([]inbox.Delivery, len(evs))
	for i, ev := range evs {
		ds[i] = inbox.Delivery{Event: ev, Meta: metaFor(ev)}
	}
	results, err := f.app.Handle(ctx, tx, ds)
	if err != nil {
		return nil, err
	}
	if len(results) != len(ds) {
		return nil, fmt.Errorf("handler returned %d results for %d deliveries", len(results), len(ds))
	}
	for i, r := range results {
		if r.Err != nil {
			continue
		}
		if err := outbox.AddEvents(ctx, tx, app.Source, ds[i].Meta.CorrelationID, r.Events...); err != nil {
			return nil, err
		}
	}
	return results, nil
}

// inTx runs ev as a batch of one (handleBatch) and returns its error.
func inTx(t *testing.T, f fixture, ev proto.Message) error {
	t.Helper()
	results, err := handleBatch(t, f, ev)
	if err != nil {
		return err
	}
	return results[0].Err
}

// mustTx is inTx failing the test on error.
func mustTx(t *testing.T, f fixture, ev proto.Message) {
	t.Helper()
	if err := inTx(t, f, ev); err != nil {
		t.Fatalf("handle %T: %v", ev, err)
	}
}

// metaFor returns the metadata of ev delivered under a new event id.
func metaFor(ev proto.Message) eventbus.Meta {
	var order string
	if o, ok := ev.(interface{ GetOrderId() string }); ok {
		order = o.GetOrderId()
	}
	return eventbus.Meta{ID: uuid.NewString(), Type: string(proto.MessageName(ev)), CorrelationID: order, Attempt: 1}
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
	mustTx(t, f, created(id, "tok_visa"))

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
	mustTx(t, f, created(id, provider.TokenDecline))

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
	mustTx(t, f, rejected(id))
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
		err := inTx(t, f, created(id, provider.TokenUnavailable))
		if !errors.Is(err, provider.ErrUnavailable) || !eventbus.IsUnavailable(err) {
			t.Fatalf("attempt %d: err = %v, want ErrUnavailable marked as an outage", attempt, err)
		}
		if p := f.payment(t, id); p.Status != payment.StatusNone {
			t.Fatalf("attempt %d left a payment record %+v", attempt, p)
		}
	}
	mustTx(t, f, created(id, provider.TokenUnavailable))

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
			err := inTx(t, f, tt.event)
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
// under the same event id (through the real inbox batch runner,
// concurrently, so copies share batches) and under new ids (a republished
// event). The order is charged once.
func TestDuplicateCreatedChargesOnce(t *testing.T) {
	f := newFixture(t)
	runner := inbox.NewRunner(f.pool, app.Source, inbox.Metrics{})
	handle := inbox.WrapBatch[*orderv1.OrderCreated](inbox.NewBatchRunner(runner, f.app.Handle, 32, time.Minute))
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
		{"rejected", func(t *testing.T, f fixture, id string) { mustTx(t, f, rejected(id)) }},
		{"cancelled", func(t *testing.T, f fixture, id string) { mustTx(t, f, cancelled(id)) }},
		{"rejected and cancelled", func(t *testing.T, f fixture, id string) {
			mustTx(t, f, rejected(id))
			mustTx(t, f, cancelled(id))
			mustTx(t, f, rejected(id))
		}},
		{"rejected and cancelled at once", func(t *testing.T, f fixture, id string) {
			var g errgroup.Group
			for range 4 {
				g.Go(func() error { return inTx(t, f, rejected(id)) })
				g.Go(func() error { return inTx(t, f, cancelled(id)) })
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
			mustTx(t, f, created(id, "tok_visa"))
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
		{"cancelled first", func(t *testing.T, f fixture, id string) { mustTx(t, f, cancelled(id)) }},
		{"rejected first", func(t *testing.T, f fixture, id string) { mustTx(t, f, rejected(id)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			id := uuid.NewString()
			tt.first(t, f, id)
			mustTx(t, f, created(id, "tok_visa"))
			mustTx(t, f, cancelled(id))

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

// answerLost is a provider whose charges go through but whose answers to
// them are lost on the way back.
type answerLost struct{ *provider.Deterministic }

func (p answerLost) Charge(ctx context.Context, req provider.ChargeRequest) (provider.Charge, error) {
	if _, err := p.Deterministic.Charge(ctx, req); err != nil {
		return provider.Charge{}, err
	}
	return provider.Charge{}, errors.New("read tcp 127.0.0.1:4242: i/o timeout")
}

// TestEndedAfterAChargeWhoseRecordDidNotCommit: the provider charged an
// order but the service's record of it did not commit (the transaction
// failed, or the delivery failed with an error of unknown kind after the
// provider acted), and the order ends before order.created comes again.
// The service finds the charge with the provider and refunds it; the
// order.created that comes again then changes nothing.
func TestEndedAfterAChargeWhoseRecordDidNotCommit(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, f fixture, id string)
	}{
		{"the charging transaction rolled back", func(t *testing.T, f fixture, id string) {
			errRollback := errors.New("commit lost")
			err := postgres.WithTx(context.Background(), f.pool, func(tx pgx.Tx) error {
				if _, err := handleBatchIn(t, f, tx, created(id, "tok_visa")); err != nil {
					return err
				}
				return errRollback
			})
			if !errors.Is(err, errRollback) {
				t.Fatalf("charging transaction: %v", err)
			}
			if p := f.payment(t, id); p.Status != payment.StatusNone {
				t.Fatalf("payment record %+v after the rollback, want none", p)
			}
			mustTx(t, f, cancelled(id))
		}},
		{"the provider was out when the order ended", func(t *testing.T, f fixture, id string) {
			var out atomic.Bool
			f.app = app.New(f.pool, down{f.provider, &out}, quiet)
			err := postgres.WithTx(context.Background(), f.pool, func(tx pgx.Tx) error {
				if _, err := handleBatchIn(t, f, tx, created(id, "tok_visa")); err != nil {
					return err
				}
				return errors.New("commit lost")
			})
			if err == nil {
				t.Fatal("the charging transaction committed")
			}
			out.Store(true)
			if err := inTx(t, f, cancelled(id)); !eventbus.IsUnavailable(err) {
				t.Fatalf("order.cancelled while the provider is out: %v, want an outage", err)
			}
			out.Store(false)
			mustTx(t, f, cancelled(id)) // its retry finds the charge
			if p := f.payment(t, id); p.Status != payment.StatusRefunded {
				t.Fatalf("payment %v after order.cancelled's retry, want refunded", p.Status)
			}
		}},
		{"order.created failed after the charge, order.rejected next in its batch", func(t *testing.T, f fixture, id string) {
			// The provider charges, but its answer is lost.
			f.app = app.New(f.pool, answerLost{f.provider}, quiet)
			results, err := handleBatch(t, f, created(id, "tok_visa"), rejected(id))
			if err != nil {
				t.Fatal(err)
			}
			if results[0].Err == nil || eventbus.IsPermanent(results[0].Err) || results[1].Err != nil {
				t.Fatalf("results: order.created %v, order.rejected %v; want a retryable error, then success", results[0].Err, results[1].Err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			id := uuid.NewString()
			tt.run(t, f, id)
			mustTx(t, f, created(id, "tok_visa")) // comes again: changes nothing
			wantRefundedOnce(t, f, id)
		})
	}
}

// TestChargeThatWentThroughAfterTheOrderWasBlocked: an attempt to charge
// went unanswered, the order ended meanwhile and was blocked (the
// provider showed no charge yet), and the charge went through after all.
// When order.created comes again, the service finds the charge with the
// provider and refunds it, once.
func TestChargeThatWentThroughAfterTheOrderWasBlocked(t *testing.T) {
	f := newFixture(t)
	id := uuid.NewString()
	mustTx(t, f, cancelled(id))
	if p := f.payment(t, id); p.Status != payment.StatusBlocked {
		t.Fatalf("payment %v after order.cancelled, want BLOCKED", p.Status)
	}
	// The unanswered attempt completes at the provider.
	if _, err := f.provider.Charge(context.Background(), provider.ChargeRequest{IdempotencyKey: id, Amount: total, Token: "tok_visa"}); err != nil {
		t.Fatal(err)
	}
	mustTx(t, f, created(id, "tok_visa"))
	mustTx(t, f, created(id, "tok_visa")) // and again: nothing more
	wantRefundedOnce(t, f, id)
}

// wantRefundedOnce checks that order id was charged once and that charge
// refunded once: by the provider, in the events and in the record.
func wantRefundedOnce(t *testing.T, f fixture, id string) {
	t.Helper()
	charges, refunds := f.provider.Charges(), f.provider.Refunds()
	if len(charges) != 1 || len(refunds) != 1 {
		t.Fatalf("provider: %d charges, %d refunds; want the charge refunded once", len(charges), len(refunds))
	}
	diffEvents(t, []proto.Message{
		&paymentv1.PaymentRefunded{OrderId: id, PaymentId: charges[0].ID, Amount: totalProto()},
	}, f.pool)
	want := payment.Payment{OrderID: id, Status: payment.StatusRefunded, Amount: total, ChargeID: charges[0].ID, RefundID: refunds[0].ID}
	if diff := cmp.Diff(want, f.payment(t, id)); diff != "" {
		t.Errorf("payment record (-want +got):\n%s", diff)
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
		g.Go(func() error { return inTx(t, f, created(ids[i], "tok_visa")) })
		g.Go(func() error { return inTx(t, f, cancelled(ids[i])) })
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

// TestCreatedAndCancelledInOneBatch hands an order's order.created and
// order.cancelled to the handler in one batch: they apply in turn, so the
// order is charged once and refunded once.
func TestCreatedAndCancelledInOneBatch(t *testing.T) {
	f := newFixture(t)
	id := uuid.NewString()
	results, err := handleBatch(t, f, created(id, "tok_visa"), cancelled(id))
	if err != nil {
		t.Fatalf("handle batch: %v", err)
	}
	for i, r := range results {
		if r.Err != nil {
			t.Errorf("delivery %d: %v", i, r.Err)
		}
	}

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
}

// TestOneBatchIsolatesFailures hands the handler one batch of several
// orders' events, some of which fail: each failed delivery fails alone,
// with a permanent or retryable error as its cause deserves, and leaves
// nothing behind, while the others take effect in the order they came.
func TestOneBatchIsolatesFailures(t *testing.T) {
	f := newFixture(t)
	o1, o2, o3, o4 := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	batch := []proto.Message{
		created(o1, "tok_visa"),
		created("order-1", "tok_visa"),
		created(o2, provider.TokenUnavailable),
		cancelled(o1),
		cancelled(o3),
		created(o3, "tok_visa"),
		created(o4, provider.TokenDecline),
		&orderv1.OrderConfirmed{OrderId: o4},
		rejected(o1),
	}
	results, err := handleBatch(t, f, batch...)
	if err != nil {
		t.Fatalf("handle batch: %v", err)
	}
	charges, refunds := f.provider.Charges(), f.provider.Refunds()
	if len(charges) != 1 || len(refunds) != 1 {
		t.Fatalf("provider: %d charges, %d refunds; want one each (order %s)", len(charges), len(refunds), o1)
	}
	const declined = "payment declined: card declined"
	// permanent and retryable mark a delivery that fails alone with such
	// an error (wrapping is, when set).
	type outcome struct {
		events               []proto.Message
		permanent, retryable bool
		is                   error
	}
	want := []outcome{
		{events: []proto.Message{&paymentv1.PaymentSucceeded{OrderId: o1, PaymentId: charges[0].ID, Amount: totalProto()}}},
		{permanent: true},
		{retryable: true, is: provider.ErrUnavailable},
		{events: []proto.Message{&paymentv1.PaymentRefunded{OrderId: o1, PaymentId: charges[0].ID, Amount: totalProto()}}},
		{},
		{},
		{events: []proto.Message{&paymentv1.PaymentFailed{OrderId: o4, Reason: declined}}},
		{permanent: true},
		{},
	}
	if len(results) != len(want) {
		t.Fatalf("%d results, want %d", len(results), len(want))
	}
	for i, r := range results {
		w := want[i]
		if diff := cmp.Diff(w.events, r.Events, protocmp.Transform()); diff != "" {
			t.Errorf("delivery %d (%T): events (-want +got):\n%s", i, batch[i], diff)
		}
		switch {
		case !w.permanent && !w.retryable && r.Err != nil:
			t.Errorf("delivery %d (%T): %v", i, batch[i], r.Err)
		case w.permanent && !eventbus.IsPermanent(r.Err),
			w.retryable && (r.Err == nil || eventbus.IsPermanent(r.Err)),
			w.is != nil && !errors.Is(r.Err, w.is):
			t.Errorf("delivery %d (%T): err = %v, want a permanent (%v) or retryable (%v) error wrapping %v", i, batch[i], r.Err, w.permanent, w.retryable, w.is)
		}
	}

	wantPayments := []payment.Payment{
		{OrderID: o1, Status: payment.StatusRefunded, Amount: total, ChargeID: charges[0].ID, RefundID: refunds[0].ID},
		{OrderID: o2},
		{OrderID: o3, Status: payment.StatusBlocked},
		{OrderID: o4, Status: payment.StatusFailed, Amount: total, Reason: declined},
	}
	for _, want := range wantPayments {
		if diff := cmp.Diff(want, f.payment(t, want.OrderID)); diff != "" {
			t.Errorf("payment record of %s (-want +got):\n%s", want.OrderID, diff)
		}
	}
	diffEvents(t, []proto.Message{
		&paymentv1.PaymentSucceeded{OrderId: o1, PaymentId: charges[0].ID, Amount: totalProto()},
		&paymentv1.PaymentRefunded{OrderId: o1, PaymentId: charges[0].ID, Amount: totalProto()},
		&paymentv1.PaymentFailed{OrderId: o4, Reason: declined},
	}, f.pool)
	if got := f.provider.ChargeAttempts(o3); got != 0 {
		t.Errorf("provider saw %d charge attempts for blocked order %s, want none", got, o3)
	}

	// The failed order.created of o2, delivered again until the provider
	// answers, charges it.
	for attempt := 2; attempt <= provider.UnavailableAttempts; attempt++ {
		if err := inTx(t, f, created(o2, provider.TokenUnavailable)); !errors.Is(err, provider.ErrUnavailable) {
			t.Fatalf("attempt %d: err = %v, want ErrUnavailable", attempt, err)
		}
	}
	mustTx(t, f, created(o2, provider.TokenUnavailable))
	if p := f.payment(t, o2); p.Status != payment.StatusCharged {
		t.Errorf("payment of %s after redelivery: %v, want CHARGED", o2, p.Status)
	}
}

// TestConcurrentBatchesOnOverlappingOrders runs batches holding the same
// orders in opposite orders in concurrent transactions, as two instances
// of the service would. They must neither deadlock nor charge an order
// twice: whichever batch takes an order first charges it, the other finds
// it charged. To make them overlap, a third transaction holds the lock of
// an order in the middle until both batches wait for a lock.
func TestConcurrentBatchesOnOverlappingOrders(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	for round := range 3 {
		ids := make([]string, 20)
		var forward, backward []proto.Message
		for i := range ids {
			ids[i] = uuid.NewString()
			forward = append(forward, created(ids[i], "tok_visa"))
		}
		for i := len(ids) - 1; i >= 0; i-- {
			backward = append(backward, created(ids[i], "tok_visa"))
			if i%2 == 0 {
				backward = append(backward, cancelled(ids[i]))
			}
		}
		middle := slices.Sorted(slices.Values(ids))[len(ids)/2]

		holder, err := f.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		// A test that fails early must not leave the lock held: the
		// batches would wait for it, and the fixture's cleanup for them.
		defer func() { _ = holder.Rollback(ctx) }()
		if _, err := store.Load(ctx, holder, []string{middle}); err != nil {
			t.Fatalf("lock order %s: %v", middle, err)
		}
		pids := make(chan uint32, 2)
		var g errgroup.Group
		for _, batch := range [][]proto.Message{forward, backward} {
			g.Go(func() error {
				return postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
					var pid uint32
					if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
						return err
					}
					pids <- pid
					results, err := handleBatchIn(t, f, tx, batch...)
					if err != nil {
						return err
					}
					for _, r := range results {
						if r.Err != nil {
							return r.Err
						}
					}
					return nil
				})
			})
		}
		deadline := time.Now().Add(10 * time.Second)
		var waiting []uint32
		for len(waiting) < 2 {
			select {
			case pid := <-pids:
				waiting = append(waiting, pid)
			case <-time.After(time.Until(deadline)):
				t.Fatalf("round %d: %d of the 2 batches began after 10 s", round, len(waiting))
			}
		}
		for n := 0; n < 2; time.Sleep(time.Millisecond) {
			if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM pg_locks WHERE pid = ANY($1) AND NOT granted`, waiting).Scan(&n); err != nil {
				t.Fatalf("read locks: %v", err)
			}
			if time.Now().After(deadline) {
				t.Fatalf("round %d: %d of the 2 batches wait for a lock after 10 s", round, n)
			}
		}
		if err := holder.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if err := g.Wait(); err != nil {
			t.Fatalf("round %d: handle batches: %v", round, err)
		}
		for i, id := range ids {
			if got := f.provider.ChargeAttempts(id); got != 1 {
				t.Errorf("round %d: order %s: %d charge attempts, want 1", round, id, got)
			}
			want := payment.StatusCharged
			if i%2 == 0 {
				want = payment.StatusRefunded
			}
			if got := f.payment(t, id).Status; got != want {
				t.Errorf("round %d: order %s: payment %v, want %v", round, id, got, want)
			}
		}
	}
	if c, r := len(f.provider.Charges()), len(f.provider.Refunds()); c != 60 || r != 30 {
		t.Errorf("provider: %d charges, %d refunds; want 60 and 30", c, r)
	}
}

// TestThroughBatchRunners delivers every order's events concurrently
// through the batch runners of two instances of the service, some twice:
// deliveries share batches and transactions, and each order ends the same
// as when its events come one at a time.
func TestThroughBatchRunners(t *testing.T) {
	f := newFixture(t)
	var instances []*inbox.BatchRunner
	for range 2 {
		runner := inbox.NewRunner(f.pool, app.Source, inbox.Metrics{})
		instances = append(instances, inbox.NewBatchRunner(runner, f.app.Handle, 32, time.Minute))
	}
	ctx := context.Background()
	ids := make([]string, 30)
	var g errgroup.Group
	deliver := func(k int, ev proto.Message, meta eventbus.Meta) {
		g.Go(func() error {
			_, err := instances[k%len(instances)].Process(ctx, ev, meta)
			return err
		})
	}
	for i := range ids {
		ids[i] = uuid.NewString()
		token := "tok_visa"
		if i%5 == 4 {
			token = provider.TokenDecline
		}
		createdEv := created(ids[i], token)
		meta := metaFor(createdEv)
		deliver(i, createdEv, meta)
		deliver(i+1, createdEv, meta) // the same delivery again, on the other instance
		if i%3 == 0 {
			deliver(i, cancelled(ids[i]), metaFor(cancelled(ids[i])))
		}
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("deliver: %v", err)
	}
	var charged, refunded int
	for i, id := range ids {
		p := f.payment(t, id)
		switch {
		case i%5 == 4 && (p.Status == payment.StatusFailed || i%3 == 0 && p.Status == payment.StatusBlocked):
		case i%5 == 4:
			t.Errorf("order %s (declined): payment %v, want FAILED", id, p.Status)
		case i%3 == 0 && p.Status == payment.StatusRefunded:
			charged++
			refunded++
		case i%3 == 0 && p.Status == payment.StatusBlocked:
		case i%3 != 0 && p.Status == payment.StatusCharged:
			charged++
		default:
			t.Errorf("order %s: payment %v", id, p.Status)
		}
	}
	if c, r := len(f.provider.Charges()), len(f.provider.Refunds()); c != charged || r != refunded {
		t.Errorf("provider: %d charges, %d refunds; want %d and %d", c, r, charged, refunded)
	}
	// The provider answers a repeated charge with the first one, so the
	// counts above cannot see an order.created handled twice: the
	// attempts and the outcomes published can.
	published := map[string]int{}
	for _, ev := range outboxEvents(t, f.pool) {
		if o, ok := ev.(interface{ GetOrderId() string }); ok {
			published[string(proto.MessageName(ev).Name())+" "+o.GetOrderId()]++
		}
	}
	succeeded := 0
	for _, id := range ids {
		succeeded += published["PaymentSucceeded "+id]
		if n := f.provider.ChargeAttempts(id); n > 1 {
			t.Errorf("order %s: %d charge attempts, want at most 1", id, n)
		}
		for _, kind := range []string{"PaymentSucceeded", "PaymentFailed", "PaymentRefunded"} {
			if n := published[kind+" "+id]; n > 1 {
				t.Errorf("order %s: %d %s published, want at most 1", id, n, kind)
			}
		}
	}
	if succeeded != charged {
		t.Errorf("%d PaymentSucceeded published, want one for each of the %d orders charged", succeeded, charged)
	}
	var transactions, deliveries int64
	for _, b := range instances {
		tx, d := b.Stats()
		transactions, deliveries = transactions+tx, deliveries+d
	}
	// Every delivery was handed over at once: batches were shared.
	if transactions >= deliveries {
		t.Errorf("%d deliveries in %d transactions, want fewer transactions than deliveries", deliveries, transactions)
	}
}

// hangs is a provider whose charges of tokenHang never answer: they end
// only with their context.
type hangs struct{ *provider.Deterministic }

const tokenHang = "tok_hang"

func (p hangs) Charge(ctx context.Context, req provider.ChargeRequest) (provider.Charge, error) {
	if req.Token == tokenHang {
		<-ctx.Done()
		return provider.Charge{}, fmt.Errorf("charge %s: %w", req.IdempotencyKey, ctx.Err())
	}
	return p.Deterministic.Charge(ctx, req)
}

// A provider call that hangs until the batch's deadline fails its
// delivery alone, retryably; what the batch handled before it commits.
func TestHangingProviderCallFailsItsDeliveryAlone(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations, inbox.Migrations)
	prov := provider.NewDeterministic()
	a := app.New(pool, hangs{prov}, quiet)
	paid, hung, after, ended := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	evs := []proto.Message{created(paid, "tok_visa"), created(hung, tokenHang), created(after, "tok_visa"), rejected(ended)}
	ds := make([]inbox.Delivery, len(evs))
	for i, ev := range evs {
		ds[i] = inbox.Delivery{Event: ev, Meta: metaFor(ev)}
	}
	var results []inbox.Result
	err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		// As the batch runner does: the handler's context has the
		// transaction's deadline.
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var err error
		results, err = a.Handle(ctx, tx, ds)
		return err
	})
	if err != nil {
		t.Fatalf("handle: %v; want the hanging call to fail its delivery alone", err)
	}
	if results[0].Err != nil {
		t.Errorf("charge before the hanging one: %v", results[0].Err)
	}
	if err := results[1].Err; err == nil || eventbus.IsPermanent(err) || eventbus.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the hanging charge: %v; want a retryable deadline error, its attempt counted", err)
	}
	// The calls after it never started: no attempt of their own.
	for i := 2; i < len(results); i++ {
		if err := results[i].Err; !eventbus.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("delivery %d, after the hanging one: %v; want the deadline error marked eventbus.Unavailable", i, err)
		}
	}
	// An order that ended unseen is blocked all the same: its charge,
	// were it to come before the rejection's retry, never goes through.
	if p, err := a.Payment(context.Background(), ended); err != nil || p.Status != payment.StatusBlocked {
		t.Errorf("payment of the order rejected after the hanging call: %+v, %v; want it blocked", p, err)
	}
	if _, found, err := prov.FindCharge(context.Background(), after); err != nil || found {
		t.Errorf("the charge after the hanging one was made (%v, %v); want it never started", found, err)
	}
	p, err := a.Payment(context.Background(), paid)
	if err != nil || p.Status != payment.StatusCharged {
		t.Errorf("payment of the first order: %+v, %v; want it charged and committed", p, err)
	}
}

// down is a provider in an outage while its flag is set: refunds and
// charge lookups fail with ErrUnavailable, as an adapter's do when the
// provider does not answer.
type down struct {
	*provider.Deterministic
	out *atomic.Bool
}

func (p down) Refund(ctx context.Context, req provider.RefundRequest) (provider.Refund, error) {
	if p.out.Load() {
		return provider.Refund{}, fmt.Errorf("refund %s: %w", req.IdempotencyKey, provider.ErrUnavailable)
	}
	return p.Deterministic.Refund(ctx, req)
}

func (p down) FindCharge(ctx context.Context, key string) (provider.Charge, bool, error) {
	if p.out.Load() {
		return provider.Charge{}, false, fmt.Errorf("find charge %s: %w", key, provider.ErrUnavailable)
	}
	return p.Deterministic.FindCharge(ctx, key)
}

// TestOrderEndedWhileTheProviderIsOutIsNeverCharged: an order cancelled
// before the service saw it, while the provider cannot say whether it
// holds a charge for it, is blocked all the same: its order.created,
// in the same batch or handled before the cancellation's retry, charges
// nothing, and the retry looks for a charge again.
func TestOrderEndedWhileTheProviderIsOutIsNeverCharged(t *testing.T) {
	f := newFixture(t)
	var out atomic.Bool
	f.app = app.New(f.pool, down{f.provider, &out}, quiet)
	sameBatch, later := uuid.NewString(), uuid.NewString()

	out.Store(true)
	results, err := handleBatch(t, f, cancelled(sameBatch), created(sameBatch, "tok_visa"), cancelled(later))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range results {
		if !eventbus.IsUnavailable(r.Err) {
			t.Errorf("delivery %d while the provider is out: %v; want an outage (eventbus.Unavailable)", i, r.Err)
		}
	}
	out.Store(false)
	mustTx(t, f, created(later, "tok_visa")) // before the cancellation's retry
	mustTx(t, f, cancelled(later))           // the retry
	mustTx(t, f, created(sameBatch, "tok_visa"))
	mustTx(t, f, cancelled(sameBatch))
	for _, id := range []string{sameBatch, later} {
		if p := f.payment(t, id); p.Status != payment.StatusBlocked {
			t.Errorf("payment of order %s: %v, want blocked", id, p.Status)
		}
		if c, found, err := f.provider.FindCharge(context.Background(), id); err != nil || found {
			t.Errorf("order %s ended before it was created was charged: %+v, %v", id, c, err)
		}
	}
	diffEvents(t, nil, f.pool)
}

// TestProviderOutageIsAnOutage: while the provider does not answer, the
// refund an ended order needs (and the lookup of a charge the service has
// no record of) fails as an outage, which the bus retries without
// counting attempts; a counted failure would park the refund in the
// dead-letter queue after the retry ladder and leave the customer charged.
// A call that runs out of the batch's time is not: it counts, so one that
// always hangs ends in the dead-letter queue. Once the provider answers,
// the refund goes through.
func TestProviderOutageIsAnOutage(t *testing.T) {
	f := newFixture(t)
	var out atomic.Bool
	f.app = app.New(f.pool, down{f.provider, &out}, quiet)
	charged, unknown := uuid.NewString(), uuid.NewString()
	mustTx(t, f, created(charged, "tok_visa"))

	out.Store(true)
	for _, ev := range []proto.Message{cancelled(charged), rejected(unknown)} {
		err := inTx(t, f, ev)
		if !eventbus.IsUnavailable(err) || !errors.Is(err, provider.ErrUnavailable) {
			t.Errorf("%T while the provider is out: %v; want an outage (eventbus.Unavailable)", ev, err)
		}
	}
	if p := f.payment(t, charged); p.Status != payment.StatusCharged {
		t.Errorf("payment during the outage: %v, want still charged", p.Status)
	}

	out.Store(false)
	mustTx(t, f, cancelled(charged))
	mustTx(t, f, rejected(unknown))
	if p := f.payment(t, charged); p.Status != payment.StatusRefunded {
		t.Errorf("payment once the provider answers: %v, want refunded", p.Status)
	}

	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations, inbox.Migrations)
	hung := app.New(pool, hangs{provider.NewDeterministic()}, quiet)
	err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		ev := created(uuid.NewString(), tokenHang)
		results, err := hung.Handle(ctx, tx, []inbox.Delivery{{Event: ev, Meta: metaFor(ev)}})
		if err != nil {
			return err
		}
		return results[0].Err
	})
	if eventbus.IsUnavailable(err) || eventbus.IsPermanent(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a charge that ran out of time: %v; want a retryable, counted deadline error", err)
	}
}
