// Package app is the payment service's application layer: the handler of
// the order events, which charges and refunds through the provider port
// and records what it did in the inbox runner's transaction, returning the
// events to write to the outbox in it.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/services/payment/internal/payment"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
	"github.com/ordermesh/ordermesh/services/payment/internal/store"
)

// Source is the app_id of every event the payment service publishes.
const Source = "payment"

// MaxReasonLen is the longest failure reason PaymentFailed carries, in
// bytes.
const MaxReasonLen = 512

// App runs the payment use cases. It is safe for concurrent use.
type App struct {
	pool     *pgxpool.Pool
	provider provider.Provider
	log      *slog.Logger
}

// New returns an App recording payments in pool and moving money with p.
func New(pool *pgxpool.Pool, p provider.Provider, log *slog.Logger) *App {
	return &App{pool: pool, provider: p, log: log}
}

// Payment returns what the service recorded about order id's payment; its
// status is payment.StatusNone when it never heard of the order.
func (a *App) Payment(ctx context.Context, id string) (payment.Payment, error) {
	return store.Get(ctx, a.pool, id)
}

// Handle is the payment service's handler of order events, an
// inbox.BatchHandler: register it for order.created, order.rejected and
// order.cancelled through one inbox.BatchRunner, so each transaction
// handles the events that arrived together. It runs in the runner's
// transaction (tx): the record of a charge or refund commits together with
// the event's inbox row and the outgoing event, which the runner writes to
// the outbox from the delivery's Result.
//
// Handle costs two round trips whatever the batch holds: it takes the
// locks of the batch's orders and reads their payments (store.Load),
// applies the events one after another to that copy in memory, in the
// order they arrived, calling the provider as they require, and writes the
// final payment of every order that changed (store.Save). The order locks
// make the events of one order apply one at a time, in whatever order they
// arrive, also across instances of the service; events of one order in
// one batch apply in turn, so an order created and cancelled in one batch
// is charged, then refunded.
//
// The provider is called inside the transaction, with the order id as the
// idempotency key. If the transaction then fails to commit (or the
// delivery fails with an error of unknown kind after the provider acted),
// the event is delivered again and the provider returns the charge it
// already made instead of charging twice. If the order is rejected or
// cancelled before that redelivery, the service has no record of the
// charge: it asks the provider for a charge under the order's key
// (Provider.FindCharge) and refunds one it finds, so no charge outlives
// its order.
//
// The provider's calls end a little before ctx's deadline (see
// commitReserve): one that hangs fails its delivery alone, retryably,
// with ctx's deadline error; the deliveries after it, whose calls never
// started, are retried without counting an attempt (eventbus.Unavailable).
//
// Errors fail the delivery that caused them alone, which writes nothing
// (but that an order rejected or cancelled before the service saw it is
// blocked even when the provider could not be asked whether it holds a
// charge: the delivery's retry asks again), while the batch's other
// deliveries take effect: an unreachable provider
// (provider.ErrUnavailable) is an outage (eventbus.Unavailable), which the
// bus retries without counting attempts; a deadline or an error of
// unknown kind is retryable, so the bus retries the event through its
// retry ladder; a
// request the provider can never accept (provider.ErrInvalidRequest,
// provider.ErrIdempotencyConflict) or an event that can never be applied
// (a malformed order id, an event type Handle does not handle) is
// permanent, so the bus parks it in the dead-letter queue. A decline is
// not an error but an outcome (PaymentFailed). Database errors fail the
// whole batch as they are (inbox.BatchHandler says what comes next).
func (a *App) Handle(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
	results := make([]inbox.Result, len(batch))
	events := make([]orderEvent, len(batch))
	var ids []string
	for i, d := range batch {
		ev, err := parseOrderEvent(d.Event)
		if err != nil {
			results[i].Err = err
			continue
		}
		events[i] = ev
		ids = append(ids, ev.orderID)
	}
	if len(ids) == 0 {
		return results, nil
	}
	loaded, err := store.Load(ctx, tx, ids)
	if err != nil {
		return nil, err
	}
	payments := maps.Clone(loaded)
	// The provider's calls end before the batch's deadline by commitReserve,
	// so that a call that hangs fails its delivery alone (and the calls
	// after it, retryably) and the batch's other outcomes still commit.
	callCtx := ctx
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		callCtx, cancel = context.WithDeadline(ctx, deadline.Add(-min(time.Until(deadline)/4, commitReserve)))
		defer cancel()
	}
	for i, ev := range events {
		if results[i].Err != nil {
			continue
		}
		if err := callCtx.Err(); err != nil {
			// The calls before this delivery's took the batch's time.
			results[i].Err = eventbus.Unavailable(fmt.Errorf("handle %s of order %s: no time left for provider calls in its batch: %w",
				batch[i].Meta.Type, ev.orderID, err))
			if ev.kind == orderEnded && payment.OnEnded(payments[ev.orderID].Status) == payment.ActionBlock {
				// Ended all the same (see refund): blocked now, and the
				// retry looks for a charge.
				payments[ev.orderID] = payment.Payment{OrderID: ev.orderID, Status: payment.StatusBlocked}
			}
			continue
		}
		var p payment.Payment
		switch ev.kind {
		case orderCreated:
			p, results[i].Events, results[i].Err = a.charge(callCtx, payments[ev.orderID], ev)
		case orderEnded:
			p, results[i].Events, results[i].Err = a.refund(callCtx, payments[ev.orderID])
		}
		// A failed delivery changes nothing, but that an ended order is
		// blocked (refund): no order.created handled before its retry may
		// charge it.
		if results[i].Err == nil || p.Status == payment.StatusBlocked {
			payments[ev.orderID] = p
		}
	}
	var changed []payment.Payment
	for _, id := range slices.Sorted(maps.Keys(payments)) {
		if p := payments[id]; p != loaded[id] {
			changed = append(changed, p)
		}
	}
	if err := store.Save(ctx, tx, changed); err != nil {
		return nil, err
	}
	return results, nil
}

