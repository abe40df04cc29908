// Package payment holds the payment service's rules: what it records about
// each order's payment, and which order events lead to a charge, a refund
// or nothing — so an order is charged at most once, refunded at most once,
// and never charged after it was rejected or cancelled.
//
// The package is pure: it does no I/O and keeps no state. Amounts are the
// provider port's exact Money, never floating point.
package payment

import (
	"errors"
	"fmt"

	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
)

// ErrInvalidStatus is returned by ParseStatus for a name that is not a
// payment status.
var ErrInvalidStatus = errors.New("invalid payment status")

// Status is where an order's payment stands. The zero value is StatusNone:
// the service has no record of the order.
type Status uint8

// The statuses of a payment. Its moves (see OnCreated, OnEnded):
//
//   - none → CHARGED on order.created when the provider charged the total,
//     or FAILED when it declined;
//   - CHARGED → REFUNDED on order.rejected or order.cancelled;
//   - none → BLOCKED on order.rejected or order.cancelled that arrives
//     before order.created, which is then ignored.
const (
	// StatusNone: no record of the order.
	StatusNone Status = iota
	// StatusCharged: the order's total was charged.
	StatusCharged
	// StatusFailed: the provider declined the charge.
	StatusFailed
	// StatusRefunded: the charge was refunded because the order was
	// rejected or cancelled.
	StatusRefunded
	// StatusBlocked: the order was rejected or cancelled before this
	// service saw it created; it is never charged.
	StatusBlocked
)

var statusNames = [...]string{
	StatusNone:     "NONE",
	StatusCharged:  "CHARGED",
	StatusFailed:   "FAILED",
	StatusRefunded: "REFUNDED",
	StatusBlocked:  "BLOCKED",
}

// String returns the status's upper-case name, e.g. "CHARGED", which is
// also the form ParseStatus reads and the store keeps.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// ParseStatus returns the recorded Status named name (any status but
// StatusNone), or an error wrapping ErrInvalidStatus.
func ParseStatus(name string) (Status, error) {
	for s := StatusCharged; s <= StatusBlocked; s++ {
		if statusNames[s] == name {
			return s, nil
		}
	}
	return StatusNone, fmt.Errorf("parse payment status %q: %w", name, ErrInvalidStatus)
}

// Payment is what the service records about one order's payment.
type Payment struct {
	OrderID string
	Status  Status
	// Amount is what was charged (and, once refunded, refunded), or what
	// the provider declined to charge. Zero for a blocked order.
	Amount provider.Money
	// ChargeID is the provider's id for the charge of a charged or
	// refunded order; empty otherwise.
	ChargeID string
	// RefundID is the provider's id for the refund of a refunded order;
	// empty otherwise.
	RefundID string
	// Reason says why a failed payment failed; empty otherwise.
	Reason string
}

// Action is what the service does about an order event.
type Action uint8

// The actions.
const (
	// ActionNone: nothing to do.
	ActionNone Action = iota
	// ActionCharge: charge the order's total.
	ActionCharge
	// ActionRefund: refund the order's charge.
	ActionRefund
	// ActionBlock: record that the order must never be charged.
	ActionBlock
)

var actionNames = [...]string{"none", "charge", "refund", "block"}

func (a Action) String() string {
	if int(a) < len(actionNames) {
		return actionNames[a]
	}
	return fmt.Sprintf("Action(%d)", uint8(a))
}

// OnCreated returns what order.created does to a payment in status s: an
// order the service has no record of is charged. Every other order was
// handled before (the event repeated) or is blocked, and nothing happens.
func OnCreated(s Status) Action {
	if s == StatusNone {
		return ActionCharge
	}
	return ActionNone
}

// OnEnded returns what order.rejected or order.cancelled does to a payment
// in status s: a charged order is refunded, and an order not seen yet is
// blocked from ever being charged. A blocked order is blocked again: the
// check that comes with blocking (a charge the provider holds whose record
// did not commit) may have failed the first time. A failed or refunded
// order has nothing to give back.
func OnEnded(s Status) Action {
	switch s {
	case StatusNone, StatusBlocked:
		return ActionBlock
	case StatusCharged:
		return ActionRefund
	default:
		return ActionNone
	}
}
