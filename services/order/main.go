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
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"time"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/shutdown"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/grpcapi"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "order:", err)
		os.Exit(1)
	}
}

// Orders still PENDING this long after they were placed are rejected
// (ORDERMESH_ORDER_TIMEOUT, 0 to turn it off): an outcome they wait for may
// never come, e.g. when its event was dead-lettered.
const (
	envOrderTimeout     = "ORDERMESH_ORDER_TIMEOUT"
	defaultOrderTimeout = 15 * time.Minute
)

const envDatabaseSchema = "ORDERMESH_DATABASE_SCHEMA"

// WatchOrder streams open at once (ORDERMESH_MAX_WATCHES, 0 for no bound).
const (
	envMaxWatches     = "ORDERMESH_MAX_WATCHES"
	defaultMaxWatches = 10000
)

func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	var (
		orderTimeout time.Duration
		maxWatches   int
	)
	return service.Main(ctx, getenv, stdout, ready, service.Spec{
		Name:      app.Source,
		GRPCAddr:  ":50051",
		AdminAddr: "127.0.0.1:9091",
		ReadConfig: func(env *config.Env) {
			orderTimeout = env.Duration(envOrderTimeout, defaultOrderTimeout)
			if orderTimeout < 0 {
				env.Fail(envOrderTimeout, fmt.Errorf("must not be negative, got %s", orderTimeout))
			}
			maxWatches = env.Int(envMaxWatches, defaultMaxWatches)
			if maxWatches < 0 {
				env.Fail(envMaxWatches, fmt.Errorf("must not be negative, got %d", maxWatches))
			}
			// Names over 63 bytes are refused for every service.
			if s := env.String(envDatabaseSchema, app.Source); len(s) > store.MaxSchemaLen && len(s) <= 63 {
				env.Fail(envDatabaseSchema, fmt.Errorf("%q is %d bytes; the order service's is at most %d (its change notifications' channel, orders.<schema>, is at most 63)",
					s, len(s), store.MaxSchemaLen))
			}
		},
		Migrations: []postgres.Source{store.Migrations},
		// Under the benchmark's CreateOrder load the service spent about
		// 8% (8 clients) and 13% (50 clients) less CPU per order with
		// workers than without.
		StreamWorkers: 64,
		// The live heap is small and every CreateOrder allocates, so at
		// the runtime's GOGC of 100 the collector ran often: in create-only
		// benchmark runs alternating 100 and 200, twice each, the
		// service's CPU per CreateOrder was 438 and 434 → 358 and 398 µs
		// at 8 clients, 243 and 221 → 199 and 191 at 50, 281 and 241 →
		// 224 and 217 through the gateway (PostgreSQL's fell too between
		// those runs: part of it is the machine); its peak RSS end to end
		// rose from 41–44 to 54 MiB.
		GCPercent: 200,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			// Watchers see order changes from every instance through
			// PostgreSQL notifications.
			watcher := store.NewWatcher(s.Pool.Config().ConnConfig, s.Config.DatabaseSchema, s.Log)
			a := app.New(s.Pool, watcher, s.Log, s.Relay.Wake)
			orderv1.RegisterOrderServiceServer(s.GRPC, grpcapi.New(a, s.Log, s.GRPC.Draining(), grpcapi.MaxWatches(maxWatches)))

			if ladder := ladderLength(s.Config.RetryDelays); orderTimeout > 0 && orderTimeout < ladder {
				s.Log.WarnContext(ctx, "ORDERMESH_ORDER_TIMEOUT is shorter than the retry ladder (ORDERMESH_RETRY_DELAYS): orders whose outcomes are still being retried will be rejected",
					slog.Duration("timeout", orderTimeout), slog.Duration("ladder", ladder))
			}
			expire := func(ctx context.Context) error {
				return a.RunExpiry(ctx, orderTimeout, expiryInterval(orderTimeout))
			}
			// The saga's inputs, each applied effectively once, and the
			// compensations and emails for the orders' timelines all go
			// through one batch runner: the events handled at once share a
			// transaction and a few statements (see app.Handle), and one
			// transaction at a time keeps an instance's batches from
			// waiting on each other's order locks.
			b := s.NewBatchRunner(a.Handle)
			// Watches are served until the server drains, for
			// ORDERMESH_DRAIN_DELAY after ctx ends: the watcher listens
			// until then, so they still see the changes.
			watch := func(ctx context.Context) error {
				wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
				defer cancel()
				go func() {
					select {
					case <-s.GRPC.Draining():
					case <-wctx.Done():
					}
					cancel()
				}()
				return watcher.Run(wctx)
			}
			return []service.Task{watch, expire}, errors.Join(
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*inventoryv1.StockReserved](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*inventoryv1.StockReservationFailed](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*paymentv1.PaymentSucceeded](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*paymentv1.PaymentFailed](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*inventoryv1.StockReleased](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*paymentv1.PaymentRefunded](b)),
				eventbus.Handle(s.Subscriber, inbox.WrapBatch[*notificationv1.NotificationSent](b)),
			)
		},
	})
}

// ladderLength is how long an event failing every attempt takes to climb
// the retry ladder: the sum of its delays.
func ladderLength(delays []time.Duration) time.Duration {
	var sum time.Duration
	for _, d := range delays {
		sum += d
	}
	return sum
}

// expiryInterval is how often pending orders are checked against timeout:
// a quarter of it, between a second and a minute.
func expiryInterval(timeout time.Duration) time.Duration {
	return min(max(timeout/4, time.Second), time.Minute)
}
