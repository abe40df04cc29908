package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// Bus shapes of the bus benchmark, the same on both sides.
const (
	busWindow     = 1000 // publishes awaiting confirms
	busPublishers = 4    // eventbus: goroutines publishing batches
	busPrefetch   = 200
	// busAckGroup is how many deliveries the raw consumer settles with one
	// ack: the eventbus Subscriber's most (its prefetch over 4).
	busAckGroup = busPrefetch / 4
	busService  = "busbench"
	busRetry    = "1s"
)

// BusBench measures publish+consume with confirms and acks through
// internal/eventbus (Publisher and Subscriber) and through raw amqp091-go
// against the same quorum queue.
type BusBench struct {
	cfg  eventbus.Config
	msgs []eventbus.Message
	pubs []amqp.Publishing
	// conn publishes and cconn consumes for the raw ceiling: connections
	// of their own, as the eventbus Publisher and Subscriber have, so that
	// the broker's flow control of the publishing connection does not hold
	// up the consumer's acks.
	conn, cconn *amqp.Connection
	log         *slog.Logger
}

// NewBusBench declares the topology under prefix (a Subscriber's: exchange,
// quorum queue bound to order.created, retry and dead-letter queues) and
// prepares n OrderCreated messages. Close deletes the topology.
func NewBusBench(ctx context.Context, amqpURL, prefix string, n int) (*BusBench, error) {
	b := &BusBench{
		cfg: eventbus.Config{URL: amqpURL, Prefix: prefix, Service: busService, Prefetch: busPrefetch,
			Concurrency: 8, RetryDelays: []time.Duration{time.Second}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	for range n {
		m, err := orderCreated()
		if err != nil {
			return nil, err
		}
		b.msgs = append(b.msgs, m)
		b.pubs = append(b.pubs, rawPublishing(m))
	}
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": prefix + "raw"}})
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	b.conn = conn
	if b.cconn, err = amqp.DialConfig(amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": prefix + "raw-consumer"}}); err != nil {
		_ = conn.Close()
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	// A subscriber run declares the topology; waiting for it to be up is
	// enough.
	if _, err := b.Bus(ctx, 0); err != nil {
		b.Close()
		return nil, err
	}
	return b, nil
}

func orderCreated() (eventbus.Message, error) {
	id := uuid.NewString()
	ev := &orderv1.OrderCreated{
		OrderId: id, CustomerEmail: "bench@example.com", PaymentToken: "tok_visa",
		Items: []*orderv1.LineItem{{ProductId: "BENCH-1", Quantity: 1,
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 990000000}}},
		Total:      &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 990000000},
		CreateTime: timestamppb.Now(),
	}
	m, err := eventbus.NewMessage(ev, "order", id)
	if err != nil {
		return eventbus.Message{}, fmt.Errorf("new message: %w", err)
	}
	return m, nil
}

// Close deletes the topology and closes the raw connection.
func (b *BusBench) Close() error {
	err := deleteTopology(b.cfg.URL, b.cfg.Prefix, []string{busService}, busRetry)
	_ = b.conn.Close()
	_ = b.cconn.Close()
	return err
}

// Raw publishes every message on one confirm-mode channel with up to
// busWindow confirms in flight while one consumer (prefetch 200), on a
// connection of its own, acks the
// deliveries in groups, as the eventbus Subscriber does (one ack with
// multiple set per busAckGroup deliveries, and one for the rest), and
// returns messages per second until the last delivery was received: as
// for Bus, whose clock stops when the last handler returns, the final ack
// is not timed.
func (b *BusBench) Raw(ctx context.Context) (float64, error) {
	pch, err := b.conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	defer pch.Close()
	if err := pch.Confirm(false); err != nil {
		return 0, fmt.Errorf("confirm mode: %w", err)
	}
	cch, err := b.cconn.Channel()
	if err != nil {
		return 0, fmt.Errorf("open channel: %w", err)
	}
	defer cch.Close()
	if err := cch.Qos(busPrefetch, 0, false); err != nil {
		return 0, fmt.Errorf("qos: %w", err)
	}
	deliveries, err := cch.Consume(b.cfg.QueueName(), "", false, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("consume: %w", err)
	}
	n := len(b.pubs)
	start := time.Now()
	var last time.Time
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		for i := 1; i <= n; i++ {
			select {
			case <-gctx.Done():
				return gctx.Err()
			case d, ok := <-deliveries:
				if !ok {
					return errors.New("raw consumer: channel closed")
				}
				if i == n {
					last = time.Now()
				}
				if i%busAckGroup == 0 || i == n {
					if err := d.Ack(true); err != nil {
						return fmt.Errorf("ack: %w", err)
					}
				}
			}
		}
		return nil
	})
	g.Go(func() error {
		inflight := make([]*amqp.DeferredConfirmation, 0, busWindow)
		wait := func(dc *amqp.DeferredConfirmation) error {
			ok, err := dc.WaitContext(gctx)
			if err != nil {
				return err
			}
			if !ok {
				return errors.New("raw publish nacked")
			}
			return nil
		}
		for _, p := range b.pubs {
			if len(inflight) == busWindow {
				if err := wait(inflight[0]); err != nil {
					return err
				}
				inflight = inflight[1:]
			}
			dc, err := pch.PublishWithDeferredConfirmWithContext(gctx, b.cfg.ExchangeName(), "order.created", true, false, p)
			if err != nil {
				return fmt.Errorf("raw publish: %w", err)
			}
			inflight = append(inflight, dc)
		}
		for _, dc := range inflight {
			if err := wait(dc); err != nil {
				return err
			}
		}
		return nil
	})
	if err := g.Wait(); err != nil {
		return 0, err
	}
	return float64(n) / last.Sub(start).Seconds(), nil
}

