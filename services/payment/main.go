// Command payment runs the payment service: it charges an order's total
// when the order is created and refunds the charge when the order is
// rejected or cancelled, each effectively once (inbox), through a Provider
// (the built-in deterministic one), and publishes the outcomes through the
// outbox. It serves gRPC health and reflection only.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/shutdown"
	"github.com/ordermesh/ordermesh/services/payment/internal/app"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
	"github.com/ordermesh/ordermesh/services/payment/internal/store"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "payment:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	return service.Main(ctx, getenv, stdout, ready, service.Spec{
		Name:               app.Source,
		GRPCAddr:           ":50053",
		AdminAddr:          "127.0.0.1:9093",
		Migrations:         []postgres.Source{store.Migrations},
		BrokerGatesServing: true,
		MemoryLimit:        service.WorkerMemoryLimit,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			a := app.New(s.Pool, provider.NewDeterministic(), s.Log)
			// Every order event goes through one batch runner: the events
			// handled at once share a transaction and a few statements
			// (see app.Handle). Handle calls the provider for each event
			// in turn inside the batch's transaction, which is fine with
			// the built-in provider: it answers at once. A remote provider
			// would hold up the whole batch, and its lock on every order
			// of it, for the sum of its calls (Handle ends them before the
			// batch's deadline, so that one that hangs fails alone); with
			// one, the calls would have to be made concurrently, or
			// batching reconsidered.
			b := s.NewBatchRunner(a.Handle)
			return nil, errors.Join(
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderCreated](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderRejected](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderCancelled](b)),
			)
		},
	})
}
