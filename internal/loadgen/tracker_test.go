package loadgen

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// scriptedOrders answers ListOrders from a fixed list, newest first, with
// the status filter and paging of the real service, and records each
// request.
type scriptedOrders struct {
	orderv1.OrderServiceClient // only ListOrders is called

	orders []*orderv1.Order
	reqs   []*orderv1.ListOrdersRequest
}

func (s *scriptedOrders) ListOrders(_ context.Context, req *orderv1.ListOrdersRequest, _ ...grpc.CallOption) (*orderv1.ListOrdersResponse, error) {
	s.reqs = append(s.reqs, req)
	var match []*orderv1.Order
	for _, o := range s.orders {
		if req.GetStatus() == orderv1.OrderStatus_ORDER_STATUS_UNSPECIFIED || o.GetStatus() == req.GetStatus() {
			match = append(match, o)
		}
	}
	from := 0
	if t := req.GetPageToken(); t != "" {
		from, _ = strconv.Atoi(t)
	}
	to := min(from+int(req.GetPageSize()), len(match))
	resp := &orderv1.ListOrdersResponse{Orders: match[from:to]}
	if to < len(match) {
		resp.NextPageToken = strconv.Itoa(to)
	}
	return resp, nil
}

func TestTrackerListsPendingOrdersInTheBasicView(t *testing.T) {
	ctx := context.Background()
	start := time.Date(2026, 11, 27, 10, 0, 0, 0, time.UTC)
	order := func(id string, st orderv1.OrderStatus, after time.Duration) *orderv1.Order {
		return &orderv1.Order{Id: id, Status: st, UpdateTime: timestamppb.New(start.Add(after))}
	}
	// More pending orders than fit a page, so both passes follow tokens.
	var orders []*orderv1.Order
	for i := range maxPageSize + 5 {
		orders = append(orders, order("p"+strconv.Itoa(i), orderv1.OrderStatus_ORDER_STATUS_PENDING, 0))
	}
	orders = append(orders,
		order("confirmed", orderv1.OrderStatus_ORDER_STATUS_CONFIRMED, 300*time.Millisecond),
		order("rejected", orderv1.OrderStatus_ORDER_STATUS_REJECTED, 100*time.Millisecond),
	)
	client := &scriptedOrders{orders: orders}
	tr := NewTracker(client)
	for _, id := range []string{"p3", "p1004", "confirmed", "rejected", "gone"} {
		tr.Add(id, start)
	}

	pending, err := tr.Poll(ctx)
	if err != nil {
		t.Fatalf("Poll: %v", err)
	}
	if pending != 2 {
		t.Errorf("Poll = %d pending, want 2 (p3 and p1004, the latter on the second page)", pending)
	}
	if terminal, open := tr.Counts(); terminal != 3 || open != 2 {
		t.Errorf("Counts = %d terminal, %d pending; want 3 and 2", terminal, open)
	}
	if len(client.reqs) != 2 {
		t.Fatalf("Poll made %d ListOrders calls, want 2 (two pages)", len(client.reqs))
	}
	for i, req := range client.reqs {
		if req.GetView() != orderv1.OrderView_ORDER_VIEW_BASIC || req.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_PENDING {
			t.Errorf("Poll's request %d: view %v, status %v; want the basic view of pending orders", i, req.GetView(), req.GetStatus())
		}
	}

	client.reqs = nil
	out, err := tr.Final(ctx)
	if err != nil {
		t.Fatalf("Final: %v", err)
	}
	for i, req := range client.reqs {
		if req.GetView() != orderv1.OrderView_ORDER_VIEW_BASIC {
			t.Errorf("Final's request %d: view %v, want the basic view", i, req.GetView())
		}
	}
	want := Outcome{
		Statuses:     map[string]int{"PENDING": 2, "CONFIRMED": 1, "REJECTED": 1},
		Latencies:    []time.Duration{300 * time.Millisecond, 100 * time.Millisecond},
		ConfirmedAt:  []time.Time{start.Add(300 * time.Millisecond)},
		LastTerminal: start.Add(300 * time.Millisecond),
		Missing:      1, // "gone" was never listed.
	}
	if diff := cmp.Diff(want, out); diff != "" {
		t.Errorf("Final (-want +got):\n%s", diff)
	}
}
