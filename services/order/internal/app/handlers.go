package app

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
)

// The handlers below fold inventory's and payment's outcomes into the order
// saga. They run in the inbox runner's transaction, so each event is applied
// once however often it is delivered; the events they return go to the
// outbox in that same transaction.

// StockReserved handles stock.reserved.
func (a *App) StockReserved(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReserved, _ eventbus.Meta) ([]proto.Message, error) {
	return a.outcome(ctx, tx, ev.GetOrderId(), order.StockReserved{})
}

// StockReservationFailed handles stock.reservation_failed.
func (a *App) StockReservationFailed(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReservationFailed, _ eventbus.Meta) ([]proto.Message, error) {
	return a.outcome(ctx, tx, ev.GetOrderId(), order.StockReservationFailed{Reason: ev.GetReason()})
}

// PaymentSucceeded handles payment.succeeded.
func (a *App) PaymentSucceeded(ctx context.Context, tx pgx.Tx, ev *paymentv1.PaymentSucceeded, _ eventbus.Meta) ([]proto.Message, error) {
	return a.outcome(ctx, tx, ev.GetOrderId(), order.PaymentSucceeded{PaymentID: ev.GetPaymentId()})
}

// PaymentFailed handles payment.failed.
func (a *App) PaymentFailed(ctx context.Context, tx pgx.Tx, ev *paymentv1.PaymentFailed, _ eventbus.Meta) ([]proto.Message, error) {
	return a.outcome(ctx, tx, ev.GetOrderId(), order.PaymentFailed{Reason: ev.GetReason()})
}

// outcome applies in to order id. An outcome for an order this service
// never created, or one the domain rejects, cannot succeed on retry: it is
// marked permanent so the bus parks it in the dead-letter queue.
func (a *App) outcome(ctx context.Context, tx pgx.Tx, id string, in order.Input) ([]proto.Message, error) {
	events, err := a.Apply(ctx, tx, id, in)
	if errors.Is(err, order.ErrNotFound) || errors.Is(err, order.ErrInvalid) {
		return nil, eventbus.Permanent(err)
	}
	return events, err
}
