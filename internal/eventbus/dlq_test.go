package eventbus

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	amqp "github.com/rabbitmq/amqp091-go"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// startWithDLQ runs a subscriber of cfg's queue that handles order.created
// with h, and returns a publisher and the queue's DLQ.
func startWithDLQ(t *testing.T, cfg Config, h func(context.Context, *orderv1.OrderCreated, Meta) error) (*Publisher, *DLQ) {
	t.Helper()
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := Handle(sub, h); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	return pub, q
}

func TestDLQListReplayDiscard(t *testing.T) {
	cfg := testConfig(t, "dlqadmin")
	var accept atomic.Bool
	var mu sync.Mutex
	var handled []Meta
	pub, q := startWithDLQ(t, cfg, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		if !accept.Load() {
			return Permanent(errors.New("not today"))
		}
		mu.Lock()
		handled = append(handled, meta)
		mu.Unlock()
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var ids []string
	for range 3 {
		_, m := newOrderCreated(t)
		ids = append(ids, m.ID)
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	listed := deadLetters(t, q, 3)
	again, err := q.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	idsOf := func(dls []DeadLetter) []string {
		var out []string
		for _, dl := range dls {
			out = append(out, dl.ID)
		}
		return out
	}
	sortStrings := cmpopts.SortSlices(func(a, b string) bool { return a < b })
	if diff := cmp.Diff(idsOf(listed), idsOf(again), sortStrings); diff != "" {
		t.Errorf("second List differs (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(ids, idsOf(listed), sortStrings); diff != "" {
		t.Errorf("listed ids (-want +got):\n%s", diff)
	}
	for _, dl := range listed {
		if dl.Reason != ReasonPermanent || dl.Error != "not today" || dl.RoutingKey != "order.created" || dl.DeadLetteredAt.IsZero() {
			t.Errorf("dead letter %s: reason=%q error=%q key=%q at=%v", dl.ID, dl.Reason, dl.Error, dl.RoutingKey, dl.DeadLetteredAt)
		}
	}
	if got, err := q.List(ctx, 2); err != nil || len(got) != 2 {
		t.Errorf("List(2) = %d messages, %v", len(got), err)
	}

	accept.Store(true)
	t.Run("replay one", func(t *testing.T) {
		if err := q.Replay(ctx, ids[0]); err != nil {
			t.Fatalf("Replay: %v", err)
		}
		eventually(t, 5*time.Second, "replayed message handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == 1
		})
		mu.Lock()
		m := handled[0]
		mu.Unlock()
		if m.ID != ids[0] || m.RoutingKey != "order.created" || m.Attempt != 1 {
			t.Errorf("handled %+v, want id %s, key order.created, attempt 1", m, ids[0])
		}
		if err := q.Replay(ctx, "no-such-id"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Replay(unknown) = %v, want ErrNotFound", err)
		}
	})
	t.Run("discard one", func(t *testing.T) {
		if err := q.Discard(ctx, ids[1]); err != nil {
			t.Fatalf("Discard: %v", err)
		}
		if err := q.Discard(ctx, ids[1]); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Discard = %v, want ErrNotFound", err)
		}
		left, err := q.List(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{ids[2]}, idsOf(left)); diff != "" {
			t.Errorf("left in DLQ (-want +got):\n%s", diff)
		}
	})
	t.Run("replay all", func(t *testing.T) {
		n, err := q.ReplayAll(ctx)
		if err != nil || n != 1 {
			t.Fatalf("ReplayAll = %d, %v; want 1", n, err)
		}
		eventually(t, 5*time.Second, "replayed message handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == 2 && handled[1].ID == ids[2]
		})
	})
	t.Run("discard all", func(t *testing.T) {
		accept.Store(false)
		for range 2 {
			_, m := newOrderCreated(t)
			if err := pub.Publish(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		deadLetters(t, q, 2)
		n, err := q.DiscardAll(ctx)
		if err != nil || n != 2 {
			t.Fatalf("DiscardAll = %d, %v; want 2", n, err)
		}
		if left, err := q.List(ctx, 0); err != nil || len(left) != 0 {
			t.Errorf("List after DiscardAll = %d, %v", len(left), err)
		}
	})
}

// TestDLQReplayOfABrokerDeadLetter replays a message the broker
// dead-lettered (a consumer crash loop past the delivery limit), whose
// first handling after the replay fails transiently: it goes round the
// retry queue and back to its handler, with its id, correlation and
// trace intact. (Replayed with the broker's x-death header, the retry
// queue's dead-lettering back to the service queue would be a cycle the
// broker drops the message for.)
func TestDLQReplayOfABrokerDeadLetter(t *testing.T) {
	cfg := testConfig(t, "dlqlimit")
	cfg.DeliveryLimit = 1
	conn := rawConn(t)
	ch := rawChannel(t, conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := declareTopology(ctx, conn, ch, cfg, []string{"order.created"}); err != nil {
		t.Fatal(err)
	}
	pub := startPublisher(t, cfg)
	_, m := newOrderCreated(t)
	m.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	// A consumer that takes the message and never settles it: each
	// requeue counts as a delivery, and past the limit the broker
	// dead-letters it.
	deliveries := 0
	eventually(t, 10*time.Second, "the broker to dead-letter the message", func() bool {
		d, ok, err := ch.Get(cfg.QueueName(), false)
		if err != nil {
			t.Fatalf("get: %v", err)
		}
		if ok {
			deliveries++
			if err := d.Nack(false, true); err != nil {
				t.Fatalf("nack: %v", err)
			}
			return false
		}
		q, err := ch.QueueDeclarePassive(cfg.DLQName(), true, false, false, false, nil)
		return err == nil && q.Messages == 1
	})
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if dls := deadLetters(t, q, 1); dls[0].ID != m.ID || dls[0].Reason != ReasonDeliveryLimit || dls[0].RoutingKey != "order.created" || dls[0].Attempts != deliveries {
		t.Fatalf("dead letter %+v, want %s dead-lettered for delivery_limit from order.created after the %d deliveries made", dls[0], m.ID, deliveries)
	}

	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var calls []Meta
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, meta)
		if len(calls) == 1 {
			return errors.New("the database blinked")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	if err := q.Replay(ctx, m.ID); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	eventually(t, 10*time.Second, "the replayed message handled again after its retry", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(calls) == 2
	})
	mu.Lock()
	defer mu.Unlock()
	for i, meta := range calls {
		if meta.ID != m.ID || meta.CorrelationID != m.CorrelationID || meta.TraceParent != m.TraceParent || meta.Source != m.Source || meta.Attempt != i+1 {
			t.Errorf("call %d: %+v, want id %s, correlation %s, trace parent %s, source %s, attempt %d",
				i+1, meta, m.ID, m.CorrelationID, m.TraceParent, m.Source, i+1)
		}
	}
}

// TestDLQReplayStartsAttemptsAfresh: a message that used up its attempts
// is handled, once replayed, as attempt 1 of a new round.
func TestDLQReplayStartsAttemptsAfresh(t *testing.T) {
	cfg := testConfig(t, "dlqagain")
	var accept atomic.Bool
	handled := make(chan Meta, 1)
	pub, q := startWithDLQ(t, cfg, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		if !accept.Load() {
			return errors.New("not yet")
		}
		handled <- meta
		return nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, m := newOrderCreated(t)
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatal(err)
	}
	if dl := deadLetters(t, q, 1)[0]; dl.Reason != ReasonRetriesExhausted || dl.Attempts != cfg.MaxAttempts {
		t.Fatalf("dead letter: reason %q after %d attempts, want %q after %d", dl.Reason, dl.Attempts, ReasonRetriesExhausted, cfg.MaxAttempts)
	}
	accept.Store(true)
	if err := q.Replay(ctx, m.ID); err != nil {
		t.Fatalf("Replay: %v", err)
	}
	select {
	case meta := <-handled:
		if meta.ID != m.ID || meta.Attempt != 1 {
			t.Errorf("handled %s as attempt %d, want %s as attempt 1", meta.ID, meta.Attempt, m.ID)
		}
	case <-ctx.Done():
		t.Fatal("the replayed message was not handled")
	}
}

// TestDLQReplayToAVanishedQueueFails: a replay whose service queue went
// away after the replay began is returned by the broker, not confirmed
// and dropped, and the replay fails, so the dead letter is not acked: it
// stays parked.
func TestDLQReplayToAVanishedQueueFails(t *testing.T) {
	cfg := testConfig(t, "dlqgone")
	ch := rawChannel(t, rawConn(t))
	for _, name := range []string{cfg.QueueName(), cfg.DLQName()} {
		if _, err := ch.QueueDeclare(name, true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			t.Fatal(err)
		}
	}
	letter := amqp.Publishing{MessageId: "m-1", Type: "ordermesh.order.v1.OrderCreated", Headers: amqp.Table{HeaderRoutingKey: "order.created"}, Body: []byte{}}
	if err := ch.Publish("", cfg.DLQName(), false, false, letter); err != nil {
		t.Fatal(err)
	}
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	parked := func() bool {
		letters, err := q.List(ctx, 0)
		return err == nil && len(letters) == 1 && letters[0].ID == "m-1"
	}
	eventually(t, 10*time.Second, "the dead letter parked", parked)
	// The service queue goes once the replay has checked it and taken the
	// dead letter, before the letter is published to it.
	moved, err := q.move(ctx, func(amqp.Delivery) bool {
		if _, err := ch.QueueDelete(cfg.QueueName(), false, false, false); err != nil {
			t.Errorf("delete the service queue: %v", err)
		}
		return true
	}, true, false)
	if moved != 0 || !errors.Is(err, ErrUnroutable) {
		t.Fatalf("replay to a deleted queue: moved %d, %v; want none moved and ErrUnroutable", moved, err)
	}
	eventually(t, 10*time.Second, "the dead letter still parked", parked)
}
