package stock

import (
	"errors"
	"fmt"
)

// ErrInvalidStatus is returned by ParseStatus for a name that is not a
// reservation status.
var ErrInvalidStatus = errors.New("invalid reservation status")

// Status is where an order's reservation stands. The zero value is
// StatusNone: the service has no record of the order.
type Status uint8

// The statuses of a reservation. Its moves (see Reserve, Confirm, Release):
//
//   - none → RESERVED on order.created when every line fits, or FAILED when
//     some line is short;
//   - RESERVED → COMMITTED on order.confirmed;
//   - RESERVED or COMMITTED → RELEASED on order.rejected or order.cancelled;
//   - none → BLOCKED on order.rejected or order.cancelled that arrives
//     before order.created, which is then ignored.
const (
	// StatusNone: no record of the order.
	StatusNone Status = iota
	// StatusReserved: every line is held (moved from available to
	// reserved) for the order, which is not confirmed yet.
	StatusReserved
	// StatusCommitted: the order was confirmed; its units left reserved
	// for good.
	StatusCommitted
	// StatusReleased: the order was rejected or cancelled after it was
	// reserved or committed; its units went back to available.
	StatusReleased
	// StatusFailed: the order could not be reserved in full, so nothing
	// was.
	StatusFailed
	// StatusBlocked: the order was rejected or cancelled before this
	// service saw it created; it is never reserved.
	StatusBlocked
)

var statusNames = [...]string{
	StatusNone:      "NONE",
	StatusReserved:  "RESERVED",
	StatusCommitted: "COMMITTED",
	StatusReleased:  "RELEASED",
	StatusFailed:    "FAILED",
	StatusBlocked:   "BLOCKED",
}

// String returns the status's upper-case name, e.g. "RESERVED", which is
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
	for s := StatusReserved; s <= StatusBlocked; s++ {
		if statusNames[s] == name {
			return s, nil
		}
	}
	return StatusNone, fmt.Errorf("parse reservation status %q: %w", name, ErrInvalidStatus)
}

// Reservation is what the service records about one order.
type Reservation struct {
	OrderID string
	Status  Status
	// Lines are the order's merged lines (see Merge): what is or was held
	// for a reserved, committed or released order, and what was asked for
	// by a failed one. A blocked order has none.
	Lines []Line
	// Reason says why a failed reservation failed; empty otherwise.
	Reason string
}

// Effect is what a transition does to the stock levels of a
// reservation's lines.
type Effect uint8

// The effects of transitions.
const (
	// EffectNone leaves the stock levels alone.
	EffectNone Effect = iota
	// EffectReserve moves each line's quantity from available to reserved.
	EffectReserve
	// EffectCommit takes each line's quantity out of reserved: the units
	// left the warehouse with a confirmed order.
	EffectCommit
	// EffectRelease moves each line's quantity from reserved back to
	// available.
	EffectRelease
	// EffectRestock adds each line's quantity to available: the units of a
	// cancelled confirmed order come back.
	EffectRestock
)

var effectNames = [...]string{"none", "reserve", "commit", "release", "restock"}

func (e Effect) String() string {
	if int(e) < len(effectNames) {
		return effectNames[e]
	}
	return fmt.Sprintf("Effect(%d)", uint8(e))
}

// Deltas returns how e changes a product's available and reserved units
// for a line of quantity q.
func (e Effect) Deltas(q int64) (available, reserved int64) {
	switch e {
	case EffectReserve:
		return -q, q
	case EffectCommit:
		return 0, -q
	case EffectRelease:
		return q, -q
	case EffectRestock:
		return q, 0
	default:
		return 0, 0
	}
}

// Decision is the outcome of a transition: the status to record, what to
// do to the stock levels of the reservation's lines, and whether the
// order's stock went back to available (and so stock.released is due).
type Decision struct {
	// Next is the status after the transition.
	Next Status
	// Changed reports whether anything is to be recorded.
	Changed bool
	// Effect is applied to the reservation's lines.
	Effect Effect
	// Released reports whether the transition put the order's units back
	// into available.
	Released bool
}

// Reserve decides what an order.created does to a reservation in status
// s. Only an order the service has no record of is reserved (Effect
// EffectReserve when shortages is empty, otherwise a failure recorded with
// EffectNone). A blocked order is never reserved, and an order already
// reserved, committed, released or failed was handled by an earlier
// delivery of the event: both leave everything as it is.
func Reserve(s Status, shortages []Shortage) Decision {
	if s != StatusNone {
		return Decision{Next: s}
	}
	if len(shortages) > 0 {
		return Decision{Next: StatusFailed, Changed: true}
	}
	return Decision{Next: StatusReserved, Changed: true, Effect: EffectReserve}
}

// Confirm decides what an order.confirmed does to a reservation in status
// s: a reserved order is committed. A committed one stays so (a repeated
// event). A released, blocked or failed order stays so: the order was
// rejected or cancelled too, which this service learned first, and its
// stock is already back. An order without a reservation is an error
// wrapping ErrNoReservation.
func Confirm(s Status) (Decision, error) {
	switch s {
	case StatusNone:
		return Decision{}, ErrNoReservation
	case StatusReserved:
		return Decision{Next: StatusCommitted, Changed: true, Effect: EffectCommit}, nil
	default:
		return Decision{Next: s}, nil
	}
}

// Release decides what an order.rejected or order.cancelled does to a
// reservation in status s: a reserved order's units go from reserved back
// to available, a committed (confirmed, now cancelled) order's units go
// back to available, and an order not seen yet is blocked from ever being
// reserved. Released, blocked and failed orders have nothing to give back.
func Release(s Status) Decision {
	switch s {
	case StatusNone:
		return Decision{Next: StatusBlocked, Changed: true}
	case StatusReserved:
		return Decision{Next: StatusReleased, Changed: true, Effect: EffectRelease, Released: true}
	case StatusCommitted:
		return Decision{Next: StatusReleased, Changed: true, Effect: EffectRestock, Released: true}
	default:
		return Decision{Next: s}
	}
}
