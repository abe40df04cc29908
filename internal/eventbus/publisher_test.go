package eventbus

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

func TestPublishSetsPropertiesAndReportsUnroutable(t *testing.T) {
	raw := "raw-" + randomHex(4)
	cfg := testConfig(t, "publisher")
	cfg.Metrics = &countingMetrics{}
	rawQueue := cfg.Prefix + raw
	conn := rawConn(t)
	ch := rawChannel(t, conn)
	t.Cleanup(func() {
		if _, err := ch.QueueDelete(rawQueue, false, false, false); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	pub := startPublisher(t, cfg)
	if _, err := ch.QueueDeclare(rawQueue, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(rawQueue, "order.created", cfg.ExchangeName(), false, nil); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	t.Run("properties", func(t *testing.T) {
		_, m := newOrderCreated(t)
		m.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		m.TraceState = "a=b"
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		d, ok, err := ch.Get(rawQueue, true)
		if err != nil || !ok {
			t.Fatalf("get: ok=%v err=%v", ok, err)
		}
		type props struct {
			MessageID, Type, AppID, ContentType, CorrelationID, RoutingKey string
			DeliveryMode                                                   uint8
			Timestamp                                                      int64
			Headers                                                        amqp.Table
			Body                                                           []byte
		}
		want := props{
			MessageID: m.ID, Type: m.Type, AppID: "order", ContentType: "application/protobuf",
			CorrelationID: m.CorrelationID, RoutingKey: "order.created", DeliveryMode: 2,
			Timestamp: m.Time.Unix(),
			Headers: amqp.Table{"traceparent": m.TraceParent, "tracestate": "a=b", "ce-specversion": "1.0",
				"ce-time": m.Time.UTC().Format(time.RFC3339Nano)},
			Body: m.Body,
		}
		got := props{
			MessageID: d.MessageId, Type: d.Type, AppID: d.AppId, ContentType: d.ContentType,
			CorrelationID: d.CorrelationId, RoutingKey: d.RoutingKey, DeliveryMode: d.DeliveryMode,
			Timestamp: d.Timestamp.Unix(), Headers: d.Headers, Body: d.Body,
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("delivery (-want +got):\n%s", diff)
		}
	})

	t.Run("PublishEvents", func(t *testing.T) {
		ev, _ := newOrderCreated(t)
		if err := pub.PublishEvents(ctx, ev.GetOrderId(), ev); err != nil {
			t.Fatalf("PublishEvents: %v", err)
		}
		d, ok, err := ch.Get(rawQueue, true)
		if err != nil || !ok {
			t.Fatalf("get: ok=%v err=%v", ok, err)
		}
		if d.AppId != cfg.Service || d.CorrelationId != ev.GetOrderId() || d.MessageId == "" ||
			d.Type != "ordermesh.order.v1.OrderCreated" || d.RoutingKey != "order.created" {
			t.Errorf("delivery app_id=%q correlation_id=%q message_id=%q type=%q key=%q",
				d.AppId, d.CorrelationId, d.MessageId, d.Type, d.RoutingKey)
		}
	})

	t.Run("unroutable", func(t *testing.T) {
		_, routable := newOrderCreated(t)
		_, unroutable := newOrderCreated(t)
		unroutable.RoutingKey = "order.nobody-listens"
		err := pub.Publish(ctx, routable, unroutable)
		if !errors.Is(err, ErrUnroutable) {
			t.Fatalf("Publish = %v, want ErrUnroutable", err)
		}
		var pe *PublishError
		if !errors.As(err, &pe) {
			t.Fatalf("Publish = %T %v, want a *PublishError", err, err)
		}
		if !slices.Equal(pe.Confirmed, []bool{true, false}) || !slices.Equal(pe.Refused, []bool{false, true}) {
			t.Errorf("PublishError confirmed %v, refused %v; want the routable one confirmed, the other refused", pe.Confirmed, pe.Refused)
		}
		if n := cfg.Metrics.(*countingMetrics).returned.Load(); n != 1 {
			t.Errorf("returned metric = %d, want 1", n)
		}
		// The link survives a return.
		if err := pub.Publish(ctx, routable); err != nil {
			t.Errorf("Publish after return: %v", err)
		}
	})

	t.Run("concurrent", func(t *testing.T) {
		if _, err := ch.QueuePurge(rawQueue, false); err != nil {
			t.Fatal(err)
		}
		// Built here: newOrderCreated may end the test, which only the
		// test's goroutine may do.
		batches := make([][]Message, 20)
		for i := range batches {
			for range 25 {
				_, m := newOrderCreated(t)
				batches[i] = append(batches[i], m)
			}
		}
		var wg sync.WaitGroup
		errs := make(chan error, len(batches))
		for _, msgs := range batches {
			wg.Go(func() { errs <- pub.Publish(ctx, msgs...) })
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("Publish: %v", err)
			}
		}
		q, err := ch.QueueDeclarePassive(rawQueue, false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		if q.Messages != 500 {
			t.Errorf("queue holds %d, want 500", q.Messages)
		}
	})

	t.Run("one write per batch", func(t *testing.T) {
		if _, err := ch.QueuePurge(rawQueue, false); err != nil {
			t.Fatal(err)
		}
		pub.mu.Lock()
		bc := pub.cur.conn
		pub.mu.Unlock()
		if bc == nil {
			t.Fatal("the publisher's channel writes each publish on its own")
		}
		var msgs []Message
		for range 30 {
			_, m := newOrderCreated(t)
			msgs = append(msgs, m)
		}
		before := bc.socketWrites()
		if err := pub.Publish(ctx, msgs...); err != nil {
			t.Fatalf("Publish: %v", err)
		}
		// One write carries the batch; a heartbeat may have gone alone.
		if n := bc.socketWrites() - before; n < 1 || n > 2 {
			t.Errorf("30 messages took %d writes to the socket, want 1 (2 with a heartbeat)", n)
		}
		for i, m := range msgs {
			d, ok, err := ch.Get(rawQueue, true)
			if err != nil || !ok {
				t.Fatalf("get %d: ok=%v err=%v", i, ok, err)
			}
			if d.MessageId != m.ID {
				t.Fatalf("delivery %d is %s, want %s: the batch arrived out of order", i, d.MessageId, m.ID)
			}
		}
	})

	t.Run("invalid message", func(t *testing.T) {
		if err := pub.Publish(ctx, Message{Meta: Meta{Type: "x", RoutingKey: "order.created"}}); !errors.Is(err, ErrInvalidMessage) {
			t.Errorf("Publish without id = %v, want ErrInvalidMessage", err)
		}
	})
}

func TestPublishWhileDownFailsPromptly(t *testing.T) {
	pub, err := NewPublisher(Config{
		URL:         "amqp://guest:guest@127.0.0.1:1/",
		Service:     "nowhere",
		DialTimeout: 200 * time.Millisecond,
	}, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	_, m := newOrderCreated(t)
	// Promptly means without waiting for the link: a Publish that waited
	// would still be waiting when this long deadline passed, and return
	// its error. It must fail with ErrLinkDown well before.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = pub.Publish(ctx, m)
	if !errors.Is(err, ErrLinkDown) {
		t.Errorf("Publish = %v, want ErrLinkDown", err)
	}
	if ctx.Err() != nil {
		t.Errorf("Publish returned %v only once its context had ended (%v): it waited for the link", err, ctx.Err())
	}
	eventually(t, 30*time.Second, "a down reason", func() bool {
		st := pub.State()
		return !st.Up && st.Reason != "connecting"
	})
	if err := pub.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if st := pub.State(); st.Up || st.Reason != "closed" {
		t.Errorf("state after Close = %+v", st)
	}
}

// TestPublishReportsANackPerMessage: a message the broker refuses (here,
// its only queue is full and rejects publishes) fails Publish with
// ErrNacked, and the PublishError marks it refused while the message
// beside it, routed elsewhere, is confirmed.
func TestPublishReportsANackPerMessage(t *testing.T) {
	cfg := testConfig(t, "nack")
	pub := startPublisher(t, cfg)
	bindQueues(t, cfg, testQueue{"full", "order.rejected", fullQueue}, testQueue{"open", "order.created", nil})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, ok := newOrderCreated(t)
	rejected := sampleEvents()[2].(*orderv1.OrderRejected)
	refused, err := NewMessage(rejected, "order", rejected.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	err = pub.Publish(ctx, refused, ok)
	var pe *PublishError
	if !errors.Is(err, ErrNacked) || !errors.As(err, &pe) {
		t.Fatalf("Publish to a full queue = %v, want a PublishError with ErrNacked", err)
	}
	if !slices.Equal(pe.Confirmed, []bool{false, true}) || !slices.Equal(pe.Refused, []bool{true, false}) {
		t.Errorf("PublishError confirmed %v, refused %v; want the full queue's message refused, the other confirmed", pe.Confirmed, pe.Refused)
	}
}

// TestPublishKeepsANackAnEarlierAckCovers: a batch whose middle message
// the broker refuses at once (a full queue) while the others wait for a
// quorum queue's commit gets its nack before their acks, and then one
// ack with multiple set for the last: that ack covers only the messages
// still unconfirmed, so the refused one stays refused (amqp091-go's
// NotifyPublish reports every tag up to it as acked).
func TestPublishKeepsANackAnEarlierAckCovers(t *testing.T) {
	cfg := testConfig(t, "nackack")
	pub := startPublisher(t, cfg)
	bindQueues(t, cfg, testQueue{"full", "order.rejected", fullQueue}, testQueue{"quorum", "order.created", quorumQueue})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rejected := sampleEvents()[2].(*orderv1.OrderRejected)
	for round := range 20 {
		_, first := newOrderCreated(t)
		_, last := newOrderCreated(t)
		refused, err := NewMessage(rejected, "order", rejected.GetOrderId())
		if err != nil {
			t.Fatal(err)
		}
		err = pub.Publish(ctx, first, refused, last)
		var pe *PublishError
		if !errors.As(err, &pe) {
			t.Fatalf("round %d: Publish = %v, want a PublishError for the refused message", round, err)
		}
		if !slices.Equal(pe.Confirmed, []bool{true, false, true}) || !slices.Equal(pe.Refused, []bool{false, true, false}) {
			t.Fatalf("round %d: confirmed %v, refused %v; want the middle message refused, the others confirmed", round, pe.Confirmed, pe.Refused)
		}
	}
}

// TestPublishMatchesAReturnToItsPlace: of two messages with one id in
// flight at once (an event published twice, say), one routed to a quorum
// queue (whose confirm waits for its commit) and one that no queue takes,
// the return goes to the one no queue took, not to the first confirm of
// that id.
func TestPublishMatchesAReturnToItsPlace(t *testing.T) {
	cfg := testConfig(t, "returns")
	pub := startPublisher(t, cfg)
	bindQueues(t, cfg, testQueue{"quorum", "order.created", quorumQueue})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rejected := sampleEvents()[2].(*orderv1.OrderRejected)
	for round := range 10 {
		_, routed := newOrderCreated(t)
		unroutable, err := NewMessage(rejected, "order", rejected.GetOrderId()) // no queue takes order.rejected
		if err != nil {
			t.Fatal(err)
		}
		unroutable.ID = routed.ID
		err = pub.Publish(ctx, routed, unroutable)
		var pe *PublishError
		if !errors.As(err, &pe) || !errors.Is(err, ErrUnroutable) {
			t.Fatalf("round %d: Publish = %v, want a PublishError for the unroutable message", round, err)
		}
		if !slices.Equal(pe.Confirmed, []bool{true, false}) || !slices.Equal(pe.Refused, []bool{false, true}) {
			t.Fatalf("round %d: confirmed %v, refused %v; want the routed message confirmed, the other refused", round, pe.Confirmed, pe.Refused)
		}
	}
}

// testQueue is a queue a test binds to cfg's exchange: its name after
// cfg's prefix, the routing key it takes and its arguments.
type testQueue struct {
	name, key string
	args      amqp.Table
}

// Arguments of testQueue: a queue that refuses every publish (full and
// rejecting), and a quorum queue (whose confirms wait for its commit).
var (
	fullQueue   = amqp.Table{"x-max-length": int32(0), "x-overflow": "reject-publish"}
	quorumQueue = amqp.Table{"x-queue-type": "quorum"}
)

// bindQueues declares qs, each bound to cfg's exchange by its key (the
// publisher must have declared the exchange), and deletes them when the
// test ends.
func bindQueues(t *testing.T, cfg Config, qs ...testQueue) {
	t.Helper()
	ch := rawChannel(t, rawConn(t))
	for _, q := range qs {
		name := cfg.Prefix + q.name
		t.Cleanup(func() {
			if _, err := ch.QueueDelete(name, false, false, false); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		})
		durable := q.args["x-queue-type"] == "quorum" // a quorum queue must be
		if _, err := ch.QueueDeclare(name, durable, false, false, false, q.args); err != nil {
			t.Fatal(err)
		}
		if err := ch.QueueBind(name, q.key, cfg.ExchangeName(), false, nil); err != nil {
			t.Fatal(err)
		}
	}
}