// commitReserve is how long before the deadline of Handle's context (the
// batch's transaction) its provider calls end, at most: a quarter of the
// time left when the batch starts, up to this. Saving the batch's payments
// and COMMIT then still fit.
const commitReserve = 2 * time.Second

// eventKind says what an order event asks of the payment service.
type eventKind int

const (
	// orderCreated: charge the order's total.
	orderCreated eventKind = iota + 1
	// orderEnded: the order was rejected or cancelled; give back what was
	// charged.
	orderEnded
)

// orderEvent is an order event as Handle applies it.
type orderEvent struct {
	kind    eventKind
	orderID string
	// amount and token are an order.created's total and payment token.
	amount provider.Money
	token  string
}

// errUnexpectedEvent marks an event Handle does not handle.
var errUnexpectedEvent = errors.New("not an order event the payment service handles")

// parseOrderEvent checks ev and converts it, or returns a permanent error:
// a malformed event can never be applied.
func parseOrderEvent(ev proto.Message) (orderEvent, error) {
	var e orderEvent
	var id string
	switch ev := ev.(type) {
	case *orderv1.OrderCreated:
		e.kind, id = orderCreated, ev.GetOrderId()
		e.amount, e.token = moneyFromProto(ev.GetTotal()), ev.GetPaymentToken()
	case *orderv1.OrderRejected:
		e.kind, id = orderEnded, ev.GetOrderId()
	case *orderv1.OrderCancelled:
		e.kind, id = orderEnded, ev.GetOrderId()
	default:
		return orderEvent{}, eventbus.Permanent(fmt.Errorf("handle %T: %w", ev, errUnexpectedEvent))
	}
	var err error
	if e.orderID, err = eventbus.ParseOrderID(id); err != nil {
		return orderEvent{}, err
	}
	return e, nil
}

