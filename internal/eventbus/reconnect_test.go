package eventbus

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

type transition struct {
	at     time.Time
	up     bool
	reason string
}

// stateRecorder records every link state change it sees.
type stateRecorder struct {
	mu  sync.Mutex
	log []transition
}

func (r *stateRecorder) run(ctx context.Context, watch func() (LinkState, <-chan struct{})) {
	var last *LinkState
	for {
		st, changed := watch()
		if last == nil || st.Up != last.Up || !st.Since.Equal(last.Since) {
			r.mu.Lock()
			r.log = append(r.log, transition{at: st.Since, up: st.Up, reason: st.Reason})
			r.mu.Unlock()
		}
		last = &st
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// outage returns when the link went down at or after t and when it came
// back up, if it did.
func (r *stateRecorder) outage(t time.Time) (down, up time.Time, reason string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, tr := range r.log {
		switch {
		case down.IsZero() && !tr.up && !tr.at.Before(t):
			down, reason = tr.at, tr.reason
		case !down.IsZero() && tr.up:
			return down, tr.at, reason
		}
	}
	return down, up, reason
}

// recordStates records watch's link states until the test ends.
func recordStates(t *testing.T, watch func() (LinkState, <-chan struct{})) *stateRecorder {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(wg.Wait)
	t.Cleanup(cancel)
	r := &stateRecorder{}
	wg.Go(func() { r.run(ctx, watch) })
	return r
}

// waitRecovered waits until the link went down at or after since and came
// back up, and returns why it went down.
func (r *stateRecorder) waitRecovered(t *testing.T, since time.Time, within time.Duration) string {
	t.Helper()
	eventually(t, within, "link down and up again", func() bool {
		_, up, _ := r.outage(since)
		return !up.IsZero()
	})
	_, _, reason := r.outage(since)
	return reason
}

func TestReconnectAfterConnectionsClosed(t *testing.T) {
	cfg := testConfig(t, "reconnect")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	consumed := make(map[string]bool)
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		mu.Lock()
		consumed[meta.ID] = true
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	var pubStates, subStates stateRecorder
	wg.Go(func() { pubStates.run(ctx, pub.Watch) })
	wg.Go(func() { subStates.run(ctx, sub.Watch) })

	// Publishers run through the outage; only confirmed ids count. Their
	// messages are copies of one built here (newOrderCreated may end the
	// test, which only the test's goroutine may do), each with an id of
	// its own.
	_, template := newOrderCreated(t)
	var cmu sync.Mutex
	confirmed := make(map[string]time.Time)
	failures := 0
	pubCtx, stopPublishing := context.WithCancel(ctx)
	var pubWG sync.WaitGroup
	defer pubWG.Wait()
	defer stopPublishing()
	for range 2 {
		pubWG.Go(func() {
			for pubCtx.Err() == nil {
				var msgs []Message
				for range 5 {
					m := template
					m.ID = uuid.Must(uuid.NewV7()).String()
					msgs = append(msgs, m)
				}
				pctx, pcancel := context.WithTimeout(pubCtx, 5*time.Second)
				err := pub.Publish(pctx, msgs...)
				pcancel()
				cmu.Lock()
				if err == nil {
					for _, m := range msgs {
						confirmed[m.ID] = time.Now()
					}
				} else {
					failures++
				}
				cmu.Unlock()
				if err != nil {
					time.Sleep(20 * time.Millisecond)
				}
			}
		})
	}

	// confirmedAfter counts the messages confirmed after after.
	confirmedAfter := func(after time.Time) int {
		cmu.Lock()
		defer cmu.Unlock()
		n := 0
		for _, at := range confirmed {
			if at.After(after) {
				n++
			}
		}
		return n
	}
	// The deadlines below only guard against hangs: how fast the links
	// recover is not asserted, only that and in which order they do.
	eventually(t, 30*time.Second, "publishes confirmed before the close", func() bool { return confirmedAfter(time.Time{}) > 0 })
	t0 := time.Now()
	if n := closeTestConnections(t, cfg.Prefix); n != 3 {
		t.Fatalf("closed %d connections, want 3 (publisher, subscriber and its republisher)", n)
	}
	t1 := time.Now()
	eventually(t, 60*time.Second, "both links down and back up", func() bool {
		_, pubUp, _ := pubStates.outage(t0)
		_, subUp, _ := subStates.outage(t0)
		return !pubUp.IsZero() && !subUp.IsZero()
	})
	_, pubUp, _ := pubStates.outage(t0)
	eventually(t, 60*time.Second, "a publish confirmed after the publisher's link came back", func() bool { return confirmedAfter(pubUp) > 0 })
	stopPublishing()
	pubWG.Wait()
	t.Logf("confirmed %d messages (%d after the close), %d failed publishes", confirmedAfter(time.Time{}), confirmedAfter(t1), failures)

	cmu.Lock()
	defer cmu.Unlock()
	eventually(t, 60*time.Second, "every confirmed message consumed", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for id := range confirmed {
			if !consumed[id] {
				return false
			}
		}
		return true
	})

	// Each link went down for the broker's close of one of its
	// connections, and says so: the broker closes them with code 320 and
	// the explanation closeTestConnections gives. The session notices the
	// connection's close before its channels' (amqp091-go tells the
	// connection's listeners first), so the reason names a connection; the
	// subscriber's is whichever of its two was closed first.
	const forced = " closed: 320 CONNECTION_FORCED - test fault injection"
	for _, c := range []struct {
		name string
		rec  *stateRecorder
		want []string // the down reasons allowed
	}{
		{"publisher", &pubStates, []string{"connection" + forced}},
		{"subscriber", &subStates, []string{"connection" + forced, "republish connection" + forced}},
	} {
		t.Run(c.name, func(t *testing.T) {
			down, up, reason := c.rec.outage(t0)
			t.Logf("closed in [%s, %s]; down after %s (%s); up %s later",
				t0.Format(time.StampMilli), t1.Format(time.StampMilli), down.Sub(t0), reason, up.Sub(down))
			if !slices.Contains(c.want, reason) {
				t.Errorf("down reason %q, want one of %q", reason, c.want)
			}
		})
	}
	if !sub.Subscribed() {
		t.Error("subscriber not subscribed after recovery")
	}

	ch := rawChannel(t, rawConn(t))
	if err := ch.ExchangeDeclarePassive(cfg.ExchangeName(), amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		t.Fatalf("exchange after recovery: %v", err)
	}
	for _, q := range []string{cfg.QueueName(), cfg.DLQName(), cfg.RetryQueueName(cfg.RetryDelays[0])} {
		if _, err := ch.QueueDeclarePassive(q, true, false, false, false, nil); err != nil {
			t.Fatalf("queue %s after recovery: %v", q, err)
		}
	}
}

func TestResubscribeAfterQueueDeleted(t *testing.T) {
	cfg := testConfig(t, "requeue")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 10)
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		got <- meta.ID
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)

	// Deleting the queue cancels the consumer; the subscriber must
	// re-declare the topology and re-subscribe.
	states := recordStates(t, sub.Watch)
	ch := rawChannel(t, rawConn(t))
	t0 := time.Now()
	if _, err := ch.QueueDelete(cfg.QueueName(), false, false, false); err != nil {
		t.Fatal(err)
	}
	if reason := states.waitRecovered(t, t0, 5*time.Second); reason != "consumer cancelled by broker" {
		t.Errorf("down reason %q", reason)
	}
	if !sub.Subscribed() {
		t.Error("not subscribed")
	}

	_, m := newOrderCreated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	select {
	case id := <-got:
		if id != m.ID {
			t.Errorf("consumed %s, want %s", id, m.ID)
		}
	case <-ctx.Done():
		t.Fatal("message not consumed after resubscribe")
	}
}

