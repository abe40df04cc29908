package eventbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
)

type received struct {
	ev   proto.Message
	meta Meta
}

func collect[PT proto.Message](ch chan<- received) func(context.Context, PT, Meta) error {
	return func(_ context.Context, ev PT, meta Meta) error {
		ch <- received{ev: ev, meta: meta}
		return nil
	}
}

func TestRoundTripEveryEventType(t *testing.T) {
	cfg := testConfig(t, "roundtrip")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan received, 100)
	for _, err := range []error{
		Handle(sub, collect[*orderv1.OrderCreated](got)),
		Handle(sub, collect[*orderv1.OrderConfirmed](got)),
		Handle(sub, collect[*orderv1.OrderRejected](got)),
		Handle(sub, collect[*orderv1.OrderCancelled](got)),
		Handle(sub, collect[*inventoryv1.StockReserved](got)),
		Handle(sub, collect[*inventoryv1.StockReservationFailed](got)),
		Handle(sub, collect[*inventoryv1.StockReleased](got)),
		Handle(sub, collect[*paymentv1.PaymentSucceeded](got)),
		Handle(sub, collect[*paymentv1.PaymentFailed](got)),
		Handle(sub, collect[*paymentv1.PaymentRefunded](got)),
		Handle(sub, collect[*notificationv1.NotificationSent](got)),
	} {
		if err != nil {
			t.Fatalf("Handle: %v", err)
		}
	}
	if err := Handle(sub, collect[*orderv1.OrderCreated](got)); err == nil {
		t.Error("second handler for OrderCreated: want error")
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)

	events := sampleEvents()
	want := make(map[string]received)
	var msgs []Message
	for i, ev := range events {
		m, err := NewMessage(ev, "order", "corr-"+string(ev.ProtoReflect().Descriptor().Name()))
		if err != nil {
			t.Fatal(err)
		}
		m.TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		if i%2 == 0 {
			m.TraceState = "vendor=value"
		}
		msgs = append(msgs, m)
		meta := m.Meta // Time to the nanosecond: the ce-time header carries it.
		meta.Attempt = 1
		want[m.ID] = received{ev: ev, meta: meta}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, msgs...); err != nil {
		t.Fatalf("Publish: %v", err)
	}

	for range events {
		var r received
		select {
		case r = <-got:
		case <-ctx.Done():
			t.Fatalf("received %d of %d events", len(events)-len(want), len(events))
		}
		w, ok := want[r.meta.ID]
		if !ok {
			t.Fatalf("unexpected or duplicate event %s", r.meta.ID)
		}
		delete(want, r.meta.ID)
		t.Run(w.meta.Type, func(t *testing.T) {
			if diff := cmp.Diff(w.ev, r.ev, protocmp.Transform()); diff != "" {
				t.Errorf("event (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(w.meta, r.meta, cmpopts.EquateApproxTime(0)); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
		})
	}
}

func TestPoisonMessagesGoStraightToDLQ(t *testing.T) {
	cfg := testConfig(t, "poison")
	var metrics countingMetrics
	cfg.Metrics = &metrics
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int32
	var handledID atomic.Value
	if err := Handle(sub, func(_ context.Context, ev *orderv1.OrderCreated, meta Meta) error {
		handled.Add(1)
		handledID.Store(meta.ID)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)

	conn := rawConn(t)
	ch := rawChannel(t, conn)
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ev, valid := newOrderCreated(t)
	body, err := proto.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	invalidBody, err := proto.Marshal(&orderv1.OrderCreated{OrderId: "not-a-uuid"})
	if err != nil {
		t.Fatal(err)
	}
	typ := string(ev.ProtoReflect().Descriptor().FullName())
	cases := []struct {
		name, id, typ, reason string
		body                  []byte
		// key is the routing key header the message carries, if any.
		key string
	}{
		{name: "garbage body", id: "garbage", typ: typ, body: []byte{0xff, 0xff, 0xff}, reason: ReasonUndecodable},
		{name: "unknown type", id: "unknown", typ: "ordermesh.order.v1.OrderTeleported", body: body, reason: ReasonUnknownType},
		{name: "missing message_id", id: "", typ: typ, body: body, reason: ReasonMissingID},
		{name: "invalid payload", id: "invalid", typ: typ, body: invalidBody, reason: ReasonInvalid},
		{name: "invalid payload, routing key made up", id: "made-up", typ: typ, body: invalidBody, reason: ReasonInvalid, key: "made.up.key"},
	}
	for _, c := range cases {
		var h amqp.Table
		if c.key != "" {
			h = amqp.Table{HeaderRoutingKey: c.key}
		}
		publishRaw(t, ch, cfg, "order.created", amqp.Publishing{
			MessageId: c.id, Type: c.typ, ContentType: ContentType, Body: c.body, Headers: h,
		})
	}
	pub, err := toPublishing(valid, "order")
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, ch, cfg, valid.RoutingKey, pub)

	eventually(t, 10*time.Second, "valid message handled", func() bool { return handled.Load() == 1 })
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, q, len(cases))
	byID := make(map[string]DeadLetter)
	for _, dl := range dls {
		byID[dl.ID] = dl
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dl, ok := byID[c.id]
			if !ok {
				t.Fatalf("not in DLQ; DLQ ids: %v", keys(byID))
			}
			key := c.key
			if key == "" {
				key = "order.created"
			}
			if dl.Reason != c.reason || dl.Error == "" || dl.Attempts != 1 || dl.RoutingKey != key {
				t.Errorf("dead letter reason=%q error=%q attempts=%d routing key=%q, want reason %q, an error, 1 attempt, %s",
					dl.Reason, dl.Error, dl.Attempts, dl.RoutingKey, c.reason, key)
			}
		})
	}
	if got := handledID.Load(); got != valid.ID {
		t.Errorf("handled %v, want %s", got, valid.ID)
	}
	if n := metrics.retried.Load(); n != 0 {
		t.Errorf("retried %d times, want 0", n)
	}
	if n := metrics.deadLettered.Load(); n != int64(len(cases)) {
		t.Errorf("dead-lettered %d, want %d", n, len(cases))
	}
	// Metrics are labelled by the handlers' types and keys, not by what a
	// message says: a sender cannot add series. The messages of the
	// handler's type (the valid one, and those with a bad body or a made-up
	// routing key) count under its labels; only the unknown type counts
	// under OtherLabel.
	want := map[Labels]bool{{RoutingKey: "order.created", Type: typ}: true, {RoutingKey: OtherLabel, Type: OtherLabel}: true}
	got := make(map[Labels]bool)
	metrics.labels.Range(func(k, _ any) bool {
		got[k.(Labels)] = true
		return true
	})
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("metric label set differs from the handler's labels plus OtherLabel (-want +got):\n%s", diff)
	}
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

