package eventbus

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
)

// TestAlarmDoesNotStallAcks: in a memory alarm the broker stops reading
// from every connection that publishes. A delivery whose retry copy is
// held up by the alarm must not hold back the acks of the others: the
// subscriber republishes on a connection of its own. Nor may the alarm
// make the delivery go round: its copy waits for the alarm to clear,
// however much longer than ConfirmTimeout that takes, rather than being
// given up, the delivery requeued, handled again and copied again, each
// round a delivery count nearer the delivery limit. The alarm is raised
// on a private node, since it blocks every publisher of the broker.
func TestAlarmDoesNotStallAcks(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "eventbus-alarm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil { // the node's user enters it
		t.Fatal(err)
	}
	node, err := privateinfra.StartRabbitMQ(ctx, filepath.Join(dir, "rabbitmq"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(node.Close)

	cfg, err := Config{
		URL:         node.URL,
		Service:     "alarm",
		RetryDelays: []time.Duration{50 * time.Millisecond},
		// Far shorter than the test holds the alarm.
		ConfirmTimeout: 300 * time.Millisecond,
		DeliveryLimit:  3,
		AckDelay:       -1, // each ack at once
	}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := map[string]int{}
	failed := make(chan struct{})
	handle := func(_ context.Context, ev *orderv1.OrderRejected, _ Meta) error {
		mu.Lock()
		calls[ev.GetReason()]++
		n := calls[ev.GetReason()]
		mu.Unlock()
		if ev.GetReason() == "fail once" && n == 1 {
			defer close(failed)
			return errorf("transient failure")
		}
		if ev.GetReason() == "fine" {
			<-failed // after the retry copy went out
			time.Sleep(200 * time.Millisecond)
		}
		return nil
	}
	if err := Handle(sub, handle); err != nil {
		t.Fatal(err)
	}
	// The topology first, then the events, then the alarm.
	stop := startSubscriber(t, sub)
	stop()
	pub := startPublisher(t, cfg)
	for _, reason := range []string{"fail once", "fine"} {
		ev := sampleEvents()[2].(*orderv1.OrderRejected)
		ev.Reason = reason
		m, err := NewMessage(ev, "inventory", ev.GetOrderId())
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatalf("Publish: %v", err)
		}
	}
	if _, err := node.Ctl(ctx, "set_vm_memory_high_watermark", "0"); err != nil {
		t.Fatalf("raise the alarm: %v", err)
	}
	alarm := true
	clear := func() {
		if alarm {
			alarm = false
			if _, err := node.Ctl(context.Background(), "set_vm_memory_high_watermark", "0.4"); err != nil {
				t.Errorf("clear the alarm: %v", err)
			}
		}
	}
	defer clear()

	sub, err = NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	if err := Handle(sub, handle); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)

	// "fine" is acked while "fail once" waits for its retry copy's
	// confirm: one message unacknowledged, none ready.
	queue := cfg.QueueName()
	var last [2]int
	// state returns how many times the message with reason was handled,
	// and the queue's ready and unacknowledged counts.
	state := func(reason string) (int, [2]int) {
		t.Helper()
		qs, err := node.Queues(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mu.Lock()
		defer mu.Unlock()
		return calls[reason], qs[queue]
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var fine int
		fine, last = state("fine")
		if fine == 1 && last == [2]int{0, 1} {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("during the alarm: %d calls of fine, queue %s ready/unacked %v; want fine acked and only the retried message unacknowledged", fine, queue, last)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// It stays so for ten times ConfirmTimeout, the failed delivery
	// handled once.
	for end := time.Now().Add(10 * cfg.ConfirmTimeout); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if n, q := state("fail once"); n != 1 || q != [2]int{0, 1} {
			t.Fatalf("during the alarm: fail once handled %d times, queue %s ready/unacked %v; want it handled once and waiting unacknowledged", n, queue, q)
		}
	}

	// Once the alarm clears the retry goes out and the message is handled
	// again, once, and nothing is dead-lettered.
	clear()
	eventually(t, 30*time.Second, "the retried message handled again", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return calls["fail once"] == 2
	})
	time.Sleep(time.Second) // for copies there should not be
	qs, err := node.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	n := calls["fail once"]
	mu.Unlock()
	if n != 2 || qs[cfg.DLQName()] != [2]int{0, 0} {
		t.Errorf("after the alarm: fail once handled %d times, dead-letter queue ready/unacked %v; want 2 and empty", n, qs[cfg.DLQName()])
	}
}
