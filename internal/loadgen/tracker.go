package loadgen

import (
	"context"
	"fmt"
	"sync"
	"time"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// TrackingMethod describes how a Tracker learns that orders are terminal,
// for reports.
const TrackingMethod = "ListOrders polling: PENDING orders are listed (basic view, without line items) every poll interval " +
	"(an order of the run missing from that list is terminal); afterwards one pass over ListOrders " +
	"reads each order's final status and update_time, and create→terminal is update_time (server clock) " +
	"minus the time the CreateOrder was due to be sent (client clock, same machine)"

// maxPageSize is ListOrders' largest page.
const maxPageSize = 1000

// Tracker follows the orders of a run to their terminal state by polling
// ListOrders, which costs the order service one query per poll for the
// whole backlog instead of a stream or a read per order, and asks for the
// basic view, without line items, so tracking perturbs what is measured
// as little as it can. It is safe for concurrent use.
type Tracker struct {
	client orderv1.OrderServiceClient

	mu   sync.Mutex
	open map[string]time.Time // not yet seen leaving PENDING → latency start
	done map[string]time.Time // seen terminal → latency start
}

// NewTracker returns a tracker querying client.
func NewTracker(client orderv1.OrderServiceClient) *Tracker {
	return &Tracker{client: client, open: map[string]time.Time{}, done: map[string]time.Time{}}
}

// Add starts tracking order id, whose create→terminal latency counts from
// start.
func (t *Tracker) Add(id string, start time.Time) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if _, ok := t.done[id]; !ok {
		t.open[id] = start
	}
}

// Counts returns how many tracked orders were seen terminal and how many
// were not yet.
func (t *Tracker) Counts() (terminal, pending int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.done), len(t.open)
}

// Poll lists the PENDING orders and marks every tracked order added before
// the call that is not among them as terminal. It returns how many tracked
// orders are still pending.
func (t *Tracker) Poll(ctx context.Context) (int, error) {
	t.mu.Lock()
	candidates := make(map[string]bool, len(t.open))
	for id := range t.open {
		candidates[id] = true
	}
	t.mu.Unlock()
	if len(candidates) == 0 {
		return 0, nil
	}
	token := ""
	for {
		resp, err := t.client.ListOrders(ctx, &orderv1.ListOrdersRequest{
			PageSize: maxPageSize, PageToken: token, Status: orderv1.OrderStatus_ORDER_STATUS_PENDING,
			View: orderv1.OrderView_ORDER_VIEW_BASIC,
		})
		if err != nil {
			return 0, fmt.Errorf("list pending orders: %w", err)
		}
		for _, o := range resp.GetOrders() {
			delete(candidates, o.GetId())
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for id := range candidates {
		if start, ok := t.open[id]; ok {
			delete(t.open, id)
			t.done[id] = start
		}
	}
	return len(t.open), nil
}

// Outcome is the final state of a run's orders.
type Outcome struct {
	// Statuses counts the orders by final status ("CONFIRMED", "PENDING", …).
	Statuses map[string]int
	// Latencies are the create→terminal latencies of the terminal orders.
	Latencies []time.Duration
	// ConfirmedAt are the update times of the confirmed orders.
	ConfirmedAt []time.Time
	// LastTerminal is the latest update_time among the terminal orders.
	LastTerminal time.Time
	// Missing counts tracked orders ListOrders did not return.
	Missing int
}

// Final reads every tracked order's status and update_time with one pass
// over ListOrders (newest first, stopping once all were seen).
func (t *Tracker) Final(ctx context.Context) (Outcome, error) {
	t.mu.Lock()
	want := make(map[string]time.Time, len(t.open)+len(t.done))
	for id, s := range t.open {
		want[id] = s
	}
	for id, s := range t.done {
		want[id] = s
	}
	t.mu.Unlock()
	out := Outcome{Statuses: map[string]int{}}
	token := ""
	for len(want) > 0 {
		resp, err := t.client.ListOrders(ctx, &orderv1.ListOrdersRequest{
			PageSize: maxPageSize, PageToken: token, View: orderv1.OrderView_ORDER_VIEW_BASIC,
		})
		if err != nil {
			return out, fmt.Errorf("list orders: %w", err)
		}
		for _, o := range resp.GetOrders() {
			start, ok := want[o.GetId()]
			if !ok {
				continue
			}
			delete(want, o.GetId())
			st := o.GetStatus()
			out.Statuses[statusName(st)]++
			if st == orderv1.OrderStatus_ORDER_STATUS_PENDING || st == orderv1.OrderStatus_ORDER_STATUS_UNSPECIFIED {
				continue
			}
			end := o.GetUpdateTime().AsTime()
			if st == orderv1.OrderStatus_ORDER_STATUS_CONFIRMED {
				out.ConfirmedAt = append(out.ConfirmedAt, end)
			}
			out.Latencies = append(out.Latencies, max(end.Sub(start), 0))
			if end.After(out.LastTerminal) {
				out.LastTerminal = end
			}
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	out.Missing = len(want)
	return out, nil
}

func statusName(s orderv1.OrderStatus) string {
	switch s {
	case orderv1.OrderStatus_ORDER_STATUS_PENDING:
		return "PENDING"
	case orderv1.OrderStatus_ORDER_STATUS_CONFIRMED:
		return "CONFIRMED"
	case orderv1.OrderStatus_ORDER_STATUS_REJECTED:
		return "REJECTED"
	case orderv1.OrderStatus_ORDER_STATUS_CANCELLED:
		return "CANCELLED"
	default:
		return s.String()
	}
}
