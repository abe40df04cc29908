package order

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

const (
	stockReason   = "out of stock: SKU-1 (wanted 2, have 1)"
	paymentReason = "card declined"
	cancelReason  = "changed my mind"
	paymentID     = "ch_0123456789abcdef"
)

func pendingOrder(t *testing.T) Order {
	t.Helper()
	o, err := New("order-1", validRequest(), t0)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return o
}

// step is one input fed to the saga in a test, and whether it must fail.
type step struct {
	in      Input
	wantErr error
}

// fold applies steps to o in turn, checking the per-step contract of
// Apply, and returns the final order and every event emitted.
func fold(t *testing.T, o Order, steps []step) (Order, []Event) {
	t.Helper()
	var events []Event
	for i, s := range steps {
		now := t0.Add(time.Duration(i+1) * time.Minute)
		before := o
		tr, err := o.Apply(s.in, now)
		if s.wantErr != nil {
			if !errors.Is(err, s.wantErr) {
				t.Fatalf("step %d: Apply(%#v) error = %v, want %v", i, s.in, err, s.wantErr)
			}
			if diff := cmp.Diff(before, o); diff != "" {
				t.Fatalf("step %d: failed Apply modified the order (-before +after):\n%s", i, diff)
			}
			continue
		}
		if err != nil {
			t.Fatalf("step %d: Apply(%#v): %v", i, s.in, err)
		}
		if diff := cmp.Diff(before, o); diff != "" {
			t.Fatalf("step %d: Apply modified its receiver (-before +after):\n%s", i, diff)
		}
		if !tr.Changed {
			if diff := cmp.Diff(o, tr.Order); diff != "" {
				t.Fatalf("step %d: unchanged transition carries a different order (-in +out):\n%s", i, diff)
			}
			if tr.Events != nil {
				t.Fatalf("step %d: unchanged transition emits %#v", i, tr.Events)
			}
		} else {
			if tr.Order.UpdateTime != now {
				t.Fatalf("step %d: changed order has UpdateTime %v, want %v", i, tr.Order.UpdateTime, now)
			}
			if cmp.Equal(o, tr.Order) {
				t.Fatalf("step %d: transition claims a change but the order is the same", i)
			}
		}
		if len(tr.Events) > 1 {
			t.Fatalf("step %d: one input emitted %d events: %#v", i, len(tr.Events), tr.Events)
		}
		events = append(events, tr.Events...)
		o = tr.Order
	}
	return o, events
}

// sagaState is the part of an order the saga decides.
type sagaState struct {
	Status           Status
	StatusReason     string
	StockReserved    bool
	PaymentSucceeded bool
	PaymentID        string
}

func stateOf(o Order) sagaState {
	return sagaState{o.Status, o.StatusReason, o.StockReserved, o.PaymentSucceeded, o.PaymentID}
}

func ok(in Input) step { return step{in: in} }

