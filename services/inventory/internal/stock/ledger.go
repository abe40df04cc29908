package stock

import (
	"fmt"
	"maps"
	"slices"
)

// Ledger is a working copy of the stock levels and reservations that a
// batch of order events touches. The events are applied to it one after
// another, in memory, by the rules of Reserve, Confirm and Release; Changes
// then tells what to write, so that a store can write the whole batch with
// a few statements. A store loads a Ledger with its rows locked and writes
// its changes in the same transaction. A transition that fails changes
// nothing, so the events around it are unaffected. A Ledger is not safe
// for concurrent use.
type Ledger struct {
	levels map[string]Level
	// loaded are the levels as loaded, to tell the changes.
	loaded       map[string]Level
	reservations map[string]Reservation
	// recorded are the orders whose reservation the store holds.
	recorded map[string]bool
	// changed are the orders whose reservation changed.
	changed map[string]bool
}

// NewLedger returns a Ledger holding levels and reservations: the stock of
// every product the events may touch (a product missing from levels was
// never stocked) and the recorded reservation of every order they name
// (an order missing from reservations has none). Reservations' lines must
// be merged (see Merge).
func NewLedger(levels []Level, reservations []Reservation) *Ledger {
	l := &Ledger{
		levels:       make(map[string]Level, len(levels)),
		reservations: make(map[string]Reservation, len(reservations)),
		recorded:     make(map[string]bool, len(reservations)),
		changed:      map[string]bool{},
	}
	for _, lv := range levels {
		l.levels[lv.ProductID] = lv
	}
	l.loaded = maps.Clone(l.levels)
	for _, r := range reservations {
		l.reservations[r.OrderID] = r
		l.recorded[r.OrderID] = true
	}
	return l
}

// Reservation returns the reservation of order id as it stands, with
// StatusNone when there is none.
func (l *Ledger) Reservation(id string) Reservation {
	if r, ok := l.reservations[id]; ok {
		return r
	}
	return Reservation{OrderID: id}
}

// Level returns the stock of product id as it stands, and whether the
// product was ever stocked.
func (l *Ledger) Level(id string) (Level, bool) {
	lv, ok := l.levels[id]
	return lv, ok
}

// Reserve applies an order.created of order id for lines, which must be
// merged (see Merge): the whole order is reserved when every line fits the
// available units, otherwise nothing is and the reservation is recorded
// as failed, with the shortages, which Reserve also returns. An order the
// ledger already has a reservation for is left alone (see the package
// function Reserve). It returns an error, and changes nothing, for lines
// that are not merged.
func (l *Ledger) Reserve(id string, lines []Line) (Decision, []Shortage, error) {
	r := l.Reservation(id)
	var shortages []Shortage
	if r.Status == StatusNone {
		available := make(map[string]int64, len(lines))
		for _, ln := range lines {
			available[ln.ProductID] = l.levels[ln.ProductID].Available
		}
		shortages = Shortages(lines, available)
	}
	d := Reserve(r.Status, shortages)
	if !d.Changed {
		return d, nil, nil
	}
	if err := l.apply(lines, d.Effect); err != nil {
		return Decision{}, nil, fmt.Errorf("reserve order %s: %w", id, err)
	}
	r = Reservation{OrderID: id, Status: d.Next, Lines: lines}
	if len(shortages) > 0 {
		r.Reason = Reason(shortages)
	}
	l.record(r)
	return d, shortages, nil
}

// Confirm applies an order.confirmed of order id (see the package function
// Confirm). It returns an error wrapping ErrNoReservation for an order
// without a reservation, and an error when the reservation's units are not
// reserved in the levels (the records disagree).
func (l *Ledger) Confirm(id string) (Decision, error) {
	r := l.Reservation(id)
	d, err := Confirm(r.Status)
	if err != nil {
		return Decision{}, fmt.Errorf("confirm order %s: %w", id, err)
	}
	return d, l.transition(r, d)
}

// Release applies an order.rejected or order.cancelled of order id (see
// the package function Release). The lines a released order gave back are
// its reservation's, as Reservation returned them before. It returns an
// error when the levels cannot take the units back (the records disagree).
func (l *Ledger) Release(id string) (Decision, error) {
	r := l.Reservation(id)
	d := Release(r.Status)
	return d, l.transition(r, d)
}

// transition applies d to r: its effect on the levels of r's lines, and
// its next status.
func (l *Ledger) transition(r Reservation, d Decision) error {
	if !d.Changed {
		return nil
	}
	if err := l.apply(r.Lines, d.Effect); err != nil {
		return fmt.Errorf("%s order %s: %w", d.Effect, r.OrderID, err)
	}
	r.Status = d.Next
	l.record(r)
	return nil
}

// apply applies e to the levels of lines, all of them or none: it returns
// an error wrapping ErrNotFound for a product never stocked, and an error
// for a change that would make a level negative.
func (l *Ledger) apply(lines []Line, e Effect) error {
	if e == EffectNone {
		return nil
	}
	next := make(map[string]Level, len(lines))
	for _, ln := range lines {
		lv, ok := next[ln.ProductID]
		if !ok {
			if lv, ok = l.levels[ln.ProductID]; !ok {
				return fmt.Errorf("%w: %s", ErrNotFound, ln.ProductID)
			}
		}
		da, dr := e.Deltas(ln.Quantity)
		lv.Available += da
		lv.Reserved += dr
		if lv.Available < 0 || lv.Reserved < 0 {
			return fmt.Errorf("%s of %d units of %s would leave available %d, reserved %d",
				e, ln.Quantity, ln.ProductID, lv.Available, lv.Reserved)
		}
		next[ln.ProductID] = lv
	}
	maps.Copy(l.levels, next)
	return nil
}

func (l *Ledger) record(r Reservation) {
	l.reservations[r.OrderID] = r
	l.changed[r.OrderID] = true
}

// LevelChange is the net change of one product's stock.
type LevelChange struct {
	ProductID string
	// Available and Reserved are added to the product's units.
	Available, Reserved int64
}

// Changes are what the transitions applied to a Ledger changed.
type Changes struct {
	// Levels are the products whose stock changed, by product id.
	Levels []LevelChange
	// Created are the reservations the store has no record of, as they
	// stand now, with their lines; by order id.
	Created []Reservation
	// Updated are the recorded reservations whose status changed, as they
	// stand now; by order id. Their lines and reason never change.
	Updated []Reservation
}

// Changes returns what the transitions applied so far changed.
func (l *Ledger) Changes() Changes {
	var c Changes
	for _, id := range slices.Sorted(maps.Keys(l.levels)) {
		now, was := l.levels[id], l.loaded[id]
		if now != was {
			c.Levels = append(c.Levels, LevelChange{ProductID: id, Available: now.Available - was.Available, Reserved: now.Reserved - was.Reserved})
		}
	}
	for _, id := range slices.Sorted(maps.Keys(l.changed)) {
		r := l.reservations[id]
		if l.recorded[id] {
			c.Updated = append(c.Updated, r)
		} else {
			c.Created = append(c.Created, r)
		}
	}
	return c
}
