package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

// Handle is the inventory's handler of order events, an inbox.BatchHandler:
// register it for order.created, order.confirmed, order.rejected and
// order.cancelled through one inbox.BatchRunner, so each transaction
// handles the events that arrived together. It runs in the runner's
// transaction (tx), so each event takes effect once however often it is
// delivered, and the events it returns go to the outbox in that same
// transaction.
//
// Handle costs two round trips whatever the batch holds: it takes the
// locks of the batch's orders and of their products' stock and reads them
// (store.LoadLedger), applies the events one after another to that copy in
// memory, in the order they arrived, and writes what changed
// (store.SaveLedger). The order locks make the events of one order apply
// one at a time, in whatever order they arrive, also across instances of
// the service, and every order reaches the same end state. An event that
// can never be applied (a malformed order id or lines, a confirmation
// without a reservation) fails alone with a permanent error, so the bus
// parks it in the dead-letter queue, and changes nothing; database errors
// fail the whole batch as they are (inbox.BatchHandler says what comes
// next).
func (a *App) Handle(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
	results := make([]inbox.Result, len(batch))
	events := make([]orderEvent, len(batch))
	var orderIDs, productIDs []string
	for i, d := range batch {
		ev, err := parseOrderEvent(d.Event)
		if err != nil {
			results[i].Err = err
			continue
		}
		events[i] = ev
		orderIDs = append(orderIDs, ev.orderID)
		productIDs = append(productIDs, stock.ProductIDs(ev.lines)...)
	}
	if len(orderIDs) == 0 {
		return results, nil
	}
	ledger, err := store.LoadLedger(ctx, tx, orderIDs, productIDs)
	if err != nil {
		return nil, err
	}
	for i, ev := range events {
		if results[i].Err != nil {
			continue
		}
		switch ev.kind {
		case orderCreated:
			results[i].Events, results[i].Err = a.reserve(ctx, ledger, ev.orderID, ev.lines)
		case orderConfirmed:
			results[i].Err = a.commit(ctx, ledger, ev.orderID)
		case orderEnded:
			results[i].Events, results[i].Err = a.release(ctx, ledger, ev.orderID)
		}
	}
	if err := store.SaveLedger(ctx, tx, ledger.Changes()); err != nil {
		return nil, err
	}
	return results, nil
}

// eventKind says what an order event asks of the inventory.
type eventKind int

const (
	// orderCreated: reserve the order's lines.
	orderCreated eventKind = iota + 1
	// orderConfirmed: the reserved units leave for good.
	orderConfirmed
	// orderEnded: the order was rejected or cancelled; give back what it
	// holds.
	orderEnded
)

// orderEvent is an order event as Handle applies it.
type orderEvent struct {
	kind    eventKind
	orderID string
	// lines are an order.created's lines, merged.
	lines []stock.Line
}

// errUnexpectedEvent marks an event Handle does not handle.
var errUnexpectedEvent = errors.New("not an order event the inventory handles")

// parseOrderEvent checks ev and converts it, or returns a permanent error:
// a malformed event can never be applied.
func parseOrderEvent(ev proto.Message) (orderEvent, error) {
	var e orderEvent
	var id string
	var items []*orderv1.LineItem
	switch ev := ev.(type) {
	case *orderv1.OrderCreated:
		e.kind, id, items = orderCreated, ev.GetOrderId(), ev.GetItems()
	case *orderv1.OrderConfirmed:
		e.kind, id = orderConfirmed, ev.GetOrderId()
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
	if e.kind == orderCreated {
		if e.lines, err = stock.Merge(linesFromProto(items)); err != nil {
			return orderEvent{}, eventbus.Permanent(fmt.Errorf("reserve order %s: %w", e.orderID, err))
		}
	}
	return e, nil
}

// reserve applies order.created: it reserves every line of the order or
// none. Lines of one product are summed, and an unknown product has
// nothing available. When all fit it moves the quantities from available
// to reserved and returns StockReserved; otherwise it reserves nothing,
// records the failure and returns StockReservationFailed naming each short
// product. Orders for the same products never oversell: their stock is
// locked while it is checked and changed.
//
// An order already rejected or cancelled (blocked) is never reserved, and
// nothing is returned for it: the order is final and the order service
// ignores late outcomes, and there is no shortage that
// StockReservationFailed could truthfully name. An order handled before
// (the event repeated under another id) is left alone and returns nothing:
// its outcome was published the first time.
func (a *App) reserve(ctx context.Context, l *stock.Ledger, id string, lines []stock.Line) ([]proto.Message, error) {
	d, shortages, err := l.Reserve(id, lines)
	switch {
	case err != nil:
		return nil, err
	case !d.Changed:
		a.log.InfoContext(ctx, "order.created ignored", slog.String("order_id", id), slog.String("reservation", d.Next.String()))
		return nil, nil
	case d.Next == stock.StatusFailed:
		reason := l.Reservation(id).Reason
		a.log.InfoContext(ctx, "stock reservation failed", slog.String("order_id", id), slog.String("reason", reason))
		return []proto.Message{&inventoryv1.StockReservationFailed{
			OrderId: id, Shortages: shortagesToProto(shortages), Reason: reason,
		}}, nil
	}
	a.log.InfoContext(ctx, "stock reserved", slog.String("order_id", id), slog.Int("products", len(lines)))
	return []proto.Message{&inventoryv1.StockReserved{OrderId: id, Items: linesToProto(lines)}}, nil
}

// commit applies order.confirmed: the order's reserved units leave
// reserved for good (they were taken from available when reserved). It
// returns no event. An order rejected or cancelled before this event
// arrived has its stock back already and stays so. Confirming an order
// this service never reserved is a permanent error wrapping
// stock.ErrNoReservation.
func (a *App) commit(ctx context.Context, l *stock.Ledger, id string) error {
	d, err := l.Confirm(id)
	switch {
	case errors.Is(err, stock.ErrNoReservation):
		return eventbus.Permanent(fmt.Errorf("commit reservation of order %s: %w", id, err))
	case err != nil:
		return err
	case d.Changed:
		a.log.InfoContext(ctx, "reservation committed", slog.String("order_id", id))
	}
	return nil
}

// release applies order.rejected and order.cancelled: a reserved order's
// units go from reserved back to available, a confirmed order's units go
// back to available, and either returns StockReleased with the quantities.
// An order with nothing held (failed, already released) returns nothing.
// An order not seen yet is recorded as blocked, so a later order.created
// never reserves it.
func (a *App) release(ctx context.Context, l *stock.Ledger, id string) ([]proto.Message, error) {
	r := l.Reservation(id)
	d, err := l.Release(id)
	switch {
	case err != nil:
		return nil, err
	case r.Status == stock.StatusNone:
		a.log.InfoContext(ctx, "order blocked before it was created", slog.String("order_id", id))
		return nil, nil
	case !d.Released:
		return nil, nil
	}
	a.log.InfoContext(ctx, "stock released", slog.String("order_id", id), slog.String("from", r.Status.String()))
	return []proto.Message{&inventoryv1.StockReleased{OrderId: id, Items: linesToProto(r.Lines)}}, nil
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
