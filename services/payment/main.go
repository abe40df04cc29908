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
	"os/signal"
	"syscall"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/services/payment/internal/app"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
	"github.com/ordermesh/ordermesh/services/payment/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "payment:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	return service.Main(ctx, getenv, stdout, ready, service.Spec{
		Name:      app.Source,
		GRPCAddr:  ":50053",
		AdminAddr: "127.0.0.1:9093",
		// The built-in provider answers at once, so deliveries can share
		// transactions; with a remote provider each charge would hold up
		// its batch, and batching should be off.
		BatchLanes:         4,
		Migrations:         []postgres.Source{store.Migrations},
		BrokerGatesServing: true,
		MemoryLimit:        service.WorkerMemoryLimit,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			a := app.New(s.Pool, provider.NewDeterministic(), s.Log)
			return nil, errors.Join(
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCreated)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderRejected)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCancelled)),
			)
		},
	})
}
