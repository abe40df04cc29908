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
		n, err := q.ReplayAll(ctx, "")
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
		n, err := q.DiscardAll(ctx, "")
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
	moved, _, err := q.move(ctx, func(amqp.Delivery) bool {
		if _, err := ch.QueueDelete(cfg.QueueName(), false, false, false); err != nil {
			t.Errorf("delete the service queue: %v", err)
		}
		return true
	}, true)
	if moved != 0 || !errors.Is(err, ErrUnroutable) {
		t.Fatalf("replay to a deleted queue: moved %d, %v; want none moved and ErrUnroutable", moved, err)
	}
	eventually(t, 10*time.Second, "the dead letter still parked", parked)
}

// parked is a letter parkLetters parks: its id and the reason it was
// dead-lettered for (none when empty).
type parked struct{ id, reason string }

// parkLetters declares cfg's service queue and dead-letter queue without
// the bus and parks letters in the latter, confirmed.
func parkLetters(t *testing.T, cfg Config, letters ...parked) {
	t.Helper()
	ch := rawChannel(t, rawConn(t))
	for _, q := range []struct {
		name, kind string
	}{{cfg.QueueName(), amqp.QueueTypeQuorum}, {cfg.DLQName(), amqp.QueueTypeClassic}} {
		if _, err := ch.QueueDeclare(q.name, true, false, false, false, amqp.Table{amqp.QueueTypeArg: q.kind}); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, l := range letters {
		headers := amqp.Table{HeaderRoutingKey: "order.created"}
		if l.reason != "" {
			headers[HeaderReason] = l.reason
		}
		letter := amqp.Publishing{MessageId: l.id, Type: "ordermesh.order.v1.OrderCreated", Headers: headers, Body: []byte{}}
		dc, err := ch.PublishWithDeferredConfirm("", cfg.DLQName(), true, false, letter)
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("park %s: confirmed %v, %v", l.id, ok, err)
		}
	}
}

// parkedDLQ parks letters with ids (parkLetters) in the dead-letter queue of
// a service of the test's own called name, and returns its configuration
// and its DLQ once the queue reports them ready.
func parkedDLQ(t *testing.T, name string, ids ...string) (Config, *DLQ) {
	t.Helper()
	letters := make([]parked, len(ids))
	for i, id := range ids {
		letters[i] = parked{id: id}
	}
	return parkedLetters(t, name, letters...)
}

// parkedLetters is parkedDLQ for letters with reasons.
func parkedLetters(t *testing.T, name string, letters ...parked) (Config, *DLQ) {
	t.Helper()
	cfg := testConfig(t, name)
	parkLetters(t, cfg, letters...)
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	waitStat(t, q, QueueStat{Ready: len(letters)})
	return cfg, q
}

// listedIDs lists q's dead letters and returns their ids, in order.
func listedIDs(t *testing.T, q *DLQ) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	dls, err := q.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, dl := range dls {
		out = append(out, dl.ID)
	}
	return out
}

// waitStat waits until q's dead-letter queue reports want.
func waitStat(t *testing.T, q *DLQ, want QueueStat) {
	t.Helper()
	var got QueueStat
	eventually(t, 10*time.Second, fmt.Sprintf("the dead-letter queue at %+v", want), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		got, err = q.Stat(ctx)
		return err == nil && got == want
	})
}

