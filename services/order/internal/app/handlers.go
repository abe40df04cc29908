package app

import (
	"context"
	"errors"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// The handlers below fold inventory's and payment's outcomes into the order
// saga and keep each order's event timeline. They run in the inbox runner's
// transaction, so each event is applied once however often it is
// delivered; the events they cause go to the outbox in that same
// transaction.

// StockReserved handles stock.reserved.
func (a *App) StockReserved(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReserved, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.outcome(ctx, tx, ev, meta, ev.GetOrderId(), order.StockReserved{})
}

// StockReservationFailed handles stock.reservation_failed.
func (a *App) StockReservationFailed(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReservationFailed, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.outcome(ctx, tx, ev, meta, ev.GetOrderId(), order.StockReservationFailed{Reason: ev.GetReason()})
}

// PaymentSucceeded handles payment.succeeded.
func (a *App) PaymentSucceeded(ctx context.Context, tx pgx.Tx, ev *paymentv1.PaymentSucceeded, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.outcome(ctx, tx, ev, meta, ev.GetOrderId(), order.PaymentSucceeded{PaymentID: ev.GetPaymentId()})
}

// PaymentFailed handles payment.failed.
func (a *App) PaymentFailed(ctx context.Context, tx pgx.Tx, ev *paymentv1.PaymentFailed, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.outcome(ctx, tx, ev, meta, ev.GetOrderId(), order.PaymentFailed{Reason: ev.GetReason()})
}

// StockReleased records inventory's compensation in the order's timeline.
func (a *App) StockReleased(ctx context.Context, tx pgx.Tx, ev *inventoryv1.StockReleased, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, record(ctx, tx, ev.GetOrderId(), meta, ev)
}

// PaymentRefunded records payment's compensation in the order's timeline.
func (a *App) PaymentRefunded(ctx context.Context, tx pgx.Tx, ev *paymentv1.PaymentRefunded, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, record(ctx, tx, ev.GetOrderId(), meta, ev)
}

// NotificationSent records a sent email in the order's timeline.
func (a *App) NotificationSent(ctx context.Context, tx pgx.Tx, ev *notificationv1.NotificationSent, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, record(ctx, tx, ev.GetOrderId(), meta, ev)
}

// outcome records ev in order id's timeline and applies in to the order.
// An outcome for an order this service never created, or one the domain
// rejects, cannot succeed on retry: it is marked permanent so the bus parks
// it in the dead-letter queue.
func (a *App) outcome(ctx context.Context, tx pgx.Tx, ev proto.Message, meta eventbus.Meta, id string, in order.Input) error {
	if err := record(ctx, tx, id, meta, ev); err != nil {
		return err
	}
	err := a.Apply(ctx, tx, id, in)
	if errors.Is(err, order.ErrNotFound) || errors.Is(err, order.ErrInvalid) {
		return eventbus.Permanent(err)
	}
	return err
}

func record(ctx context.Context, tx pgx.Tx, id string, meta eventbus.Meta, ev proto.Message) error {
	return store.RecordEvents(ctx, tx, eventRecord(id, meta, ev))
}
