package app

import (
	"fmt"
	"testing"
)

// TestRecentSendsForgetsTheOldest: the ring keeps the last n pairs sent;
// adding one more forgets the oldest, and a pair added twice takes one
// place.
func TestRecentSendsForgetsTheOldest(t *testing.T) {
	r := newRecentSends(3)
	p := func(i int) pair { return pair{fmt.Sprintf("order-%d", i), KindReceived} }
	for i := range 3 {
		r.add(p(i))
	}
	r.add(p(2))
	for i := range 3 {
		if !r.has(p(i)) {
			t.Fatalf("pair %d forgotten while the ring is not full", i)
		}
	}
	r.add(p(3))
	r.add(p(4))
	for i, want := range []bool{false, false, true, true, true} {
		if got := r.has(p(i)); got != want {
			t.Errorf("has(pair %d) = %v, want %v", i, got, want)
		}
	}
	if r.has(pair{"order-3", KindConfirmed}) {
		t.Error("another kind of a remembered order counts as sent")
	}
}
