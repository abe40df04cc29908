package inbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// BenchmarkInboxConsume measures consuming events through the bus and the
// inbox (one PostgreSQL transaction per delivery, and batched) beside a raw
// amqp091-go consumer acking each delivery (prefetch 200), in the same run
// against the same queue. Each op is one event, published with confirms
// while the consumer drains. Run with a fixed count, e.g.
//
//	go test -run '^$' -bench InboxConsume -benchtime 5000x ./internal/inbox/
func BenchmarkInboxConsume(b *testing.B) {
	amqpURL := os.Getenv("ORDERMESH_TEST_AMQP_URL")
	if amqpURL == "" {
		amqpURL = eventbus.DefaultURL
	}
	var id [6]byte
	_, _ = rand.Read(id[:])
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg := eventbus.Config{URL: amqpURL, Prefix: "bench-" + hex.EncodeToString(id[:]) + ".", Service: "inbox", Prefetch: 200, Concurrency: 32}
	pool, _ := postgrestest.NewSchema(b, ledger, outbox.Migrations, inbox.Migrations)
	b.Cleanup(func() {
		platformtest.DeleteTopology(b, amqpURL, cfg.Prefix, []string{cfg.Service}, []time.Duration{time.Second, 10 * time.Second, time.Minute})
	})

	pub, err := eventbus.NewPublisher(cfg, log)
	if err != nil {
		b.Fatal(err)
	}
	defer pub.Close()
	// Events of distinct orders and customers, so handlers contend on no
	// row; each run publishes them under new event ids.
	events := make([]proto.Message, b.N)
	for i := range events {
		orderID := uuid.NewString()
		events[i] = &orderv1.OrderCreated{
			OrderId: orderID, CustomerEmail: fmt.Sprintf("b%d@example.com", i), PaymentToken: "tok", CreateTime: timestamppb.Now(),
			Items: []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}}},
			Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 1},
		}
	}
	publish := func() {
		msgs := make([]eventbus.Message, len(events))
		for i, ev := range events {
			m, err := eventbus.NewMessage(ev, "bench", ev.(*orderv1.OrderCreated).GetOrderId())
			if err != nil {
				b.Fatal(err)
			}
			msgs[i] = m
		}
		for start := 0; start < len(msgs); start += 250 {
			if err := pub.Publish(context.Background(), msgs[start:min(start+250, len(msgs))]...); err != nil {
				b.Fatal(err)
			}
		}
	}
	handler := func(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
		return handleOrderCreated(ctx, tx, ev, meta)
	}

	// consumeBus runs a subscriber whose handler goes through runner, and
	// returns how long publishing and handling b.N events took.
	consumeBus := func(runner *inbox.Runner, warmUp bool) time.Duration {
		sub, err := eventbus.NewSubscriber(cfg, log)
		if err != nil {
			b.Fatal(err)
		}
		var handled atomic.Int64
		done := make(chan struct{})
		wrapped := inbox.Wrap(runner, handler)
		if err := eventbus.Handle(sub, func(ctx context.Context, ev *orderv1.OrderCreated, meta eventbus.Meta) error {
			err := wrapped(ctx, ev, meta)
			if err == nil && handled.Add(1) == int64(b.N) {
				close(done)
			}
			return err
		}); err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		errc := make(chan error, 1)
		go func() { errc <- sub.Run(ctx) }()
		wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
		if err := sub.WaitUp(wctx); err != nil {
			b.Fatal(err)
		}
		wcancel()
		if warmUp {
			cancel()
			<-errc
			return 0
		}
		start := time.Now()
		publish()
		<-done
		d := time.Since(start)
		cancel()
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
		return d
	}

	// Declare the topology once, outside the timings.
	consumeBus(inbox.NewRunner(pool, "inbox", inbox.Metrics{}), true)
	b.ResetTimer()

	// Raw: one consumer acking each delivery.
	conn, err := amqp.Dial(amqpURL)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		b.Fatal(err)
	}
	if err := ch.Qos(200, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := ch.Consume(cfg.QueueName(), "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for range b.N {
			d := <-deliveries
			if err := d.Ack(false); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	publish()
	<-consumed
	raw := time.Since(start)
	_ = ch.Close()

	single := consumeBus(inbox.NewRunner(pool, "inbox", inbox.Metrics{}), false)
	batched := consumeBus(inbox.NewRunner(pool, "inbox", inbox.Metrics{}, inbox.WithBatching(32, 4, 10*time.Second)), false)
	b.StopTimer()

	rate := func(d time.Duration) float64 { return float64(b.N) / d.Seconds() }
	b.ReportMetric(rate(raw), "raw-msg/s")
	b.ReportMetric(rate(single), "inbox-msg/s")
	b.ReportMetric(rate(batched), "inbox-batched-msg/s")
	b.ReportMetric(rate(single)/rate(raw), "inbox/raw")
	b.ReportMetric(rate(batched)/rate(raw), "batched/raw")
}

// BenchmarkBatchRunnerAlone hands a BatchRunner one delivery at a time, so
// that each op is a whole transaction (the inbox row, the handler's two
// statements, the outgoing event and the commit) that no other delivery
// shares: its time is mostly that of the transaction's round trips.
//
//	go test -run '^$' -bench BatchRunnerAlone -benchtime 2000x ./internal/inbox/
func BenchmarkBatchRunnerAlone(b *testing.B) {
	ctx := context.Background()
	pool := newService(b)
	var seen atomic.Int64
	runner := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(nil, &seen), 16, 10*time.Second)
	handle := inbox.WrapBatch[*orderv1.OrderCreated](runner)
	ds := make([]delivery, b.N)
	for i := range ds {
		ds[i] = newDelivery(b, fmt.Sprintf("c%d@example.com", i%8), 1)
	}
	b.ResetTimer()
	for _, d := range ds {
		if err := handle(ctx, d.ev, d.meta); err != nil {
			b.Fatalf("handle: %v", err)
		}
	}
	b.StopTimer()
	if n := seen.Load(); n != int64(b.N) {
		b.Fatalf("handler saw %d deliveries, want %d", n, b.N)
	}
}
