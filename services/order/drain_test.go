package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"maps"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/logtest"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// started is an order service run by startService.
type started struct {
	addr net.Addr
	logs *logtest.Buffer // what it wrote to stdout
	stop context.CancelFunc
	done <-chan struct{} // closed when run returned
	err  *error          // what run returned, once done is closed
}

// startService runs the service, on a schema and a topology prefix of the
// test's own, with env added to its environment, and waits until it
// serves. The test stops it; it is stopped when the test ends otherwise.
func startService(t *testing.T, env map[string]string) started {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "order-main-" + hex.EncodeToString(b[:]) + "."
	schema := postgrestest.RandomSchema(t)
	t.Cleanup(func() { postgrestest.DropSchema(t, schema) })
	t.Cleanup(func() {
		platformtest.DeleteTopology(t, platformtest.AMQPURL(), prefix, []string{"order"}, []time.Duration{time.Second})
	})
	full := map[string]string{
		"ORDERMESH_DATABASE_URL":    postgrestest.URL(),
		"ORDERMESH_DATABASE_SCHEMA": schema,
		"ORDERMESH_AMQP_URL":        platformtest.AMQPURL(),
		"ORDERMESH_TOPOLOGY_PREFIX": prefix,
		"ORDERMESH_RETRY_DELAYS":    "1s",
		"ORDERMESH_GRPC_ADDR":       "127.0.0.1:0",
		"ORDERMESH_ADMIN_ADDR":      "off",
	}
	maps.Copy(full, env)
	ctx, stop := context.WithCancel(context.Background())
	ready := make(chan net.Addr, 1)
	done := make(chan struct{})
	var runErr error
	logs := &logtest.Buffer{}
	go func() {
		defer close(done)
		runErr = run(ctx, func(k string) string { return full[k] }, logs, ready)
	}()
	t.Cleanup(func() {
		stop()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			t.Error("the service did not stop")
		}
	})
	select {
	case addr := <-ready:
		return started{addr: addr, logs: logs, stop: stop, done: done, err: &runErr}
	case <-done:
		t.Fatalf("run: %v", runErr)
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not start")
	}
	return started{}
}

// During ORDERMESH_DRAIN_DELAY the service still serves WatchOrder; a
// watch opened then must still see the order change.
func TestWatchSeesChangesDuringTheDrainDelay(t *testing.T) {
	svc := startService(t, map[string]string{"ORDERMESH_DRAIN_DELAY": "8s"})
	addr, stop := svc.addr, svc.stop
	conn, err := grpc.NewClient(addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	client := orderv1.NewOrderServiceClient(conn)
	callCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	created, err := client.CreateOrder(callCtx, &orderv1.CreateOrderRequest{
		RequestId: uuid.NewString(), CustomerEmail: "ada@example.com", PaymentToken: "tok_visa",
		Items: []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 3}}},
	})
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	id := created.GetOrder().GetId()

	stop() // as SIGTERM does
	time.Sleep(500 * time.Millisecond)
	stream, err := client.WatchOrder(callCtx, &orderv1.WatchOrderRequest{OrderId: id})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if first, err := stream.Recv(); err != nil || first.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_PENDING {
		t.Fatalf("first snapshot: %v, %v", first, err)
	}
	if _, err := client.CancelOrder(callCtx, &orderv1.CancelOrderRequest{OrderId: id}); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	if next, err := stream.Recv(); err != nil || next.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED {
		t.Fatalf("second snapshot: %v, %v; want CANCELLED while the server drains", next, err)
	}
	select {
	case <-svc.done:
		if *svc.err != nil {
			t.Fatalf("run: %v", *svc.err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not stop")
	}
}
