// Command notification runs the notification service: it emails the
// customer over SMTP when an order is received, confirmed, rejected or
// cancelled — once per order and kind (inbox plus its own dedupe table) —
// and publishes NotificationSent through the outbox. It serves gRPC health
// and reflection only.
package main

import (
	"context"
	"errors"
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
	var (
		smtp mailer.Config
		m    *mailer.Mailer
	)
	// The mailer's open SMTP sessions close once the service has stopped,
	// after its last delivery.
	defer func() {
		if m != nil {
			m.Close()
		}
	}()
	return service.Main(ctx, getenv, stdout, ready, service.Spec{
		Name:               app.Source,
		GRPCAddr:           ":50054",
		AdminAddr:          "127.0.0.1:9094",
		Migrations:         []postgres.Source{store.Migrations},
		BrokerGatesServing: true,
		MemoryLimit:        service.WorkerMemoryLimit,
		ReadConfig:         func(env *config.Env) { smtp = mailer.ReadConfig(env) },
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			s.Log.InfoContext(ctx, "smtp", slog.Any("config", config.LogValue(smtp)))
			// As many emails go out at once as handlers run at once: keep
			// that many sessions open for them.
			var err error
			if m, err = mailer.New(smtp, s.Log, mailer.WithIdleSessions(s.Config.Concurrency)); err != nil {
				return nil, err
			}
			a, err := app.New(m, s.Log)
			if err != nil {
				return nil, err
			}
			return nil, errors.Join(
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCreated)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderConfirmed)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderRejected)),
				eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, a.OrderCancelled)),
			)
		},
	})
}