// countingMetrics counts some metrics for assertions.
type countingMetrics struct {
	NopMetrics
	retried, outageRetried, deadLettered, acked, returned atomic.Int64
	// labels are those consumed and dead-lettered messages were counted
	// under.
	labels sync.Map
}

func (m *countingMetrics) Retried(Labels, int)  { m.retried.Add(1) }
func (m *countingMetrics) OutageRetried(Labels) { m.outageRetried.Add(1) }
func (m *countingMetrics) Consumed(l Labels)    { m.labels.Store(l, true) }
func (m *countingMetrics) DeadLettered(l Labels, _ string) {
	m.labels.Store(l, true)
	m.deadLettered.Add(1)
}
func (m *countingMetrics) Acked(Labels, time.Duration) { m.acked.Add(1) }
func (m *countingMetrics) Returned(Labels)             { m.returned.Add(1) }

func TestHandlerErrorsRetryThenDeadLetter(t *testing.T) {
	cfg := testConfig(t, "retry")
	metrics := &countingMetrics{}
	cfg.Metrics = metrics
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		attempt    int
		routingKey string
	}
	var mu sync.Mutex
	calls := make(map[string][]call) // by behaviour
	succeeded := make(map[string]int)
	if err := Handle(sub, func(_ context.Context, ev *orderv1.OrderRejected, meta Meta) error {
		mu.Lock()
		calls[ev.GetReason()] = append(calls[ev.GetReason()], call{meta.Attempt, meta.RoutingKey})
		defer mu.Unlock()
		var err error
		switch ev.GetReason() {
		case "fail twice":
			if meta.Attempt <= 2 {
				err = errorf("transient failure %d", meta.Attempt)
			}
		case "always fail":
			err = errorf("database unavailable: %w", errBoom)
		case "permanent":
			err = Permanent(errorf("order unknown: %w", errBoom))
		case "panic once":
			if meta.Attempt == 1 {
				panic("handler bug")
			}
		case "outage, then fine":
			// Five outages, more than the attempts allowed, count none.
			if len(calls[ev.GetReason()]) <= 5 {
				err = Unavailable(errorf("database unreachable: %w", errBoom))
			}
		case "fail, outage, fail":
			// A failure, then outages at the attempt it leads to, which
			// stays the attempt until a failure counts it.
			if n := len(calls[ev.GetReason()]); n != 1 && n <= 4 {
				err = Unavailable(errorf("database unreachable: %w", errBoom))
			} else {
				err = errorf("transient failure: %w", errBoom)
			}
		}
		if err == nil {
			succeeded[ev.GetReason()]++
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)

	ids := make(map[string]string)
	for _, behaviour := range []string{"fail twice", "always fail", "permanent", "panic once", "outage, then fine", "fail, outage, fail"} {
		ev := sampleEvents()[2].(*orderv1.OrderRejected)
		ev.Reason = behaviour
		m, err := NewMessage(ev, "inventory", ev.GetOrderId())
		if err != nil {
			t.Fatal(err)
		}
		ids[behaviour] = m.ID
		if err := pub.Publish(context.Background(), m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}

	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, q, 3)
	eventually(t, 10*time.Second, "retried messages to succeed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return succeeded["fail twice"] == 1 && succeeded["panic once"] == 1 && succeeded["outage, then fine"] == 1
	})
	time.Sleep(300 * time.Millisecond) // longer than the ladder: no further calls
	mu.Lock()
	defer mu.Unlock()

	key := "order.rejected"
	wantCalls := map[string][]call{
		"fail twice":         {{1, key}, {2, key}, {3, key}},
		"always fail":        {{1, key}, {2, key}, {3, key}},
		"permanent":          {{1, key}},
		"panic once":         {{1, key}, {2, key}},
		"outage, then fine":  {{1, key}, {1, key}, {1, key}, {1, key}, {1, key}, {1, key}},
		"fail, outage, fail": {{1, key}, {2, key}, {2, key}, {2, key}, {2, key}, {3, key}},
	}
	if diff := cmp.Diff(wantCalls, calls, cmp.AllowUnexported(call{})); diff != "" {
		t.Errorf("handler calls (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]int{"fail twice": 1, "panic once": 1, "outage, then fine": 1}, succeeded); diff != "" {
		t.Errorf("successes (-want +got):\n%s", diff)
	}
	// Retries: 2 for "fail twice", 2 for "always fail", 1 for "panic
	// once", 2 for "fail, outage, fail"; outage retries 5 + 3.
	if r, o := metrics.retried.Load(), metrics.outageRetried.Load(); r != 7 || o != 8 {
		t.Errorf("metrics: %d retries and %d outage retries, want 7 and 8", r, o)
	}

	type dlView struct {
		Reason     string
		Attempts   int
		RoutingKey string
		ErrHas     bool
	}
	got := make(map[string]dlView)
	for _, dl := range dls {
		got[dl.ID] = dlView{dl.Reason, dl.Attempts, dl.RoutingKey, strings.Contains(dl.Error, "boom")}
	}
	want := map[string]dlView{
		ids["always fail"]: {ReasonRetriesExhausted, 3, key, true},
		ids["permanent"]:   {ReasonPermanent, 1, key, true},
		// Outages took no attempt: the ladder ran to its end all the same.
		ids["fail, outage, fail"]: {ReasonRetriesExhausted, 3, key, true},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("dead letters (-want +got):\n%s", diff)
	}
}

// A graceful stop settles what was in flight, whether the acks are sent
// at once (negative AckDelay), grouped (the default) or held until the
// stop sends them (an hour).
func TestGracefulStop(t *testing.T) {
	for _, delay := range []time.Duration{-1, 0, time.Hour} {
		t.Run(fmt.Sprintf("ack delay %v", delay), func(t *testing.T) {
			t.Parallel()
			testGracefulStop(t, delay)
		})
	}
}

func testGracefulStop(t *testing.T, ackDelay time.Duration) {
	cfg := testConfig(t, "graceful")
	cfg.Concurrency = 2
	cfg.AckDelay = ackDelay
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan string, 10)
	release := make(chan struct{})
	var finished atomic.Int32
	if err := Handle(sub, func(ctx context.Context, ev *orderv1.OrderCreated, meta Meta) error {
		started <- meta.ID
		<-release
		finished.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := startSubscriber(t, sub)
	pub := startPublisher(t, cfg)
	const total = 6
	for range total {
		_, m := newOrderCreated(t)
		if err := pub.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	for range cfg.Concurrency {
		select {
		case <-started:
		case <-time.After(10 * time.Second):
			t.Fatal("handlers did not start")
		}
	}

	stopped := make(chan struct{})
	go func() {
		stop()
		close(stopped)
	}()
	eventually(t, 5*time.Second, "consumer cancelled", func() bool { return !sub.Subscribed() })
	select {
	case <-stopped:
		t.Fatal("Run returned while handlers were in flight")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after handlers finished")
	}
	if n := finished.Load(); n != int32(cfg.Concurrency) {
		t.Errorf("%d handlers finished, want %d (only the in-flight ones)", n, cfg.Concurrency)
	}
	if st := sub.State(); st.Up {
		t.Errorf("state after stop = %+v, want down", st)
	}

	// In-flight deliveries were acked; prefetched ones went back.
	if got, want := queuedMessages(t, cfg.QueueName()), total-cfg.Concurrency; got != want {
		t.Errorf("queue holds %d messages after stop, want %d", got, want)
	}
}

// queuedMessages takes every message from queue, for a second after the
// last one came, and returns how many it took: the broker's message count
// of a quorum queue may lag behind deliveries it just took back.
func queuedMessages(t *testing.T, queue string) int {
	t.Helper()
	ch := rawChannel(t, rawConn(t))
	n := 0
	for quiet := time.Now().Add(time.Second); time.Now().Before(quiet); {
		_, ok, err := ch.Get(queue, true)
		if err != nil {
			t.Fatalf("get from %s: %v", queue, err)
		}
		if !ok {
			time.Sleep(20 * time.Millisecond)
			continue
		}
		n++
		quiet = time.Now().Add(time.Second)
	}
	return n
}

// Acks held behind a delivery still in its handler (with a delay that
// never expires) are sent once it is settled, also while the subscriber
// stops: none of the handled deliveries goes back to the queue. (The
// flush at the acker's close, a safety net behind this, is tested with
// the acker alone.)
func TestGracefulStopSendsHeldAcks(t *testing.T) {
	cfg := testConfig(t, "heldacks")
	cfg.Concurrency = 4
	cfg.AckDelay = time.Hour // only a full group or the stop sends them
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	slow, slowMsg := newOrderCreated(t)
	release := make(chan struct{})
	var handled atomic.Int32
	if err := Handle(sub, func(ctx context.Context, ev *orderv1.OrderCreated, meta Meta) error {
		if ev.GetOrderId() == slow.GetOrderId() {
			<-release
			// Moved to the DLQ (not a retry queue, whose copy would come
			// back), then acked; no delivery is left in a handler, so
			// the acks held behind it go with it.
			return Permanent(errors.New("slow handler fails"))
		}
		handled.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	stop := startSubscriber(t, sub)
	pub := startPublisher(t, cfg)
	// The slow one first: it holds back the acks of every one after it.
	if err := pub.Publish(context.Background(), slowMsg); err != nil {
		t.Fatal(err)
	}
	const fast = 10
	for range fast {
		_, m := newOrderCreated(t)
		if err := pub.Publish(context.Background(), m); err != nil {
			t.Fatal(err)
		}
	}
	eventually(t, 10*time.Second, "fast deliveries handled", func() bool { return handled.Load() == fast })

	stopped := make(chan struct{})
	go func() {
		stop()
		close(stopped)
	}()
	eventually(t, 5*time.Second, "consumer cancelled", func() bool { return !sub.Subscribed() })
	close(release)
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after handlers finished")
	}
	if n := queuedMessages(t, cfg.QueueName()); n != 0 {
		t.Errorf("queue holds %d messages after stop, want 0: the held acks were not sent", n)
	}
}

func TestDeliveryLimitDeadLettersCrashLoops(t *testing.T) {
	cfg := testConfig(t, "crashloop")
	cfg.DeliveryLimit = 2
	conn := rawConn(t)
	ch := rawChannel(t, conn)
	ctx := context.Background()
	if err := declareTopology(ctx, conn, ch, cfg, []string{"order.created"}); err != nil {
		t.Fatal(err)
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	_, m := newOrderCreated(t)
	pub, err := toPublishing(m, "order")
	if err != nil {
		t.Fatal(err)
	}
	publishRaw(t, ch, cfg, m.RoutingKey, pub)

	// A consumer that dies before settling: requeue without acking.
	nacks := 0
	for range 100 {
		d, ok, err := ch.Get(cfg.QueueName(), false)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			if nacks > cfg.DeliveryLimit {
				break
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		if err := d.Nack(false, true); err != nil {
			t.Fatal(err)
		}
		nacks++
	}
	if nacks != cfg.DeliveryLimit+1 {
		t.Errorf("message delivered %d times, want %d", nacks, cfg.DeliveryLimit+1)
	}
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	dls := deadLetters(t, q, 1)
	if dl := dls[0]; dl.ID != m.ID || dl.Reason != ReasonDeliveryLimit || dl.RoutingKey != m.RoutingKey {
		t.Errorf("dead letter id=%s reason=%q routing key=%q, want %s %q %q", dl.ID, dl.Reason, dl.RoutingKey, m.ID, ReasonDeliveryLimit, m.RoutingKey)
	}
}

// TestHandlerTimeoutEndsAHungHandler: a handler that never returns on its
// own is given up once HandlerTimeout has passed (its context ends), and
// the delivery goes round the retry ladder like any failure instead of
// holding a handler slot for ever.
func TestHandlerTimeoutEndsAHungHandler(t *testing.T) {
	cfg := testConfig(t, "hung")
	cfg.HandlerTimeout = 300 * time.Millisecond
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var attempts []int
	var mu sync.Mutex
	done := make(chan struct{})
	if err := Handle(sub, func(ctx context.Context, _ *orderv1.OrderRejected, meta Meta) error {
		mu.Lock()
		attempts = append(attempts, meta.Attempt)
		mu.Unlock()
		if meta.Attempt == 1 {
			if _, ok := ctx.Deadline(); !ok {
				return Permanent(errorf("handler context has no deadline"))
			}
			<-ctx.Done() // hangs until the subscriber gives up on it
			return ctx.Err()
		}
		close(done)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	publishOneRejected(t, cfg)
	awaitClosed(t, done, "the hung delivery was never retried")
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(attempts, []int{1, 2}) {
		t.Errorf("attempts %v, want [1 2]: the first given up, the retry handled", attempts)
	}
}

// TestFailedMoveRequeues: when a failed delivery cannot be moved to its
// retry queue (here the queue is gone, so the broker returns the copy),
// the delivery goes back to the service queue rather than being acked
// and lost, and is handled again.
func TestFailedMoveRequeues(t *testing.T) {
	cfg := testConfig(t, "requeue")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	type call struct {
		attempt     int
		redelivered bool
	}
	var mu sync.Mutex
	var calls []call
	done := make(chan struct{})
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderRejected, meta Meta) error {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, call{meta.Attempt, meta.Redelivered})
		if len(calls) == 1 {
			return errorf("transient failure")
		}
		close(done)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	ch := rawChannel(t, rawConn(t))
	if _, err := ch.QueueDelete(cfg.RetryQueueName(cfg.RetryDelays[0]), false, false, false); err != nil {
		t.Fatal(err)
	}
	publishOneRejected(t, cfg)
	awaitClosed(t, done, "the delivery that could not be moved was never handled again")
	mu.Lock()
	defer mu.Unlock()
	if want := []call{{1, false}, {1, true}}; !slices.Equal(calls, want) {
		t.Errorf("calls %+v, want %+v: the same attempt again, redelivered by the broker", calls, want)
	}
}

// publishOneRejected publishes one order.rejected through a publisher of
// cfg's.
func publishOneRejected(t *testing.T, cfg Config) {
	t.Helper()
	ev := sampleEvents()[2].(*orderv1.OrderRejected)
	m, err := NewMessage(ev, "inventory", ev.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	if err := startPublisher(t, cfg).Publish(context.Background(), m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
}

// awaitClosed waits for done to close, failing the test with what after a
// minute (a guard against hangs, not a timing).
func awaitClosed(t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal(what)
	}
}

// TestGoneRetryQueueIsDeclaredAgain: a retry queue deleted while the
// subscriber runs (an operator clearing old queues) is declared again by a
// new session once a copy finds it gone, so a delivery that keeps failing
// climbs the retry ladder to the dead-letter queue as usual, rather than
// being requeued and handled again at once until the broker's delivery
// limit dead-letters it for another reason.
func TestGoneRetryQueueIsDeclaredAgain(t *testing.T) {
	cfg := testConfig(t, "gone")
	var calls atomic.Int64
	pub, q := startWithDLQ(t, cfg, func(context.Context, *orderv1.OrderCreated, Meta) error {
		calls.Add(1)
		return errBoom
	})
	ch := rawChannel(t, rawConn(t))
	retry := cfg.RetryQueueName(cfg.RetryDelays[0])
	if _, err := ch.QueueDelete(retry, false, false, false); err != nil {
		t.Fatal(err)
	}
	_, m := newOrderCreated(t)
	if err := pub.Publish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	dl := deadLetters(t, q, 1)[0]
	if dl.Reason != ReasonRetriesExhausted || dl.Attempts != cfg.MaxAttempts {
		t.Errorf("dead letter: reason %q after %d attempts, want %q after %d", dl.Reason, dl.Attempts, ReasonRetriesExhausted, cfg.MaxAttempts)
	}
	// The attempts, and the handling again of the first before the
	// session ended: a few, not the delivery limit's 20.
	if n := calls.Load(); n > int64(cfg.MaxAttempts)+3 {
		t.Errorf("handler called %d times for %d attempts", n, cfg.MaxAttempts)
	}
	if _, err := ch.QueueDeclarePassive(retry, true, false, false, false, nil); err != nil {
		t.Errorf("retry queue %s not declared again: %v", retry, err)
	}
}

// TestGoneDeadLetterQueueIsDeclaredAgain: likewise for the dead-letter
// queue: a message failing for good while it is gone is parked once a new
// session has declared it again, not requeued and handled again at once
// until the broker's delivery limit.
func TestGoneDeadLetterQueueIsDeclaredAgain(t *testing.T) {
	cfg := testConfig(t, "gonedlq")
	var calls atomic.Int64
	pub, q := startWithDLQ(t, cfg, func(context.Context, *orderv1.OrderCreated, Meta) error {
		calls.Add(1)
		return Permanent(errBoom)
	})
	ch := rawChannel(t, rawConn(t))
	if _, err := ch.QueueDelete(cfg.DLQName(), false, false, false); err != nil {
		t.Fatal(err)
	}
	_, m := newOrderCreated(t)
	if err := pub.Publish(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	dl := deadLetters(t, q, 1)[0]
	if dl.ID != m.ID || dl.Reason != ReasonPermanent {
		t.Errorf("dead letter %s: reason %q, want %s with %q", dl.ID, dl.Reason, m.ID, ReasonPermanent)
	}
	if n := calls.Load(); n > 3 {
		t.Errorf("handler called %d times for a message failing for good, want a few, not the delivery limit's", n)
	}
}
