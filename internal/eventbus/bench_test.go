package eventbus

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// The benchmarks measure the bus beside raw amqp091-go in the same run,
// against the same quorum queue, and report both rates and their ratio.
// Each op is one message. Run with a fixed count, e.g.
//
//	go test -run '^$' -bench . -benchtime 20000x ./internal/eventbus/

const (
	benchWindow      = 1000 // publishes in flight
	benchPublishers  = 4
	benchPrefetch    = 200
	benchConcurrency = 8
)

func benchMessages(b *testing.B, n int) ([]Message, []amqp.Publishing) {
	b.Helper()
	msgs := make([]Message, n)
	pubs := make([]amqp.Publishing, n)
	for i := range n {
		_, m := newOrderCreated(b)
		p, err := toPublishing(m, "order")
		if err != nil {
			b.Fatal(err)
		}
		msgs[i], pubs[i] = m, p
	}
	return msgs, pubs
}

// rawPublish publishes pubs on a confirm-mode channel keeping up to
// benchWindow confirms in flight, and waits for all of them.
func rawPublish(b *testing.B, ch *amqp.Channel, exchange, key string, pubs []amqp.Publishing) {
	b.Helper()
	inflight := make([]*amqp.DeferredConfirmation, 0, benchWindow)
	for _, p := range pubs {
		if len(inflight) == benchWindow {
			if !inflight[0].Wait() {
				b.Fatal("raw publish nacked")
			}
			inflight = inflight[1:]
		}
		dc, err := ch.PublishWithDeferredConfirm(exchange, key, true, false, p)
		if err != nil {
			b.Fatal(err)
		}
		inflight = append(inflight, dc)
	}
	for _, dc := range inflight {
		if !dc.Wait() {
			b.Fatal("raw publish nacked")
		}
	}
}

// busPublish publishes msgs from benchPublishers goroutines in batches
// that together keep about benchWindow messages in flight.
func busPublish(b *testing.B, pub *Publisher, msgs []Message) {
	b.Helper()
	batch := max(benchWindow/benchPublishers, 1)
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchPublishers)
	for range benchPublishers {
		wg.Go(func() {
			for {
				start := int(next.Add(int64(batch))) - batch
				if start >= len(msgs) {
					return
				}
				if err := pub.Publish(context.Background(), msgs[start:min(start+batch, len(msgs))]...); err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
}

func benchSetup(b *testing.B) (Config, *amqp.Connection, *amqp.Channel) {
	b.Helper()
	cfg := testConfig(b, "bench")
	cfg.Prefetch = benchPrefetch
	cfg.Concurrency = benchConcurrency
	conn := rawConn(b)
	ch := rawChannel(b, conn)
	if err := declareTopology(context.Background(), conn, ch, cfg, []string{"order.created"}); err != nil {
		b.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	return cfg, conn, ch
}

func reportRatio(b *testing.B, n int, raw, bus time.Duration) {
	rawRate := float64(n) / raw.Seconds()
	busRate := float64(n) / bus.Seconds()
	b.ReportMetric(rawRate, "raw-msg/s")
	b.ReportMetric(busRate, "bus-msg/s")
	b.ReportMetric(busRate/rawRate, "bus/raw")
}

// BenchmarkPublishConfirmed measures publishing with broker confirms.
func BenchmarkPublishConfirmed(b *testing.B) {
	cfg, _, ch := benchSetup(b)
	pub := startPublisher(b, cfg)
	msgs, pubs := benchMessages(b, b.N)
	b.ResetTimer()

	start := time.Now()
	rawPublish(b, ch, cfg.ExchangeName(), "order.created", pubs)
	raw := time.Since(start)

	b.StopTimer()
	if _, err := ch.QueuePurge(cfg.QueueName(), false); err != nil {
		b.Fatal(err)
	}
	b.StartTimer()

	start = time.Now()
	busPublish(b, pub, msgs)
	bus := time.Since(start)

	b.StopTimer()
	reportRatio(b, b.N, raw, bus)
	if _, err := ch.QueuePurge(cfg.QueueName(), false); err != nil {
		b.Fatal(err)
	}
}

// BenchmarkPublishConsume measures publishing with confirms while a
// consumer (prefetch 200, manual acks) drains the queue, until the last
// message is acked. The bus consumer also decodes and validates.
func BenchmarkPublishConsume(b *testing.B) {
	cfg, conn, ch := benchSetup(b)
	pub := startPublisher(b, cfg)
	msgs, pubs := benchMessages(b, b.N)
	b.ResetTimer()

	// Raw: one consumer goroutine acking each delivery.
	cch := rawChannel(b, conn)
	if err := cch.Qos(benchPrefetch, 0, false); err != nil {
		b.Fatal(err)
	}
	deliveries, err := cch.Consume(cfg.QueueName(), "", false, false, false, false, nil)
	if err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for i := 0; i < b.N; i++ {
			d := <-deliveries
			if err := d.Ack(false); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	rawPublish(b, ch, cfg.ExchangeName(), "order.created", pubs)
	<-consumed
	raw := time.Since(start)
	b.StopTimer()
	if err := cch.Close(); err != nil {
		b.Fatal(err)
	}

	// Bus: a Subscriber with a no-op handler.
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	done := make(chan struct{})
	if err := Handle(sub, func(context.Context, *orderv1.OrderCreated, Meta) error {
		if handled.Add(1) == int64(b.N) {
			close(done)
		}
		return nil
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
	b.StartTimer()
	start = time.Now()
	busPublish(b, pub, msgs)
	<-done
	bus := time.Since(start)
	b.StopTimer()
	cancel()
	if err := <-errc; err != nil {
		b.Fatal(err)
	}
	reportRatio(b, b.N, raw, bus)
}