// TestRecoverFromLosingTheRepublishConnection: the connection retry copies
// go out on can fail alone; the subscriber starts its session again, and
// a failing delivery after that is still retried.
func TestRecoverFromLosingTheRepublishConnection(t *testing.T) {
	cfg := testConfig(t, "repub")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	attempts := make(chan int, 10)
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		attempts <- meta.Attempt
		if meta.Attempt == 1 {
			return errorf("fails once")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)

	states := recordStates(t, sub.Watch)
	t0 := time.Now()
	if n := closeTestConnections(t, cfg.connectionName("subscriber-republish")); n != 1 {
		t.Fatalf("closed %d connections, want the subscriber's republishing one", n)
	}
	if reason := states.waitRecovered(t, t0, 10*time.Second); !strings.Contains(reason, "republish") {
		t.Errorf("down reason %q, want the republish connection's loss", reason)
	}

	_, m := newOrderCreated(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.Publish(ctx, m); err != nil {
		t.Fatalf("Publish: %v", err)
	}
	for want := 1; want <= 2; want++ {
		select {
		case got := <-attempts:
			if got != want {
				t.Fatalf("attempt %d, want %d", got, want)
			}
		case <-ctx.Done():
			t.Fatalf("attempt %d never came: the retry copy was not sent", want)
		}
	}
}
