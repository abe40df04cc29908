package order

import (
	"fmt"
	"time"
)

// Input is something the order saga reacts to: an outcome from inventory or
// payment consumed from the event bus (StockReserved,
// StockReservationFailed, PaymentSucceeded, PaymentFailed), a customer's
// Cancel, or the service's own Timeout. Order.Apply folds inputs into an
// order.
type Input interface{ sagaInput() }

// StockReserved is the input for inventory's stock.reserved: every line of
// the order is reserved.
type StockReserved struct{}

// StockReservationFailed is the input for inventory's
// stock.reservation_failed: the order could not be reserved in full.
type StockReservationFailed struct {
	// Reason is human-readable; empty means "stock reservation failed".
	Reason string
}

// PaymentSucceeded is the input for payment's payment.succeeded: the
// order's total was charged.
type PaymentSucceeded struct {
	// PaymentID is the provider's id for the charge; it must not be empty.
	PaymentID string
}

// PaymentFailed is the input for payment's payment.failed: the provider
// declined the charge.
type PaymentFailed struct {
	// Reason is human-readable; empty means "payment failed".
	Reason string
}

// Cancel is the input for a customer's CancelOrder.
type Cancel struct {
	// Reason is kept as the order's StatusReason; it may be empty.
	Reason string
}

// Timeout is the input for an order still PENDING when its time to
// complete has run out: an outcome it waits for may never come (its event
// was dead-lettered, a worker is down for good).
type Timeout struct {
	// After is how long the order had; it goes into the reason.
	After time.Duration
}

func (StockReserved) sagaInput()          {}
func (Timeout) sagaInput()                {}
func (StockReservationFailed) sagaInput() {}
func (PaymentSucceeded) sagaInput()       {}
func (PaymentFailed) sagaInput()          {}
func (Cancel) sagaInput()                 {}

// Event is a domain event the order service publishes after a transition:
// Confirmed, Rejected or Cancelled. The adapter builds the wire event from
// it and the order in the same Transition (id, email, total).
type Event interface{ sagaEvent() }

// Confirmed is emitted once when an order becomes CONFIRMED
// (order.confirmed).
type Confirmed struct{}

// Rejected is emitted once when an order becomes REJECTED (order.rejected).
type Rejected struct {
	// Reason is the reason of the failure that rejected the order.
	Reason string
}

// Cancelled is emitted once when an order becomes CANCELLED
// (order.cancelled).
type Cancelled struct {
	// Reason is the customer's reason; it may be empty.
	Reason string
}

func (Confirmed) sagaEvent() {}
func (Rejected) sagaEvent()  {}
func (Cancelled) sagaEvent() {}

// Default reasons for failures that arrive without one.
const (
	defaultStockFailureReason   = "stock reservation failed"
	defaultPaymentFailureReason = "payment failed"
)

// Transition is the result of applying one input to an order.
type Transition struct {
	// Order is the order after the input.
	Order Order
	// Events are the events to publish, in order, in the same transaction
	// that stores Order; nil when there are none.
	Events []Event
	// Changed reports whether Order differs from the order the input was
	// applied to. When it is false, Order is that order unchanged and
	// Events is nil: there is nothing to store or publish.
	Changed bool
}