func TestApplyNamedCases(t *testing.T) {
	tests := []struct {
		name       string
		steps      []step
		wantState  sagaState
		wantEvents []Event
	}{
		{
			name:      "nothing yet",
			wantState: sagaState{Status: StatusPending},
		},
		{
			name:      "stock reserved only",
			steps:     []step{ok(StockReserved{})},
			wantState: sagaState{Status: StatusPending, StockReserved: true},
		},
		{
			name:      "payment succeeded only",
			steps:     []step{ok(PaymentSucceeded{PaymentID: paymentID})},
			wantState: sagaState{Status: StatusPending, PaymentSucceeded: true, PaymentID: paymentID},
		},
		{
			name:       "stock then payment confirms",
			steps:      []step{ok(StockReserved{}), ok(PaymentSucceeded{PaymentID: paymentID})},
			wantState:  sagaState{Status: StatusConfirmed, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}},
		},
		{
			name:       "payment then stock confirms",
			steps:      []step{ok(PaymentSucceeded{PaymentID: paymentID}), ok(StockReserved{})},
			wantState:  sagaState{Status: StatusConfirmed, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}},
		},
		{
			name:       "stock failure rejects at once",
			steps:      []step{ok(StockReservationFailed{Reason: stockReason})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: stockReason},
			wantEvents: []Event{Rejected{Reason: stockReason}},
		},
		{
			name:       "payment failure after stock reserved rejects",
			steps:      []step{ok(StockReserved{}), ok(PaymentFailed{Reason: paymentReason})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: paymentReason, StockReserved: true},
			wantEvents: []Event{Rejected{Reason: paymentReason}},
		},
		{
			name:       "first failure's reason wins",
			steps:      []step{ok(PaymentFailed{Reason: paymentReason}), ok(StockReservationFailed{Reason: stockReason})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: paymentReason},
			wantEvents: []Event{Rejected{Reason: paymentReason}},
		},
		{
			name:       "success after rejection is ignored, not recorded",
			steps:      []step{ok(StockReservationFailed{Reason: stockReason}), ok(PaymentSucceeded{PaymentID: paymentID})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: stockReason},
			wantEvents: []Event{Rejected{Reason: stockReason}},
		},
		{
			name:       "failure without reason gets a default",
			steps:      []step{ok(PaymentFailed{})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: "payment failed"},
			wantEvents: []Event{Rejected{Reason: "payment failed"}},
		},
		{
			name:       "stock failure without reason gets a default",
			steps:      []step{ok(StockReservationFailed{})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: "stock reservation failed"},
			wantEvents: []Event{Rejected{Reason: "stock reservation failed"}},
		},
		{
			name: "duplicate successes confirm once",
			steps: []step{
				ok(StockReserved{}), ok(StockReserved{}),
				ok(PaymentSucceeded{PaymentID: paymentID}), ok(StockReserved{}), ok(PaymentSucceeded{PaymentID: paymentID}),
			},
			wantState:  sagaState{Status: StatusConfirmed, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}},
		},
		{
			name:      "first payment id wins",
			steps:     []step{ok(PaymentSucceeded{PaymentID: paymentID}), ok(PaymentSucceeded{PaymentID: "ch_other"})},
			wantState: sagaState{Status: StatusPending, PaymentSucceeded: true, PaymentID: paymentID},
		},
		{
			name:       "failure after confirmation is ignored",
			steps:      []step{ok(StockReserved{}), ok(PaymentSucceeded{PaymentID: paymentID}), ok(PaymentFailed{Reason: paymentReason})},
			wantState:  sagaState{Status: StatusConfirmed, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}},
		},
		{
			name:       "timeout with nothing in rejects naming both",
			steps:      []step{ok(Timeout{After: 15 * time.Minute})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: "timed out after 15m0s waiting for stock and payment"},
			wantEvents: []Event{Rejected{Reason: "timed out after 15m0s waiting for stock and payment"}},
		},
		{
			name:       "timeout after stock names payment",
			steps:      []step{ok(StockReserved{}), ok(Timeout{After: time.Minute})},
			wantState:  sagaState{Status: StatusRejected, StatusReason: "timed out after 1m0s waiting for payment", StockReserved: true},
			wantEvents: []Event{Rejected{Reason: "timed out after 1m0s waiting for payment"}},
		},
		{
			name:  "timeout after payment names stock, and the late stock is ignored",
			steps: []step{ok(PaymentSucceeded{PaymentID: paymentID}), ok(Timeout{After: time.Minute}), ok(StockReserved{})},
			wantState: sagaState{Status: StatusRejected, StatusReason: "timed out after 1m0s waiting for stock",
				PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Rejected{Reason: "timed out after 1m0s waiting for stock"}},
		},
		{
			name:       "timeout of a confirmed order changes nothing",
			steps:      []step{ok(StockReserved{}), ok(PaymentSucceeded{PaymentID: paymentID}), ok(Timeout{After: time.Minute})},
			wantState:  sagaState{Status: StatusConfirmed, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}},
		},
		{
			name:       "cancel pending",
			steps:      []step{ok(Cancel{Reason: cancelReason})},
			wantState:  sagaState{Status: StatusCancelled, StatusReason: cancelReason},
			wantEvents: []Event{Cancelled{Reason: cancelReason}},
		},
		{
			name:       "cancel without reason",
			steps:      []step{ok(Cancel{})},
			wantState:  sagaState{Status: StatusCancelled},
			wantEvents: []Event{Cancelled{}},
		},
		{
			name: "confirm then cancel emits both",
			steps: []step{
				ok(StockReserved{}), ok(PaymentSucceeded{PaymentID: paymentID}), ok(Cancel{Reason: cancelReason}),
			},
			wantState:  sagaState{Status: StatusCancelled, StatusReason: cancelReason, StockReserved: true, PaymentSucceeded: true, PaymentID: paymentID},
			wantEvents: []Event{Confirmed{}, Cancelled{Reason: cancelReason}},
		},
		{
			name: "outcomes after cancel are ignored",
			steps: []step{
				ok(StockReserved{}), ok(Cancel{Reason: cancelReason}),
				ok(PaymentSucceeded{PaymentID: paymentID}), ok(PaymentFailed{Reason: paymentReason}),
			},
			wantState:  sagaState{Status: StatusCancelled, StatusReason: cancelReason, StockReserved: true},
			wantEvents: []Event{Cancelled{Reason: cancelReason}},
		},
		{
			name:       "cancel rejected order fails",
			steps:      []step{ok(PaymentFailed{Reason: paymentReason}), {in: Cancel{Reason: cancelReason}, wantErr: ErrNotCancellable}},
			wantState:  sagaState{Status: StatusRejected, StatusReason: paymentReason},
			wantEvents: []Event{Rejected{Reason: paymentReason}},
		},
		{
			name:       "second cancel fails",
			steps:      []step{ok(Cancel{Reason: cancelReason}), {in: Cancel{Reason: "again"}, wantErr: ErrNotCancellable}},
			wantState:  sagaState{Status: StatusCancelled, StatusReason: cancelReason},
			wantEvents: []Event{Cancelled{Reason: cancelReason}},
		},
		{
			name:      "payment succeeded without id is invalid",
			steps:     []step{{in: PaymentSucceeded{}, wantErr: ErrInvalid}},
			wantState: sagaState{Status: StatusPending},
		},
		{
			name:      "nil input is invalid",
			steps:     []step{{in: nil, wantErr: ErrInvalid}},
			wantState: sagaState{Status: StatusPending},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, events := fold(t, pendingOrder(t), tt.steps)
			if diff := cmp.Diff(tt.wantState, stateOf(got)); diff != "" {
				t.Errorf("end state mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantEvents, events); diff != "" {
				t.Errorf("events mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestApplyInvalidStatus(t *testing.T) {
	o := pendingOrder(t)
	o.Status = StatusUnspecified
	if _, err := o.Apply(StockReserved{}, t0); !errors.Is(err, ErrInvalid) {
		t.Errorf("Apply on an order without status: error = %v, want ErrInvalid", err)
	}
}

// outcome is one possible outcome of a worker, with a short name for
// subtest names.
type outcome struct {
	name   string
	in     Input
	failed bool
	reason string
}

var (
	stockOutcomes = []outcome{
		{name: "S+", in: StockReserved{}},
		{name: "S-", in: StockReservationFailed{Reason: stockReason}, failed: true, reason: stockReason},
	}
	paymentOutcomes = []outcome{
		{name: "P+", in: PaymentSucceeded{PaymentID: paymentID}},
		{name: "P-", in: PaymentFailed{Reason: paymentReason}, failed: true, reason: paymentReason},
	}
)

// interleavings returns every distinct sequence holding a copies of x and
// b copies of y.
func interleavings(x, y outcome, a, b int) [][]outcome {
	if a == 0 && b == 0 {
		return [][]outcome{nil}
	}
	var out [][]outcome
	if a > 0 {
		for _, rest := range interleavings(x, y, a-1, b) {
			out = append(out, append([]outcome{x}, rest...))
		}
	}
	if b > 0 {
		for _, rest := range interleavings(x, y, a, b-1) {
			out = append(out, append([]outcome{y}, rest...))
		}
	}
	return out
}

// expectation is what a sequence of outcomes with an optional cancel must
// end in, derived from the saga's rules independently of Apply.
type expectation struct {
	status       Status
	reason       string
	events       []Event
	cancelFailed bool
}

// expect derives the result of feeding seq with a Cancel inserted before
// seq[cancelAt] (cancelAt == len(seq) means after all; -1 means no cancel).
// The saga is decided at the first failure, or, when nothing fails, at the
// point where both successes have arrived; a cancel before that point wins,
// a cancel after a confirmation follows it, a cancel after a rejection
// fails.
func expect(seq []outcome, cancelAt int) expectation {
	decidedAt, seenStock, seenPayment := -1, false, false
	var decided expectation
	for i, o := range seq {
		if o.failed {
			decidedAt = i
			decided = expectation{status: StatusRejected, reason: o.reason, events: []Event{Rejected{Reason: o.reason}}}
			break
		}
		if _, ok := o.in.(StockReserved); ok {
			seenStock = true
		} else {
			seenPayment = true
		}
		if seenStock && seenPayment {
			decidedAt = i
			decided = expectation{status: StatusConfirmed, events: []Event{Confirmed{}}}
			break
		}
	}
	switch {
	case cancelAt < 0:
		return decided
	case decidedAt < 0 || cancelAt <= decidedAt:
		return expectation{status: StatusCancelled, reason: cancelReason, events: []Event{Cancelled{Reason: cancelReason}}}
	case decided.status == StatusConfirmed:
		return expectation{status: StatusCancelled, reason: cancelReason, events: []Event{Confirmed{}, Cancelled{Reason: cancelReason}}}
	default:
		decided.cancelFailed = true
		return decided
	}
}

// TestApplyEveryPermutation feeds the saga every ordering of one stock
// outcome and one payment outcome (both kinds of each), each repeated one to
// three times so that duplicates land everywhere, with and without a
// customer's cancel at every position.
func TestApplyEveryPermutation(t *testing.T) {
	const maxCopies = 3
	cases := 0
	for _, so := range stockOutcomes {
		for _, po := range paymentOutcomes {
			endStatuses := map[Status]bool{}
			endReasons := map[string]bool{}
			for a := 1; a <= maxCopies; a++ {
				for b := 1; b <= maxCopies; b++ {
					for _, seq := range interleavings(so, po, a, b) {
						for cancelAt := -1; cancelAt <= len(seq); cancelAt++ {
							cases++
							name := seqName(seq, cancelAt)
							want := expect(seq, cancelAt)
							t.Run(name, func(t *testing.T) {
								steps := make([]step, 0, len(seq)+1)
								for i, o := range seq {
									if i == cancelAt {
										steps = append(steps, cancelStep(want))
									}
									steps = append(steps, ok(o.in))
								}
								if cancelAt == len(seq) {
									steps = append(steps, cancelStep(want))
								}
								got, events := fold(t, pendingOrder(t), steps)
								if got.Status != want.status || got.StatusReason != want.reason {
									t.Errorf("end state = %v %q, want %v %q", got.Status, got.StatusReason, want.status, want.reason)
								}
								if diff := cmp.Diff(want.events, events); diff != "" {
									t.Errorf("events mismatch (-want +got):\n%s", diff)
								}
								terminal := 0
								for _, ev := range events {
									if _, ok := ev.(Cancelled); !ok {
										terminal++
									}
								}
								if terminal != 1 && cancelAt < 0 {
									t.Errorf("emitted %d confirm/reject events, want exactly 1", terminal)
								}
								if cancelAt < 0 {
									endStatuses[got.Status] = true
									if !so.failed || !po.failed {
										endReasons[got.StatusReason] = true
									}
								}
							})
						}
					}
				}
			}
			// Without a cancel, the end status must not depend on order or
			// duplicates; neither may the reason, unless both outcomes fail
			// (then the first failure to arrive names it).
			if len(endStatuses) != 1 {
				t.Errorf("%s,%s: end statuses depend on arrival order: %v", so.name, po.name, endStatuses)
			}
			if len(endReasons) > 1 {
				t.Errorf("%s,%s: end reasons depend on arrival order: %v", so.name, po.name, endReasons)
			}
		}
	}
	t.Logf("checked %d sequences", cases)
}

func cancelStep(want expectation) step {
	s := step{in: Cancel{Reason: cancelReason}}
	if want.cancelFailed {
		s.wantErr = ErrNotCancellable
	}
	return s
}

func seqName(seq []outcome, cancelAt int) string {
	parts := make([]string, 0, len(seq)+1)
	for i, o := range seq {
		if i == cancelAt {
			parts = append(parts, "C")
		}
		parts = append(parts, o.name)
	}
	if cancelAt == len(seq) {
		parts = append(parts, "C")
	}
	return strings.Join(parts, ",")
}

// ExampleOrder_Apply shows the saga confirming an order whose payment
// arrived before its stock reservation.
func ExampleOrder_Apply() {
	o, _ := New("order-1", Request{
		RequestID:     "req-1",
		CustomerEmail: "ada@example.com",
		Items:         []LineItem{{ProductID: "SKU-1", Quantity: 2, UnitPrice: Money{CurrencyCode: "EUR", Units: 5}}},
		PaymentToken:  "tok_visa",
	}, t0)
	for _, in := range []Input{PaymentSucceeded{PaymentID: "ch_1"}, StockReserved{}, StockReserved{}} {
		tr, _ := o.Apply(in, t0)
		o = tr.Order
		fmt.Printf("%T: %v changed=%v events=%v\n", in, o.Status, tr.Changed, tr.Events)
	}
	// Output:
	// order.PaymentSucceeded: PENDING changed=true events=[]
	// order.StockReserved: CONFIRMED changed=true events=[{}]
	// order.StockReserved: CONFIRMED changed=false events=[]
}
