package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

// The handlers below run in the inbox runner's transaction (tx), so each
// event takes effect once however often it is delivered, and the events
// they return go to the outbox in that same transaction. Each first takes
// the order's lock (store.LockOrder): events of one order are applied one
// at a time, in whatever order they arrive, and every order reaches the
// same end state. An event that can never be applied (a malformed order id
// or lines, a confirmation without a reservation) is returned as a
// permanent error, so the bus parks it in the dead-letter queue; database
// errors are returned as they are, so the bus retries them.

// OrderCreated handles order.created: it reserves every line of the order
// or none. Lines of one product are summed, and an unknown product has
// nothing available. When all fit it moves the quantities from available
// to reserved and returns StockReserved; otherwise it reserves nothing,
// records the failure and returns StockReservationFailed naming each short
// product. Concurrent orders for the same products never oversell: their
// stock rows are locked, in product order, while they are checked and
// changed.
//
// An order already rejected or cancelled (blocked) is never reserved, and
// nothing is returned for it: the order is final and the order service
// ignores late outcomes, and there is no shortage that
// StockReservationFailed could truthfully name. An order handled before
// (the event repeated under another id) is left alone and returns nothing:
// its outcome was published the first time.
func (a *App) OrderCreated(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, _ eventbus.Meta) ([]proto.Message, error) {
	id, err := parseOrderID(ev.GetOrderId())
	if err != nil {
		return nil, err
	}
	lines, err := stock.Merge(linesFromProto(ev.GetItems()))
	if err != nil {
		return nil, eventbus.Permanent(fmt.Errorf("reserve order %s: %w", id, err))
	}
	r, err := lockReservation(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	if r.Status != stock.StatusNone {
		a.log.InfoContext(ctx, "order.created ignored", slog.String("order_id", id), slog.String("reservation", r.Status.String()))
		return nil, nil
	}

	levels, err := store.LockLevels(ctx, tx, stock.ProductIDs(lines))
	if err != nil {
		return nil, err
	}
	available := make(map[string]int64, len(levels))
	for product, l := range levels {
		available[product] = l.Available
	}
	shortages := stock.Shortages(lines, available)
	d := stock.Reserve(r.Status, shortages)
	r = stock.Reservation{OrderID: id, Status: d.Next, Lines: lines}
	if len(shortages) > 0 {
		r.Reason = stock.Reason(shortages)
	}
	if err := store.Adjust(ctx, tx, lines, d.Effect); err != nil {
		return nil, err
	}
	if err := store.InsertReservation(ctx, tx, r); err != nil {
		return nil, err
	}
	if r.Status == stock.StatusFailed {
		a.log.InfoContext(ctx, "stock reservation failed", slog.String("order_id", id), slog.String("reason", r.Reason))
		return []proto.Message{&inventoryv1.StockReservationFailed{
			OrderId: id, Shortages: shortagesToProto(shortages), Reason: r.Reason,
		}}, nil
	}
	a.log.InfoContext(ctx, "stock reserved", slog.String("order_id", id), slog.Int("products", len(lines)))
	return []proto.Message{&inventoryv1.StockReserved{OrderId: id, Items: linesToProto(lines)}}, nil
}

// OrderConfirmed handles order.confirmed: the order's reserved units leave
// reserved for good (they were taken from available when reserved). It
// returns no event. An order rejected or cancelled before this event
// arrived has its stock back already and stays so. Confirming an order
// this service never reserved is a permanent error wrapping
// stock.ErrNoReservation.
func (a *App) OrderConfirmed(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderConfirmed, _ eventbus.Meta) ([]proto.Message, error) {
	id, err := parseOrderID(ev.GetOrderId())
	if err != nil {
		return nil, err
	}
	r, err := lockReservation(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	d, err := stock.Confirm(r.Status)
	if err != nil {
		return nil, eventbus.Permanent(fmt.Errorf("commit reservation of order %s: %w", id, err))
	}
	if !d.Changed {
		return nil, nil
	}
	if err := store.Adjust(ctx, tx, r.Lines, d.Effect); err != nil {
		return nil, err
	}
	if err := store.UpdateStatus(ctx, tx, id, d.Next); err != nil {
		return nil, err
	}
	a.log.InfoContext(ctx, "reservation committed", slog.String("order_id", id))
	return nil, nil
}

// OrderRejected handles order.rejected like OrderCancelled.
func (a *App) OrderRejected(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderRejected, _ eventbus.Meta) ([]proto.Message, error) {
	return a.release(ctx, tx, ev.GetOrderId())
}

// OrderCancelled handles order.cancelled: a reserved order's units go from
// reserved back to available, a confirmed order's units go back to
// available, and either returns StockReleased with the quantities. An
// order with nothing held (failed, already released) returns nothing. An
// order not seen yet is recorded as blocked, so a later order.created
// never reserves it.
func (a *App) OrderCancelled(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCancelled, _ eventbus.Meta) ([]proto.Message, error) {
	return a.release(ctx, tx, ev.GetOrderId())
}

func (a *App) release(ctx context.Context, tx pgx.Tx, orderID string) ([]proto.Message, error) {
	id, err := parseOrderID(orderID)
	if err != nil {
		return nil, err
	}
	r, err := lockReservation(ctx, tx, id)
	if err != nil {
		return nil, err
	}
	d := stock.Release(r.Status)
	switch {
	case !d.Changed:
		return nil, nil
	case r.Status == stock.StatusNone:
		a.log.InfoContext(ctx, "order blocked before it was created", slog.String("order_id", id))
		return nil, store.InsertReservation(ctx, tx, stock.Reservation{OrderID: id, Status: d.Next})
	}
	if err := store.Adjust(ctx, tx, r.Lines, d.Effect); err != nil {
		return nil, err
	}
	if err := store.UpdateStatus(ctx, tx, id, d.Next); err != nil {
		return nil, err
	}
	if !d.Released {
		return nil, nil
	}
	a.log.InfoContext(ctx, "stock released", slog.String("order_id", id), slog.String("from", r.Status.String()))
	return []proto.Message{&inventoryv1.StockReleased{OrderId: id, Items: linesToProto(r.Lines)}}, nil
}

// lockReservation takes order id's lock for the rest of tx and returns its
// reservation.
func lockReservation(ctx context.Context, tx pgx.Tx, id string) (stock.Reservation, error) {
	if err := store.LockOrder(ctx, tx, id); err != nil {
		return stock.Reservation{}, err
	}
	return store.GetReservation(ctx, tx, id)
}

// errInvalidOrderID marks an event whose order id is not a UUID.
var errInvalidOrderID = errors.New("order id is not a UUID")

// parseOrderID returns id in canonical form, or a permanent error: an
// event without a valid order id can never be applied.
func parseOrderID(id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", eventbus.Permanent(fmt.Errorf("parse order id %q: %w", id, errInvalidOrderID))
	}
	return u.String(), nil
}

func linesFromProto(items []*orderv1.LineItem) []stock.Line {
	out := make([]stock.Line, len(items))
	for i, it := range items {
		out[i] = stock.Line{ProductID: it.GetProductId(), Quantity: int64(it.GetQuantity())}
	}
	return out
}

func linesToProto(lines []stock.Line) []*inventoryv1.StockLine {
	out := make([]*inventoryv1.StockLine, len(lines))
	for i, l := range lines {
		out[i] = &inventoryv1.StockLine{ProductId: l.ProductID, Quantity: int32(l.Quantity)}
	}
	return out
}

func shortagesToProto(shortages []stock.Shortage) []*inventoryv1.Shortage {
	out := make([]*inventoryv1.Shortage, len(shortages))
	for i, s := range shortages {
		out[i] = &inventoryv1.Shortage{ProductId: s.ProductID, Requested: int32(s.Requested), Available: s.Available}
	}
	return out
}