// Apply folds one saga input into o and returns the resulting transition.
// It does not modify o. now becomes the order's UpdateTime when it changes.
//
// The rules make the end state independent of the order in which outcomes
// arrive and of how often each arrives:
//
//   - While PENDING, StockReserved and PaymentSucceeded are recorded (the
//     first PaymentID wins). Once both are recorded, in either order, the
//     order becomes CONFIRMED and Confirmed is emitted.
//   - While PENDING, StockReservationFailed or PaymentFailed makes the order
//     REJECTED with the failure's reason, and Rejected is emitted. This
//     happens even if the other service already succeeded: its success is
//     compensated by that service when it sees order.rejected.
//   - Timeout on a PENDING order makes it REJECTED, naming what it still
//     waited for (stock, payment or both) and how long it had; Rejected is
//     emitted, so whatever did succeed is compensated as for a failure.
//     On a terminal order it changes nothing.
//   - A repeated outcome changes nothing and emits nothing.
//   - Once the order is terminal (CONFIRMED, REJECTED or CANCELLED), no
//     outcome changes it or emits anything. In particular the first
//     failure's reason wins; a later failure is ignored; and a success that
//     arrives after REJECTED or CANCELLED is ignored here, not recorded — the
//     service that succeeded (inventory reserving, payment charging) has
//     seen, or will see, order.rejected or order.cancelled and compensates
//     on its own (it releases or refunds, or never reserves or charges).
//     A failure arriving after CONFIRMED, which the workers never send, is
//     ignored too.
//   - Cancel on a PENDING or CONFIRMED order makes it CANCELLED with the
//     cancel's reason and emits Cancelled (so confirm-then-cancel emits
//     Confirmed, then Cancelled). Cancel on a REJECTED or CANCELLED order
//     fails with an error wrapping ErrNotCancellable and changes nothing;
//     Cancel is a customer's command, not a redelivered event, so a second
//     cancel is reported rather than silently accepted.
//
// Errors wrap ErrInvalid for a nil input, a PaymentSucceeded without a
// PaymentID, or an order whose Status is not valid.
func (o Order) Apply(in Input, now time.Time) (Transition, error) {
	if !o.Status.Valid() {
		return Transition{}, fmt.Errorf("apply %T to order %s: %w: status %v", in, o.ID, ErrInvalid, o.Status)
	}
	unchanged := Transition{Order: o}
	switch in := in.(type) {
	case Cancel:
		if !o.Status.Cancellable() {
			return Transition{}, fmt.Errorf("cancel order %s: %w: it is %v", o.ID, ErrNotCancellable, o.Status)
		}
		return o.finish(StatusCancelled, in.Reason, Cancelled{Reason: in.Reason}, now), nil

	case StockReserved:
		if o.Status.Terminal() || o.StockReserved {
			return unchanged, nil
		}
		o.StockReserved = true
		return o.progress(now), nil

	case PaymentSucceeded:
		if in.PaymentID == "" {
			return Transition{}, fmt.Errorf("apply payment succeeded to order %s: %w: empty payment id", o.ID, ErrInvalid)
		}
		if o.Status.Terminal() || o.PaymentSucceeded {
			return unchanged, nil
		}
		o.PaymentSucceeded = true
		o.PaymentID = in.PaymentID
		return o.progress(now), nil

	case StockReservationFailed:
		if o.Status.Terminal() {
			return unchanged, nil
		}
		return o.reject(in.Reason, defaultStockFailureReason, now), nil

	case PaymentFailed:
		if o.Status.Terminal() {
			return unchanged, nil
		}
		return o.reject(in.Reason, defaultPaymentFailureReason, now), nil

	case Timeout:
		if o.Status.Terminal() {
			return unchanged, nil
		}
		return o.reject(fmt.Sprintf("timed out after %s waiting for %s", in.After, o.missing()), "", now), nil

	case nil:
		return Transition{}, fmt.Errorf("apply input to order %s: %w: nil input", o.ID, ErrInvalid)
	default:
		return Transition{}, fmt.Errorf("apply %T to order %s: %w: unknown input", in, o.ID, ErrInvalid)
	}
}

// progress returns the transition after a success was recorded on the
// pending order o: CONFIRMED once both successes are in, else still PENDING
// with the progress stored.
func (o Order) progress(now time.Time) Transition {
	if o.StockReserved && o.PaymentSucceeded {
		return o.finish(StatusConfirmed, "", Confirmed{}, now)
	}
	o.UpdateTime = now
	return Transition{Order: o, Changed: true}
}

// missing names the outcomes the pending order o still waits for.
func (o Order) missing() string {
	switch {
	case o.StockReserved:
		return "payment"
	case o.PaymentSucceeded:
		return "stock"
	default:
		return "stock and payment"
	}
}

// reject returns the transition of the pending order o to REJECTED.
func (o Order) reject(reason, fallback string, now time.Time) Transition {
	if reason == "" {
		reason = fallback
	}
	return o.finish(StatusRejected, reason, Rejected{Reason: reason}, now)
}

// finish returns the transition of o to status, emitting ev.
func (o Order) finish(status Status, reason string, ev Event, now time.Time) Transition {
	o.Status = status
	o.StatusReason = reason
	o.UpdateTime = now
	return Transition{Order: o, Events: []Event{ev}, Changed: true}
}
