package stock

import (
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestLedger(t *testing.T) {
	const o1, o2 = "order-1", "order-2"
	lines := func(ls ...Line) []Line { return ls }
	a := func(q int64) Line { return Line{ProductID: "A", Quantity: q} }
	b := func(q int64) Line { return Line{ProductID: "B", Quantity: q} }
	tests := []struct {
		name         string
		levels       []Level
		reservations []Reservation
		// run applies events, checking what each returns.
		run  func(t *testing.T, l *Ledger)
		want Changes
	}{
		{
			name:   "reserve what fits",
			levels: []Level{{ProductID: "A", Available: 5}, {ProductID: "B", Available: 3, Reserved: 1}},
			run: func(t *testing.T, l *Ledger) {
				d, shortages, err := l.Reserve(o1, lines(a(2), b(1)))
				if err != nil || d != (Decision{Next: StatusReserved, Changed: true, Effect: EffectReserve}) || shortages != nil {
					t.Errorf("Reserve = %+v, %v, %v", d, shortages, err)
				}
			},
			want: Changes{
				Levels:  []LevelChange{{ProductID: "A", Available: -2, Reserved: 2}, {ProductID: "B", Available: -1, Reserved: 1}},
				Created: []Reservation{{OrderID: o1, Status: StatusReserved, Lines: lines(a(2), b(1))}},
			},
		},
		{
			name:   "a short or unknown product reserves nothing",
			levels: []Level{{ProductID: "A", Available: 5}},
			run: func(t *testing.T, l *Ledger) {
				d, shortages, err := l.Reserve(o1, lines(a(2), b(1)))
				want := []Shortage{{ProductID: "B", Requested: 1}}
				if err != nil || d.Next != StatusFailed || !cmp.Equal(shortages, want) {
					t.Errorf("Reserve = %+v, %v, %v", d, shortages, err)
				}
			},
			want: Changes{Created: []Reservation{{OrderID: o1, Status: StatusFailed, Lines: lines(a(2), b(1)), Reason: "out of stock: B (wanted 1, have 0)"}}},
		},
		{
			name:   "a later order sees what an earlier one took",
			levels: []Level{{ProductID: "A", Available: 5}},
			run: func(t *testing.T, l *Ledger) {
				if d, _, _ := l.Reserve(o1, lines(a(3))); d.Next != StatusReserved {
					t.Errorf("first order: %v, want RESERVED", d.Next)
				}
				_, shortages, _ := l.Reserve(o2, lines(a(3)))
				if want := []Shortage{{ProductID: "A", Requested: 3, Available: 2}}; !cmp.Equal(shortages, want) {
					t.Errorf("second order's shortages = %v, want %v", shortages, want)
				}
			},
			want: Changes{
				Levels: []LevelChange{{ProductID: "A", Available: -3, Reserved: 3}},
				Created: []Reservation{
					{OrderID: o1, Status: StatusReserved, Lines: lines(a(3))},
					{OrderID: o2, Status: StatusFailed, Lines: lines(a(3)), Reason: "out of stock: A (wanted 3, have 2)"},
				},
			},
		},
		{
			name:   "reserved and released at once nets out",
			levels: []Level{{ProductID: "A", Available: 5}},
			run: func(t *testing.T, l *Ledger) {
				_, _, _ = l.Reserve(o1, lines(a(3)))
				if d, err := l.Release(o1); err != nil || !d.Released {
					t.Errorf("Release = %+v, %v; want released", d, err)
				}
			},
			want: Changes{Created: []Reservation{{OrderID: o1, Status: StatusReleased, Lines: lines(a(3))}}},
		},
		{
			name:         "a recorded reservation is committed, then restocked",
			levels:       []Level{{ProductID: "A", Available: 1, Reserved: 4}},
			reservations: []Reservation{{OrderID: o1, Status: StatusReserved, Lines: lines(a(3))}},
			run: func(t *testing.T, l *Ledger) {
				if d, err := l.Confirm(o1); err != nil || d.Next != StatusCommitted {
					t.Errorf("Confirm = %+v, %v", d, err)
				}
				if d, err := l.Release(o1); err != nil || d.Effect != EffectRestock {
					t.Errorf("Release = %+v, %v", d, err)
				}
			},
			want: Changes{
				Levels:  []LevelChange{{ProductID: "A", Available: 3, Reserved: -3}},
				Updated: []Reservation{{OrderID: o1, Status: StatusReleased, Lines: lines(a(3))}},
			},
		},
		{
			name:   "released before created blocks the order",
			levels: []Level{{ProductID: "A", Available: 5}},
			run: func(t *testing.T, l *Ledger) {
				if d, err := l.Release(o1); err != nil || d.Next != StatusBlocked || d.Released {
					t.Errorf("Release = %+v, %v", d, err)
				}
				if d, _, err := l.Reserve(o1, lines(a(1))); err != nil || d.Changed {
					t.Errorf("Reserve of a blocked order = %+v, %v; want no change", d, err)
				}
			},
			want: Changes{Created: []Reservation{{OrderID: o1, Status: StatusBlocked}}},
		},
		{
			name:         "a failed transition changes nothing, and the ledger goes on",
			levels:       []Level{{ProductID: "A", Available: 5, Reserved: 1}},
			reservations: []Reservation{{OrderID: o1, Status: StatusReserved, Lines: lines(a(3))}},
			run: func(t *testing.T, l *Ledger) {
				if _, err := l.Confirm(o2); !errors.Is(err, ErrNoReservation) {
					t.Errorf("Confirm without a reservation: %v, want ErrNoReservation", err)
				}
				// The records disagree: o1 holds 3, the level only 1.
				if _, err := l.Confirm(o1); err == nil {
					t.Error("Confirm of more than is reserved succeeded")
				}
				if _, _, err := l.Reserve(o2, lines(a(1), a(5))); err == nil {
					t.Error("Reserve of unmerged lines succeeded")
				}
				if r := l.Reservation(o1); r.Status != StatusReserved {
					t.Errorf("o1 after the failed confirm: %v, want RESERVED", r.Status)
				}
				if d, _, err := l.Reserve(o2, lines(a(5))); err != nil || d.Next != StatusReserved {
					t.Errorf("Reserve after the failures = %+v, %v", d, err)
				}
			},
			want: Changes{
				Levels:  []LevelChange{{ProductID: "A", Available: -5, Reserved: 5}},
				Created: []Reservation{{OrderID: o2, Status: StatusReserved, Lines: lines(a(5))}},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := NewLedger(tt.levels, tt.reservations)
			tt.run(t, l)
			if diff := cmp.Diff(tt.want, l.Changes()); diff != "" {
				t.Errorf("changes (-want +got):\n%s", diff)
			}
		})
	}
}
