package order

import (
	"errors"
	"fmt"
)

// ErrInvalidStatus is returned by ParseStatus for a name that is not a
// status.
var ErrInvalidStatus = errors.New("invalid order status")

// Status is where an order stands in the order saga. The zero value is
// StatusUnspecified, which no order has.
type Status uint8

// The statuses of an order. An order starts Pending; the saga moves it to
// Confirmed or Rejected; a customer may cancel a Pending or Confirmed order.
const (
	// StatusUnspecified is not a status; as a filter it means any status.
	StatusUnspecified Status = iota
	// StatusPending: created, waiting for stock and payment.
	StatusPending
	// StatusConfirmed: stock reserved and payment taken. The saga is over,
	// but the customer can still cancel.
	StatusConfirmed
	// StatusRejected: stock reservation or payment failed. Final.
	StatusRejected
	// StatusCancelled: cancelled by the customer. Final.
	StatusCancelled
)

var statusNames = [...]string{
	StatusUnspecified: "UNSPECIFIED",
	StatusPending:     "PENDING",
	StatusConfirmed:   "CONFIRMED",
	StatusRejected:    "REJECTED",
	StatusCancelled:   "CANCELLED",
}

// String returns the status's upper-case name, e.g. "PENDING", which is
// also the form ParseStatus reads and the store may keep.
func (s Status) String() string {
	if int(s) < len(statusNames) {
		return statusNames[s]
	}
	return fmt.Sprintf("Status(%d)", uint8(s))
}

// ParseStatus returns the Status named name ("PENDING", "CONFIRMED",
// "REJECTED" or "CANCELLED"), or an error wrapping ErrInvalidStatus.
func ParseStatus(name string) (Status, error) {
	for s := StatusPending; s <= StatusCancelled; s++ {
		if statusNames[s] == name {
			return s, nil
		}
	}
	return StatusUnspecified, fmt.Errorf("parse status %q: %w", name, ErrInvalidStatus)
}

// Valid reports whether s is one of Pending, Confirmed, Rejected and
// Cancelled.
func (s Status) Valid() bool { return s >= StatusPending && s <= StatusCancelled }

// Terminal reports whether the saga is over for an order in status s:
// Confirmed, Rejected and Cancelled are terminal, and no stock or payment
// outcome changes such an order any more. Of the terminal statuses only
// Confirmed can still change, by a customer's cancel (see Cancellable).
// WatchOrder ends once an order is terminal.
func (s Status) Terminal() bool {
	return s == StatusConfirmed || s == StatusRejected || s == StatusCancelled
}

// Cancellable reports whether a customer may cancel an order in status s:
// true for Pending and Confirmed.
func (s Status) Cancellable() bool { return s == StatusPending || s == StatusConfirmed }
