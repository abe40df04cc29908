package loadgen

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// fakePlatform places orders at once (or as slow says) and confirms them
// at once; ListOrders fails as failLists says.
type fakePlatform struct {
	orderv1.OrderServiceClient // only ListOrders is called

	// slow, if set, says how long request n takes; a request that takes
	// longer than its context allows fails with its context's error.
	slow func(n int64) time.Duration
	// failLists is how many ListOrders calls fail, the first ones.
	failLists int
	// pending, if set, is what a listing of PENDING orders does: hang
	// until its context ends, or list every order as pending.
	pending string

	n      atomic.Int64
	mu     sync.Mutex
	orders []*orderv1.Order
	lists  int
}

// creator places orders on a fakePlatform, as a Creator.
type creator struct{ f *fakePlatform }

func (c creator) CreateOrder(ctx context.Context, _ *orderv1.CreateOrderRequest) (string, error) {
	f := c.f
	n := f.n.Add(1)
	if f.slow != nil {
		select {
		case <-time.After(f.slow(n)):
		case <-ctx.Done():
			return "", status.FromContextError(ctx.Err()).Err()
		}
	}
	id := "o" + strconv.FormatInt(n, 10)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orders = append(f.orders, &orderv1.Order{Id: id, Status: orderv1.OrderStatus_ORDER_STATUS_CONFIRMED, UpdateTime: timestamppb.Now()})
	return id, nil
}

func (f *fakePlatform) ListOrders(ctx context.Context, req *orderv1.ListOrdersRequest, _ ...grpc.CallOption) (*orderv1.ListOrdersResponse, error) {
	if req.GetStatus() == orderv1.OrderStatus_ORDER_STATUS_PENDING && f.pending == "hang" {
		<-ctx.Done()
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.lists++
	if f.lists <= f.failLists {
		return nil, status.Error(codes.Unavailable, "order store unavailable; retry later")
	}
	if req.GetStatus() == orderv1.OrderStatus_ORDER_STATUS_PENDING {
		if f.pending == "all" {
			return &orderv1.ListOrdersResponse{Orders: append([]*orderv1.Order(nil), f.orders...)}, nil
		}
		return &orderv1.ListOrdersResponse{}, nil // every order is confirmed
	}
	return &orderv1.ListOrdersResponse{Orders: append([]*orderv1.Order(nil), f.orders...)}, nil
}

// TestRunAfterAFailedPoll: a poll that fails only delays tracking; the
// final pass reads every order, and the run is not an error.
func TestRunAfterAFailedPoll(t *testing.T) {
	f := &fakePlatform{failLists: 2}
	sum, err := Run(context.Background(), Config{
		Creator: creator{f}, Orders: f, Concurrency: 2, Count: 20, Products: []string{"P"},
		PollInterval: 10 * time.Millisecond, DrainTimeout: 5 * time.Second,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sum.Final["CONFIRMED"] != 20 || sum.TerminalLatency.Count != 20 {
		t.Errorf("final %v, %d terminal latencies; want all 20 confirmed and measured", sum.Final, sum.TerminalLatency.Count)
	}
	if sum.PollErrors < 1 || sum.LastPollError == "" {
		t.Errorf("poll errors %d (%q), want the failed polls counted", sum.PollErrors, sum.LastPollError)
	}
}

// TestRunDrainBoundsItsPolls: a poll the server never answers ends with
// the drain timeout, not the request timeout or never.
func TestRunDrainBoundsItsPolls(t *testing.T) {
	f := &fakePlatform{pending: "hang"}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	begin := time.Now()
	sum, err := Run(ctx, Config{
		Creator: creator{f}, Orders: f, Concurrency: 2, Count: 5, Products: []string{"P"},
		PollInterval: time.Hour, DrainTimeout: 300 * time.Millisecond, RequestTimeout: 20 * time.Second,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("Run took %v with a drain timeout of 300ms", d)
	}
	if sum.Interrupted || sum.PollErrors == 0 || sum.Final["CONFIRMED"] != 5 {
		t.Errorf("interrupted %v, %d poll errors, final %v; want the hanging poll counted and every order read at the end", sum.Interrupted, sum.PollErrors, sum.Final)
	}
}

// TestRunInterruptedWhileDraining: ending ctx while the run waits for its
// orders to end marks the run interrupted: the orders still pending were
// cut short, not given the drain timeout.
func TestRunInterruptedWhileDraining(t *testing.T) {
	f := &fakePlatform{pending: "all"}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	sum, err := Run(ctx, Config{
		Creator: creator{f}, Orders: f, Concurrency: 2, Count: 5, Products: []string{"P"},
		PollInterval: 10 * time.Millisecond, DrainTimeout: time.Minute,
		AfterLoad: func() { time.AfterFunc(200*time.Millisecond, cancel) },
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if !sum.Interrupted {
		t.Error("a run interrupted while draining is not marked interrupted")
	}
}

// TestRunInterruptedFinishesWhatItSent: ending ctx stops the sending; the
// requests in flight finish and count, none as an error.
func TestRunInterruptedFinishesWhatItSent(t *testing.T) {
	f := &fakePlatform{slow: func(int64) time.Duration { return 100 * time.Millisecond }}
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(250*time.Millisecond, cancel)
	begin := time.Now()
	sum, err := Run(ctx, Config{Creator: creator{f}, Concurrency: 4, Duration: time.Minute, Products: []string{"P"}})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(begin); d > 5*time.Second {
		t.Errorf("Run took %v after being interrupted at 250ms", d)
	}
	if !sum.Interrupted || sum.Failed != 0 || sum.Created != sum.Sent || sum.Sent == 0 {
		t.Errorf("interrupted %v, sent %d, created %d, failed %d (%v); want every request sent to finish", sum.Interrupted, sum.Sent, sum.Created, sum.Failed, sum.Errors)
	}
	if sum.CreateLatency.Count != sum.Created {
		t.Errorf("%d latencies for %d orders", sum.CreateLatency.Count, sum.Created)
	}
}

// TestRunCountsTimeoutsInTheLatency: a request that times out is a
// latency (the slowest), not left out of the percentiles.
func TestRunCountsTimeoutsInTheLatency(t *testing.T) {
	f := &fakePlatform{slow: func(n int64) time.Duration {
		if n%5 == 0 {
			return time.Hour // times out
		}
		return 0
	}}
	sum, err := Run(context.Background(), Config{
		Creator: creator{f}, Concurrency: 1, Count: 20, Products: []string{"P"}, RequestTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	if sum.Errors["DEADLINE_EXCEEDED"] != 4 || sum.Created != 16 {
		t.Fatalf("errors %v, created %d; want 4 timeouts, 16 orders", sum.Errors, sum.Created)
	}
	if sum.CreateLatency.Count != 20 || sum.CreateLatency.P99 < 50 {
		t.Errorf("latency over %d requests, p99 %.1f ms; want all 20, p99 at least the 50 ms timeout", sum.CreateLatency.Count, sum.CreateLatency.P99)
	}
}