// Bus publishes the first n messages (all when n < 0) with an
// eventbus.Publisher, from busPublishers goroutines in batches that
// together keep busWindow messages in flight, while an eventbus.Subscriber
// (prefetch 200, 8 handlers, decode and validate, a no-op handler) acks
// them; it returns messages per second until the last one was handled.
// Connecting is not timed.
func (b *BusBench) Bus(ctx context.Context, n int) (float64, error) {
	msgs := b.msgs
	if n >= 0 {
		msgs = msgs[:n]
	}
	pub, err := eventbus.NewPublisher(b.cfg, b.log)
	if err != nil {
		return 0, fmt.Errorf("new publisher: %w", err)
	}
	defer pub.Close()
	sub, err := eventbus.NewSubscriber(b.cfg, b.log)
	if err != nil {
		return 0, fmt.Errorf("new subscriber: %w", err)
	}
	var handled atomic.Int64
	all := make(chan struct{})
	var once sync.Once
	if len(msgs) == 0 {
		once.Do(func() { close(all) })
	}
	if err := eventbus.Handle(sub, func(context.Context, *orderv1.OrderCreated, eventbus.Meta) error {
		if handled.Add(1) == int64(len(msgs)) {
			once.Do(func() { close(all) })
		}
		return nil
	}); err != nil {
		return 0, err
	}
	subCtx, stopSub := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(subCtx)
	g.Go(func() error { return sub.Run(gctx) })
	defer func() {
		stopSub()
		_ = g.Wait()
	}()
	upCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := sub.WaitUp(upCtx); err != nil {
		return 0, fmt.Errorf("subscriber up: %w", err)
	}
	if err := pub.WaitUp(upCtx); err != nil {
		return 0, fmt.Errorf("publisher up: %w", err)
	}

	start := time.Now()
	batch := busWindow / busPublishers
	var next atomic.Int64
	pg, pctx := errgroup.WithContext(ctx)
	for range busPublishers {
		pg.Go(func() error {
			for {
				from := int(next.Add(int64(batch))) - batch
				if from >= len(msgs) {
					return nil
				}
				if err := pub.Publish(pctx, msgs[from:min(from+batch, len(msgs))]...); err != nil {
					return fmt.Errorf("bus publish: %w", err)
				}
			}
		})
	}
	if err := pg.Wait(); err != nil {
		return 0, err
	}
	select {
	case <-all:
	case <-ctx.Done():
		return 0, ctx.Err()
	case <-time.After(2 * time.Minute):
		return 0, fmt.Errorf("bus consume: %d of %d handled after 2 minutes", handled.Load(), len(msgs))
	}
	if len(msgs) == 0 {
		return 0, nil
	}
	return float64(len(msgs)) / time.Since(start).Seconds(), nil
}
