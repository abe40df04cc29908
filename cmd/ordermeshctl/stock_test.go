package main

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
)

// recordingInventory answers SetStock with the level asked for and keeps
// the requests, so a test can see what the command line sent.
type recordingInventory struct {
	inventoryv1.UnimplementedInventoryServiceServer
	mu   sync.Mutex
	reqs []*inventoryv1.SetStockRequest
}

func (r *recordingInventory) SetStock(_ context.Context, req *inventoryv1.SetStockRequest) (*inventoryv1.SetStockResponse, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, proto.CloneOf(req))
	return &inventoryv1.SetStockResponse{Stock: &inventoryv1.Stock{ProductId: req.GetProductId(), Available: req.GetAvailable()}}, nil
}

// TestStockSetSendsTheConditionAsGiven: --if-available N goes to the
// service as given, 0 and negative values included (the service refuses
// a negative one), and without the flag the level is set unconditionally.
// A negative value used to be taken for "not given", so a script's bad
// arithmetic overwrote the level.
func TestStockSetSendsTheConditionAsGiven(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	inv := &recordingInventory{}
	srv := grpc.NewServer()
	inventoryv1.RegisterInventoryServiceServer(srv, inv)
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()

	for _, tt := range []struct {
		flags []string
		want  *int64
	}{
		{nil, nil},
		{[]string{"--if-available", "0"}, proto.Int64(0)},
		{[]string{"--if-available", "7"}, proto.Int64(7)},
		{[]string{"--if-available", "-3"}, proto.Int64(-3)},
	} {
		var out, errOut bytes.Buffer
		args := append([]string{"--inventory-addr", ln.Addr().String(), "stock", "set", "SKU-1", "10"}, tt.flags...)
		if code := run(context.Background(), args, func(string) string { return "" }, &out, &errOut); code != exitOK {
			t.Fatalf("%v: exit %d: %s%s", args, code, out.String(), errOut.String())
		}
		inv.mu.Lock()
		got := inv.reqs[len(inv.reqs)-1]
		inv.mu.Unlock()
		want := &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 10, ExpectedAvailable: tt.want}
		if !proto.Equal(got, want) {
			t.Errorf("%v sent %v, want %v", tt.flags, got, want)
		}
	}
}

// TestTimeoutMustBePositive: --timeout 0 made every call fail at once.
func TestTimeoutMustBePositive(t *testing.T) {
	for _, v := range []string{"0s", "-1s"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{"--timeout", v, "get", "x"}, func(string) string { return "" }, &out, &errOut); code != exitUsage {
			t.Errorf("--timeout %s: exit %d, want %d (usage): %s", v, code, exitUsage, errOut.String())
		}
	}
}
