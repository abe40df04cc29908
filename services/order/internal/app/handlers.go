package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// Handle is the order service's handler of the events it consumes, an
// inbox.BatchHandler: register it through one inbox.BatchRunner for
// inventory's and payment's outcomes (stock.reserved,
// stock.reservation_failed, payment.succeeded, payment.failed), which drive
// the order saga, and for the compensations and emails it only records in
// the orders' timelines (stock.released, payment.refunded,
// notification.sent). It runs in the runner's transaction (tx), so each
// event is applied once however often it is delivered, and the events the
// saga emits go to the outbox in that same transaction.
//
// Handle costs two round trips whatever the batch holds: it locks and
// reads the orders the outcomes are for (store.LockMany), applies the
// outcomes one after another to those orders in memory, in the order they
// arrived, and then writes the changed orders, the timeline entries and
// the emitted events with one statement each, sent together. The row locks
// make the outcomes of one order apply one at a time, also across
// instances of the service, and the saga's rules make the end state the
// same whatever order they arrive in.
//
// An event that can never be applied fails alone with a permanent error,
// so the bus parks it in the dead-letter queue, and changes nothing: one
// of a type Handle does not handle, one whose order id is not a UUID, an
// outcome for an order this service never created, or one the saga
// refuses (order.ErrInvalid). Database errors fail the whole batch as they
// are (inbox.BatchHandler says what comes next).
func (a *App) Handle(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
	results := make([]inbox.Result, len(batch))
	outcomes := make([]outcome, len(batch))
	var locked []string
	for i, d := range batch {
		oc, err := parseOutcome(d.Event)
		if err != nil {
			results[i].Err = err
			continue
		}
		outcomes[i] = oc
		if oc.input != nil {
			locked = append(locked, oc.orderID)
		}
	}
	orders, err := store.LockMany(ctx, tx, locked)
	if err != nil {
		return nil, err
	}

	now := a.now().Truncate(time.Microsecond)
	var changed []string // the changed orders' ids, in the order they changed
	dirty := make(map[string]bool)
	var records []store.Event
	var msgs []eventbus.Message
	for i, oc := range outcomes {
		if results[i].Err != nil {
			continue
		}
		meta := batch[i].Meta
		var events []orderEvent
		if oc.input != nil {
			o, ok := orders[oc.orderID]
			if !ok {
				results[i].Err = eventbus.Permanent(fmt.Errorf("apply %s to order %s: %w", meta.Type, oc.orderID, order.ErrNotFound))
				continue
			}
			t, err := o.Apply(oc.input, now)
			if errors.Is(err, order.ErrInvalid) {
				err = eventbus.Permanent(err)
			}
			if err == nil {
				events, err = sagaEvents(t)
			}
			if err != nil {
				results[i].Err = err
				continue
			}
			if t.Changed {
				if !dirty[o.ID] {
					dirty[o.ID] = true
					changed = append(changed, o.ID)
				}
				orders[o.ID] = t.Order
			}
		}
		out, outRecords, err := outgoing(events, meta)
		if err != nil {
			return nil, err
		}
		records = append(records, eventRecord(oc.orderID, meta, batch[i].Event))
		records = append(records, outRecords...)
		msgs = append(msgs, out...)
	}

	updates := make([]order.Order, len(changed))
	for i, id := range changed {
		updates[i] = orders[id]
	}
	b := &pgx.Batch{}
	store.QueueUpdate(b, updates...)
	store.QueueRecordEvents(b, records...)
	if err := outbox.Queue(b, msgs...); err != nil {
		return nil, err
	}
	if b.Len() == 0 {
		return results, nil
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return nil, fmt.Errorf("write %d orders, %d timeline entries and %d events: %w", len(updates), len(records), len(msgs), err)
	}
	return results, nil
}

// outcome is a consumed event as Handle applies it: the order it is about
// and, for the saga's inputs, what it means to the order. Events only
// recorded in the timeline have no input.
type outcome struct {
	orderID string
	input   order.Input
}

// errUnexpectedEvent marks an event Handle does not handle.
var errUnexpectedEvent = errors.New("not an event the order service handles")

// parseOutcome converts ev, or returns a permanent error: an event of
// another type or without a valid order id can never be applied.
func parseOutcome(ev proto.Message) (outcome, error) {
	var oc outcome
	var id string
	switch ev := ev.(type) {
	case *inventoryv1.StockReserved:
		id, oc.input = ev.GetOrderId(), order.StockReserved{}
	case *inventoryv1.StockReservationFailed:
		id, oc.input = ev.GetOrderId(), order.StockReservationFailed{Reason: ev.GetReason()}
	case *paymentv1.PaymentSucceeded:
		id, oc.input = ev.GetOrderId(), order.PaymentSucceeded{PaymentID: ev.GetPaymentId()}
	case *paymentv1.PaymentFailed:
		id, oc.input = ev.GetOrderId(), order.PaymentFailed{Reason: ev.GetReason()}
	case *inventoryv1.StockReleased:
		id = ev.GetOrderId()
	case *paymentv1.PaymentRefunded:
		id = ev.GetOrderId()
	case *notificationv1.NotificationSent:
		id = ev.GetOrderId()
	default:
		return outcome{}, eventbus.Permanent(fmt.Errorf("handle %T: %w", ev, errUnexpectedEvent))
	}
	var err error
	if oc.orderID, err = eventbus.ParseOrderID(id); err != nil {
		return outcome{}, err
	}
	return oc, nil
}