// charge applies order.created to p, the order's payment so far: it
// charges the order's total to its payment token and returns the charged
// payment and PaymentSucceeded with the charge, or, when the provider
// declines, the failed payment and PaymentFailed with the provider's
// reason. An order handled before (the event repeated under another id) is
// returned unchanged with no event: its outcome was published the first
// time.
//
// An order already rejected or cancelled (blocked) is never charged: the
// order is final and the order service ignores late outcomes. But an
// attempt to charge it that went unanswered before it ended may have gone
// through since it was blocked (the provider finished it, or only now
// shows it): such a charge, found with the provider, is refunded.
func (a *App) charge(ctx context.Context, p payment.Payment, ev orderEvent) (payment.Payment, []proto.Message, error) {
	id := p.OrderID
	if p.Status == payment.StatusBlocked {
		q, events, found, err := a.refundFound(ctx, p)
		if err != nil || found {
			return q, events, err
		}
	}
	if payment.OnCreated(p.Status) != payment.ActionCharge {
		a.log.InfoContext(ctx, "order.created ignored", slog.String("order_id", id), slog.String("payment", p.Status.String()))
		return p, nil, nil
	}

	charge, err := a.provider.Charge(ctx, provider.ChargeRequest{IdempotencyKey: id, Amount: ev.amount, Token: ev.token})
	if errors.Is(err, provider.ErrDeclined) {
		p = payment.Payment{OrderID: id, Status: payment.StatusFailed, Amount: ev.amount, Reason: declineReason(err)}
		a.log.InfoContext(ctx, "payment declined", slog.String("order_id", id), slog.String("reason", p.Reason))
		return p, []proto.Message{&paymentv1.PaymentFailed{OrderId: id, Reason: p.Reason}}, nil
	}
	if err != nil {
		return p, nil, providerError(fmt.Errorf("charge order %s: %w", id, err))
	}

	p = payment.Payment{OrderID: id, Status: payment.StatusCharged, Amount: charge.Amount, ChargeID: charge.ID}
	a.log.InfoContext(ctx, "payment charged", slog.String("order_id", id), slog.String("charge_id", charge.ID), slog.String("amount", charge.Amount.String()))
	return p, []proto.Message{&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: charge.ID, Amount: moneyToProto(charge.Amount)}}, nil
}

// refund applies order.rejected and order.cancelled to p, the order's
// payment so far: a charged order is refunded in full, once, and returned
// refunded with PaymentRefunded. An order with nothing charged (declined,
// already refunded) is returned unchanged with no event. An order not seen
// yet, or blocked, is returned blocked, so a later order.created never
// charges it, unless the provider holds a charge for it whose record did
// not commit: that charge is refunded as any other. When the provider
// cannot be asked, or the refund fails, the order is returned blocked with
// the error: the order ended all the same, and the delivery's retry asks
// again.
func (a *App) refund(ctx context.Context, p payment.Payment) (payment.Payment, []proto.Message, error) {
	id := p.OrderID
	switch payment.OnEnded(p.Status) {
	case payment.ActionBlock:
		blocked := payment.Payment{OrderID: id, Status: payment.StatusBlocked}
		q, events, found, err := a.refundFound(ctx, p)
		switch {
		case err != nil:
			return blocked, nil, err
		case found:
			return q, events, nil
		}
		if p.Status != payment.StatusBlocked {
			a.log.InfoContext(ctx, "order blocked before it was created", slog.String("order_id", id))
		}
		return blocked, nil, nil
	case payment.ActionRefund:
		return a.refundCharged(ctx, p)
	default:
		return p, nil, nil
	}
}

