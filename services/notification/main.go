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

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/shutdown"
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

func main() {
	ctx, stop := shutdown.OnSignal()
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
			// A batch's emails go out at once, and a batch holds up to
			// the consumer concurrency: keep that many sessions open for
			// them.
			var err error
			if m, err = mailer.New(smtp, s.Log, mailer.WithIdleSessions(s.Config.Concurrency)); err != nil {
				return nil, err
			}
			a, err := app.New(m, s.Log, app.WithSends(s.Config.Concurrency), app.WithMessageIDDomain(m.Domain()))
			if err != nil {
				return nil, err
			}
			// Every order event goes through one batch runner: the events
			// handled at once share a transaction, a few statements and
			// one commit (see app.Handle), instead of one each.
			//
			// The runner has one transaction in flight at a time, and the
			// emails are sent inside it. A slow SMTP server does not stall
			// the service worse than it did when each delivery had a
			// transaction of its own: a batch's emails are sent at once,
			// each over its own session, so a batch takes about as long
			// as its slowest email rather than the sum of them, and as
			// many emails are in flight as before (up to the consumer
			// concurrency); meanwhile the next batch gathers the
			// deliveries that arrive. Every email is bounded by the
			// mailer's timeout (ORDERMESH_SMTP_TIMEOUT), and all end a
			// little before the transaction's (ORDERMESH_HANDLER_TIMEOUT),
			// so that one that hangs fails alone. The trade-off left: one
			// stuck send holds up its whole batch, the deliveries queued
			// behind it and any batch of another instance waiting for one
			// of its claims, until that timeout, where before it held up
			// only its own delivery while the others went on.
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