// TestDLQReplayAndDiscardByReason: replaying, then discarding, the
// letters of one reason, interleaved with others, moves each of them and
// leaves the others parked in their order: the scan goes past the letters
// it skips rather than meeting them again.
func TestDLQReplayAndDiscardByReason(t *testing.T) {
	cfg, q := parkedLetters(t, "dlqreason",
		parked{"m-1", ReasonRetriesExhausted}, parked{"m-2", ReasonPermanent}, parked{"m-3", ReasonRetriesExhausted},
		parked{"m-4", ReasonRetriesExhausted}, parked{"m-5", ReasonPermanent}, parked{"m-6", ReasonRetriesExhausted},
		parked{"m-7", ReasonPermanent}, parked{"m-8", ReasonInvalid})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if n, err := q.ReplayAll(ctx, ReasonPermanent); err != nil || n != 3 {
		t.Fatalf("ReplayAll(%s) = %d, %v; want the 3 of that reason", ReasonPermanent, n, err)
	}
	if got, want := listedIDs(t, q), []string{"m-1", "m-3", "m-4", "m-6", "m-8"}; !slices.Equal(got, want) {
		t.Errorf("parked after the replay: %v, want %v", got, want)
	}
	ch := rawChannel(t, rawConn(t))
	if st, err := ch.QueueDeclarePassive(cfg.QueueName(), true, false, false, false, nil); err != nil || st.Messages != 3 {
		t.Errorf("the service queue holds %d messages (%v), want the 3 replayed", st.Messages, err)
	}
	if n, err := q.DiscardAll(ctx, ReasonRetriesExhausted); err != nil || n != 4 {
		t.Fatalf("DiscardAll(%s) = %d, %v; want the 4 of that reason", ReasonRetriesExhausted, n, err)
	}
	if got, want := listedIDs(t, q), []string{"m-8"}; !slices.Equal(got, want) {
		t.Errorf("parked after the discard: %v, want %v", got, want)
	}
}

// TestDLQActsOnEveryCopyOfAnID: dead-lettering is at least once, so a
// message can be parked twice; replaying or discarding its id takes every
// copy, not the first only.
func TestDLQActsOnEveryCopyOfAnID(t *testing.T) {
	cfg, q := parkedDLQ(t, "dlqcopies", "m-1", "m-2", "m-1", "m-3", "m-2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := q.Discard(ctx, "m-1"); err != nil {
		t.Fatal(err)
	}
	if got, want := listedIDs(t, q), []string{"m-2", "m-3", "m-2"}; !slices.Equal(got, want) {
		t.Errorf("parked after discarding m-1: %v, want %v", got, want)
	}
	if err := q.Replay(ctx, "m-2"); err != nil {
		t.Fatal(err)
	}
	if got, want := listedIDs(t, q), []string{"m-3"}; !slices.Equal(got, want) {
		t.Errorf("parked after replaying m-2: %v, want %v", got, want)
	}
	ch := rawChannel(t, rawConn(t))
	if st, err := ch.QueueDeclarePassive(cfg.QueueName(), true, false, false, false, nil); err != nil || st.Messages != 2 {
		t.Errorf("the service queue holds %d messages (%v), want m-2's 2 copies", st.Messages, err)
	}
}

// TestDLQNotFoundSaysAConsumerMayHoldIt: a message a consumer holds
// unacknowledged is not ready, so Replay and Discard do not find it; their
// error says how many ready messages they scanned and that the queue's
// consumer may hold others. Once let go, it is found.
func TestDLQNotFoundSaysAConsumerMayHoldIt(t *testing.T) {
	cfg, q := parkedDLQ(t, "dlqheld", "m-1", "m-2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if dls, st, err := q.ListStat(ctx, 1); err != nil || len(dls) != 1 || st != (QueueStat{Ready: 2}) {
		t.Fatalf("ListStat(1) = %d letters, %+v, %v; want 1 letter of 2 ready", len(dls), st, err)
	}

	holder := rawChannel(t, rawConn(t))
	if err := holder.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := holder.Consume(cfg.DLQName(), "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if d.MessageId != "m-1" {
			t.Fatalf("the consumer took %s, want m-1", d.MessageId)
		}
	case <-ctx.Done():
		t.Fatal("the consumer got nothing")
	}
	waitStat(t, q, QueueStat{Ready: 1, Consumers: 1})

	for name, op := range map[string]func(context.Context, string) error{"Replay": q.Replay, "Discard": q.Discard} {
		err := op(ctx, "m-1")
		nf, ok := errors.AsType[*NotFoundError](err)
		if !ok || !errors.Is(err, ErrNotFound) {
			t.Fatalf("%s of a held message = %v, want a *NotFoundError matching ErrNotFound", name, err)
		}
		want := Scan{Start: QueueStat{Ready: 1, Consumers: 1}, Scanned: 1}
		if nf.ID != "m-1" || nf.Queue != cfg.DLQName() || nf.Scan != want {
			t.Errorf("%s: %+v, want id m-1, queue %s, scan %+v", name, nf, cfg.DLQName(), want)
		}
		for _, part := range []string{"not among the 1 ready message(s) of " + cfg.DLQName(), "the queue's 1 consumer(s) may hold others"} {
			if !strings.Contains(err.Error(), part) {
				t.Errorf("%s error %q does not say %q", name, err, part)
			}
		}
	}
	waitStat(t, q, QueueStat{Ready: 1, Consumers: 1}) // m-2 requeued, untouched

	if err := holder.Close(); err != nil { // lets m-1 go
		t.Fatal(err)
	}
	waitStat(t, q, QueueStat{Ready: 2})
	if err := q.Discard(ctx, "m-1"); err != nil {
		t.Fatalf("Discard of the message let go: %v", err)
	}
	if err := q.Replay(ctx, "nothing-like-it"); err == nil || strings.Contains(err.Error(), "consumer") || strings.Contains(err.Error(), "during the search") {
		t.Errorf("Replay of an unknown id with no consumer = %v; want a plain not found", err)
	}
}

