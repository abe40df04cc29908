// Command order runs the order service: OrderService over gRPC, orders in
// PostgreSQL with their events in the same transaction (outbox), and the
// order saga driven by inventory's and payment's outcome events.
//
// It keeps taking orders while the broker is away (events wait in the
// outbox), so only the database gates its health; the broker link is
// reported under the health name "ordermesh.eventbus".
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"syscall"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/grpcapi"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "order:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	env := config.NewEnv(getenv)
	cfg := service.ReadConfig(env, app.Source, ":50051", "127.0.0.1:9091")
	if err := env.Err(); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	log := telemetry.NewLogger(stdout, app.Source, cfg.LogLevel)

	spec := service.Spec{
		Name:       app.Source,
		Migrations: []postgres.Source{store.Migrations},
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			// Watchers see order changes from every instance through
			// PostgreSQL notifications.
			watcher := store.NewWatcher(cfg.DatabaseURL, cfg.DatabaseSchema, log)
			a := app.New(s.Pool, watcher, log)
			orderv1.RegisterOrderServiceServer(s.GRPC, grpcapi.New(a, log, s.GRPC.Draining()))

			// The saga's inputs, each applied effectively once, and the
			// compensations and notifications for the orders' timelines.
			for _, err := range []error{
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.StockReserved)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.StockReservationFailed)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.PaymentSucceeded)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.PaymentFailed)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.StockReleased)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.PaymentRefunded)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.NotificationSent)),
			} {
				if err != nil {
					return nil, fmt.Errorf("register handler: %w", err)
				}
			}
			return []service.Task{watcher.Run}, nil
		},
	}
	return service.Run(ctx, spec, cfg, log, ready)
}