// refundFound refunds the charge the provider holds for p's order when
// the service has no record of it (p is not charged: the record did not
// commit, or the charge went through after the order ended). found is
// false, and p is returned as it is, when the provider holds none.
func (a *App) refundFound(ctx context.Context, p payment.Payment) (_ payment.Payment, _ []proto.Message, found bool, _ error) {
	id := p.OrderID
	charge, found, err := a.provider.FindCharge(ctx, id)
	if err != nil {
		return p, nil, false, providerError(fmt.Errorf("find a charge of order %s: %w", id, err))
	}
	if !found {
		return p, nil, false, nil
	}
	a.log.WarnContext(ctx, "order ended with a charge the service had no record of; refunding it",
		slog.String("order_id", id), slog.String("charge_id", charge.ID), slog.String("payment", p.Status.String()))
	q, events, err := a.refundCharged(ctx, payment.Payment{OrderID: id, Status: payment.StatusCharged, Amount: charge.Amount, ChargeID: charge.ID})
	if err != nil {
		return p, nil, true, err
	}
	return q, events, true, nil
}

// refundCharged refunds charged payment p in full and returns it
// refunded, with PaymentRefunded.
func (a *App) refundCharged(ctx context.Context, p payment.Payment) (payment.Payment, []proto.Message, error) {
	id := p.OrderID
	refund, err := a.provider.Refund(ctx, provider.RefundRequest{IdempotencyKey: id, ChargeID: p.ChargeID, Amount: p.Amount})
	if err != nil {
		return p, nil, providerError(fmt.Errorf("refund order %s: %w", id, err))
	}
	p.Status, p.RefundID = payment.StatusRefunded, refund.ID
	a.log.InfoContext(ctx, "payment refunded", slog.String("order_id", id), slog.String("refund_id", refund.ID), slog.String("amount", p.Amount.String()))
	return p, []proto.Message{&paymentv1.PaymentRefunded{OrderId: id, PaymentId: p.ChargeID, Amount: moneyToProto(p.Amount)}}, nil
}

// providerError marks provider errors that retrying cannot fix as
// permanent, and an unreachable provider (ErrUnavailable) as an outage:
// the event waits in the retry queues, its attempts not counted, until the
// provider answers, so an outage longer than the retry ladder
// dead-letters no charge and no refund (a refund parked there would leave
// the customer charged for an ended order). Other errors stay retryable
// and counted: ctx's (the batch's deadline is the service's, not the
// provider's: a call that always hangs must end in the dead-letter queue,
// not go round for ever; an adapter reports its own call timeouts as
// ErrUnavailable) and errors of unknown kind, which the retry ladder
// bounds without giving up early on a request the provider might still
// accept.
func providerError(err error) error {
	switch {
	case errors.Is(err, provider.ErrInvalidRequest) || errors.Is(err, provider.ErrIdempotencyConflict) || errors.Is(err, provider.ErrDeclined):
		return eventbus.Permanent(err)
	case errors.Is(err, provider.ErrUnavailable):
		return eventbus.Unavailable(err)
	}
	return err
}

// declineReason returns the part of a decline error fit for the customer,
// from the sentinel's text on ("payment declined: card declined"), as
// valid UTF-8 (a proto string must be) without NUL, at most MaxReasonLen bytes.
func declineReason(err error) string {
	msg := err.Error()
	if i := strings.Index(msg, provider.ErrDeclined.Error()); i >= 0 {
		msg = msg[i:]
	}
	// PostgreSQL stores no NUL in text: the payment's row could not be
	// written, nor could the order service record the reason.
	msg = strings.ReplaceAll(strings.ToValidUTF8(msg, "\uFFFD"), "\x00", "\uFFFD")
	if len(msg) > MaxReasonLen {
		msg = msg[:MaxReasonLen]
		for !utf8.ValidString(msg) {
			msg = msg[:len(msg)-1]
		}
	}
	return msg
}

func moneyFromProto(m *moneyv1.Money) provider.Money {
	return provider.Money{CurrencyCode: m.GetCurrencyCode(), Units: m.GetUnits(), Nanos: m.GetNanos()}
}

func moneyToProto(m provider.Money) *moneyv1.Money {
	return &moneyv1.Money{CurrencyCode: m.CurrencyCode, Units: m.Units, Nanos: m.Nanos}
}