// TestDLQNotFoundCountsWhatMovedDuringTheSearch: the scan covers the
// messages ready as it starts. One another session takes meanwhile is
// counted as taken, and one let go meanwhile (ready only after the scan
// passed) as ready after; the not-found error says both.
func TestDLQNotFoundCountsWhatMovedDuringTheSearch(t *testing.T) {
	cfg, q := parkedDLQ(t, "dlqmoving", "m-1", "m-2")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	other := rawChannel(t, rawConn(t))
	var held amqp.Delivery
	readyNow := func() int {
		st, err := other.QueueDeclarePassive(cfg.DLQName(), true, false, false, false, nil)
		if err != nil {
			t.Fatalf("inspect: %v", err)
		}
		return st.Messages
	}

	// Another session takes m-2 while the scan looks at m-1.
	moved, scan, err := q.move(ctx, func(d amqp.Delivery) bool {
		if d.MessageId == "m-1" {
			var ok bool
			var err error
			if held, ok, err = other.Get(cfg.DLQName(), false); err != nil || !ok || held.MessageId != "m-2" {
				t.Fatalf("the other session's get: %s, %v, %v; want m-2", held.MessageId, ok, err)
			}
		}
		return false
	}, false)
	if want := (Scan{Start: QueueStat{Ready: 2}, Scanned: 1}); err != nil || moved != 0 || scan != want {
		t.Fatalf("search while m-2 is taken: moved %d, %+v, %v; want none moved, %+v", moved, scan, err, want)
	}
	if msg := (&NotFoundError{ID: "x", Queue: cfg.DLQName(), Scan: scan}).Error(); !strings.Contains(msg, "not among the 1 ready message(s)") || !strings.Contains(msg, "1 more were taken by a consumer or another session during the search") {
		t.Errorf("not-found error %q does not say 1 scanned and 1 taken meanwhile", msg)
	}
	waitStat(t, q, QueueStat{Ready: 1})

	// The other session lets m-2 go while the scan holds m-1.
	moved, scan, err = q.move(ctx, func(amqp.Delivery) bool {
		if err := held.Nack(false, true); err != nil {
			t.Fatalf("let m-2 go: %v", err)
		}
		eventually(t, 10*time.Second, "m-2 ready again", func() bool { return readyNow() == 1 })
		return false
	}, false)
	if want := (Scan{Start: QueueStat{Ready: 1}, Scanned: 1, ReadyAfter: 1}); err != nil || moved != 0 || scan != want {
		t.Fatalf("search while m-2 is let go: moved %d, %+v, %v; want none moved, %+v", moved, scan, err, want)
	}
	if msg := (&NotFoundError{ID: "x", Queue: cfg.DLQName(), Scan: scan}).Error(); !strings.Contains(msg, "1 became ready during the search") {
		t.Errorf("not-found error %q does not say 1 became ready meanwhile", msg)
	}
	if err := q.Replay(ctx, "m-2"); err != nil {
		t.Errorf("Replay of the message let go: %v", err)
	}
}
