// Command inventory runs the inventory service: stock levels in
// PostgreSQL, InventoryService over gRPC, and reservations made and
// released as order events arrive (effectively once, through the inbox),
// with the outcomes published through the outbox.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/shutdown"
	"github.com/ordermesh/ordermesh/services/inventory/internal/app"
	"github.com/ordermesh/ordermesh/services/inventory/internal/grpcapi"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "inventory:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	return service.Main(ctx, getenv, stdout, ready, service.Spec{
		Name:               app.Source,
		GRPCAddr:           ":50052",
		AdminAddr:          "127.0.0.1:9092",
		Migrations:         []postgres.Source{store.Migrations},
		BrokerGatesServing: true,
		MemoryLimit:        service.WorkerMemoryLimit,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			a := app.New(s.Pool, s.Log)
			inventoryv1.RegisterInventoryServiceServer(s.GRPC, grpcapi.New(a, s.Log))
			// Every order event goes through one batch runner: the events
			// handled at once share a transaction and a few statements
			// (see app.Handle), and one transaction at a time keeps the
			// instance's batches from waiting on each other's stock locks.
			b := s.NewBatchRunner(a.Handle)
			return nil, errors.Join(
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderCreated](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderConfirmed](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderRejected](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderCancelled](b)),
			)
		},
	})
}
