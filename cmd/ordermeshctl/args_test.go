package main

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// recordingOrders keeps the CancelOrder requests it gets, and holds every
// WatchOrder and GetOrder open until the call ends.
type recordingOrders struct {
	orderv1.UnimplementedOrderServiceServer
	mu      sync.Mutex
	cancels []*orderv1.CancelOrderRequest
}

func (r *recordingOrders) CancelOrder(_ context.Context, req *orderv1.CancelOrderRequest) (*orderv1.CancelOrderResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.cancels = append(r.cancels, proto.CloneOf(req))
	return &orderv1.CancelOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), Status: orderv1.OrderStatus_ORDER_STATUS_CANCELLED}}, nil
}

func (r *recordingOrders) WatchOrder(req *orderv1.WatchOrderRequest, s grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	if err := s.Send(&orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), Status: orderv1.OrderStatus_ORDER_STATUS_PENDING}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return s.Context().Err()
}

func (r *recordingOrders) GetOrder(ctx context.Context, _ *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// serveOrders serves orders on a port of its own until the test ends and
// returns its address.
func serveOrders(t *testing.T, orders orderv1.OrderServiceServer) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	orderv1.RegisterOrderServiceServer(srv, orders)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return ln.Addr().String()
}

// TestArgumentsAreAllTaken: flags may come before or after a command's
// arguments, and an argument a command does not take is a usage error
// (exit 2) rather than ignored.
func TestArgumentsAreAllTaken(t *testing.T) {
	orders := &recordingOrders{}
	addr := serveOrders(t, orders)
	const id = "0192f3a4-5b6c-7d8e-9f01-23456789abcd"
	for _, tt := range []struct {
		args []string
		code int
	}{
		{[]string{"cancel", "--reason", "changed my mind", id}, exitOK},
		{[]string{"cancel", id, "--reason", "changed my mind"}, exitOK},
		{[]string{"cancel", id, id}, exitUsage},
		{[]string{"cancel"}, exitUsage},
		{[]string{"list", "junk"}, exitUsage},
		{[]string{"list", "--limit", "-1"}, exitUsage},
		{[]string{"health", "junk"}, exitUsage},
		{[]string{"place", "SKU-1:1:1.+5EUR", "--email", "ada@example.com"}, exitUsage},
		// After "--", arguments that start with '-' (a SKU may) are no
		// flags: the place reaches the service, which implements none.
		{[]string{"place", "--email", "ada@example.com", "--", "-A:1:1EUR", "-B:1:1EUR"}, exitFailure},
		{[]string{"place", "--email", "ada@example.com", "-B:1:1EUR"}, exitUsage},
	} {
		var out, errOut bytes.Buffer
		args := append([]string{"--addr", addr, "--timeout", "5s"}, tt.args...)
		if code := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); code != tt.code {
			t.Errorf("%q: exit %d (%s%s), want %d", tt.args, code, out.String(), errOut.String(), tt.code)
		}
	}
	orders.mu.Lock()
	defer orders.mu.Unlock()
	if len(orders.cancels) != 2 {
		t.Fatalf("%d cancels reached the service, want 2", len(orders.cancels))
	}
	for _, c := range orders.cancels {
		if c.GetOrderId() != id || c.GetReason() != "changed my mind" {
			t.Errorf("cancel sent %v, want order %s with its reason", c, id)
		}
	}
}

// TestInterrupted: a watch stopped by Ctrl-C ends 0, the way to stop it;
// another command stopped before it was done ends 130.
func TestInterrupted(t *testing.T) {
	addr := serveOrders(t, &recordingOrders{})
	const id = "0192f3a4-5b6c-7d8e-9f01-23456789abcd"
	for _, tt := range []struct {
		cmd  string
		code int
	}{
		{"watch", exitOK},
		{"get", exitInterrupted},
	} {
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(300*time.Millisecond, cancel)
		var out, errOut bytes.Buffer
		if code := run(ctx, []string{"--addr", addr, "--timeout", "30s", tt.cmd, id}, func(string) string { return "" }, &out, &errOut); code != tt.code {
			t.Errorf("%s interrupted: exit %d (%s%s), want %d", tt.cmd, code, out.String(), errOut.String(), tt.code)
		}
		cancel()
	}
}
