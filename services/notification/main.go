// Command notification runs the notification service: it emails the
// customer over SMTP when an order is received, confirmed, rejected or
// cancelled — once per order and kind (inbox plus its own dedupe table) —
// and publishes NotificationSent through the outbox. It serves gRPC health
// and reflection only.
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "notification:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	env := config.NewEnv(getenv)
	cfg := service.ReadConfig(env, app.Source, ":50054", "127.0.0.1:9094")
	smtp := mailer.ReadConfig(env)
	if err := env.Err(); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	log := telemetry.NewLogger(stdout, app.Source, cfg.LogLevel)
	log.InfoContext(ctx, "smtp", slog.Any("config", config.LogValue(smtp)))

	spec := service.Spec{
		Name:               app.Source,
		Migrations:         []postgres.Source{store.Migrations},
		BrokerGatesServing: true,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			m, err := mailer.New(smtp, log)
			if err != nil {
				return nil, err
			}
			a, err := app.New(m, log)
			if err != nil {
				return nil, err
			}
			for _, err := range []error{
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCreated)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderConfirmed)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderRejected)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCancelled)),
			} {
				if err != nil {
					return nil, fmt.Errorf("register handler: %w", err)
				}
			}
			return nil, nil
		},
	}
	return service.Run(ctx, spec, cfg, log, ready)
}
