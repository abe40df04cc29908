package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"io"
	"net"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// During ORDERMESH_DRAIN_DELAY the service still serves WatchOrder; a
// watch opened then must still see the order change.
func TestWatchSeesChangesDuringTheDrainDelay(t *testing.T) {
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix := "order-drain-" + hex.EncodeToString(b[:]) + "."
	schema := postgrestest.RandomSchema(t)
	t.Cleanup(func() { postgrestest.DropSchema(t, schema) })
	t.Cleanup(func() {
		platformtest.DeleteTopology(t, platformtest.AMQPURL(), prefix, []string{"order"}, []time.Duration{time.Second})
	})
	env := map[string]string{
		"ORDERMESH_DATABASE_URL":    postgrestest.URL(),
		"ORDERMESH_DATABASE_SCHEMA": schema,
		"ORDERMESH_AMQP_URL":        platformtest.AMQPURL(),
		"ORDERMESH_TOPOLOGY_PREFIX": prefix,
		"ORDERMESH_RETRY_DELAYS":    "1s",
		"ORDERMESH_GRPC_ADDR":       "127.0.0.1:0",
		"ORDERMESH_ADMIN_ADDR":      "off",
		"ORDERMESH_DRAIN_DELAY":     "8s",
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return env[k] }, io.Discard, ready) }()
	var addr net.Addr
	select {
	case addr = <-ready:
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not start")
	}
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
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the service did not stop")
	}
}
