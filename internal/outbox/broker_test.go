package outbox_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
)

// The bus's publisher is the relay's real publisher.
var _ outbox.Publisher = (*eventbus.Publisher)(nil)

const testService = "outboxtest"

func amqpURL() string {
	if u := os.Getenv("ORDERMESH_TEST_AMQP_URL"); u != "" {
		return u
	}
	return "amqp://guest:guest@127.0.0.1:5672/"
}

// broker is one test's slice of the shared RabbitMQ: a random name prefix,
// the prefixed events exchange and a queue bound to every routing key,
// consumed into a ledger of message ids.
type broker struct {
	prefix string

	mu       sync.Mutex
	seen     map[string]int           // message id → deliveries
	first    map[string]time.Time     // message id → first arrival
	delivery map[string]amqp.Delivery // message id → last delivery
	changed  chan struct{}            // closed and replaced on every arrival
}

// newBroker declares the test's exchange and catch-all queue and starts
// consuming; everything is deleted when the test ends.
func newBroker(tb testing.TB) *broker {
	tb.Helper()
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatal(err)
	}
	bk := &broker{
		prefix:   "test-" + hex.EncodeToString(b[:]) + ".",
		seen:     map[string]int{},
		first:    map[string]time.Time{},
		delivery: map[string]amqp.Delivery{},
		changed:  make(chan struct{}),
	}
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(bk.prefix + "consumer")
	conn, err := amqp.DialConfig(amqpURL(), amqp.Config{Properties: props, Heartbeat: 5 * time.Second})
	if err != nil {
		tb.Fatalf("RabbitMQ at %s is required (set ORDERMESH_TEST_AMQP_URL): %v", config.RedactURL(amqpURL()), err)
	}
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatal(err)
	}
	exchange := bk.prefix + "ordermesh.events"
	queue := bk.prefix + "all"
	if err := ch.ExchangeDeclare(exchange, amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		tb.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, false, false, false, false, nil); err != nil {
		tb.Fatal(err)
	}
	if err := ch.QueueBind(queue, "#", exchange, false, nil); err != nil {
		tb.Fatal(err)
	}
	if err := ch.Qos(500, 0, false); err != nil {
		tb.Fatal(err)
	}
	deliveries, err := ch.Consume(queue, "", false, false, false, false, nil)
	if err != nil {
		tb.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for d := range deliveries {
			bk.mu.Lock()
			bk.seen[d.MessageId]++
			if _, ok := bk.first[d.MessageId]; !ok {
				bk.first[d.MessageId] = time.Now()
			}
			bk.delivery[d.MessageId] = d
			close(bk.changed)
			bk.changed = make(chan struct{})
			bk.mu.Unlock()
			_ = d.Ack(false)
		}
	}()
	tb.Cleanup(func() {
		_, _ = ch.QueueDelete(queue, false, false, false)
		_ = ch.ExchangeDelete(exchange, false, false)
		_ = conn.Close()
		<-done
	})
	return bk
}

// publisher returns the bus's publisher for this test's exchange at url,
// closed when the test ends. It does not wait for the link.
func (bk *broker) publisher(tb testing.TB, url string) *eventbus.Publisher {
	tb.Helper()
	p, err := eventbus.NewPublisher(eventbus.Config{
		URL:          url,
		Prefix:       bk.prefix,
		Service:      testService,
		DialTimeout:  time.Second,
		ReconnectMax: 500 * time.Millisecond,
	}, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = p.Close() })
	return p
}

// upPublisher is publisher on the test broker, once its link is up.
func (bk *broker) upPublisher(tb testing.TB) *eventbus.Publisher {
	tb.Helper()
	p := bk.publisher(tb, amqpURL())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitUp(ctx); err != nil {
		tb.Fatalf("publisher link: %v", err)
	}
	return p
}

// waitFor blocks until every id in ids has arrived at least once, or fails
// the test after timeout.
func (bk *broker) waitFor(tb testing.TB, timeout time.Duration, ids ...string) {
	tb.Helper()
	bk.waitForN(tb, timeout, 1, ids...)
}

// waitForN blocks until every id in ids has arrived at least n times, or
// fails the test after timeout.
func (bk *broker) waitForN(tb testing.TB, timeout time.Duration, n int, ids ...string) {
	tb.Helper()
	deadline := time.After(timeout)
	for {
		bk.mu.Lock()
		missing := 0
		for _, id := range ids {
			if bk.seen[id] < n {
				missing++
			}
		}
		changed := bk.changed
		bk.mu.Unlock()
		if missing == 0 {
			return
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("%d of %d messages not delivered %d times within %s", missing, len(ids), n, timeout)
		}
	}
}

// counts returns a copy of the deliveries per message id.
func (bk *broker) counts() map[string]int {
	bk.mu.Lock()
	defer bk.mu.Unlock()
	out := make(map[string]int, len(bk.seen))
	for k, v := range bk.seen {
		out[k] = v
	}
	return out
}

func (bk *broker) firstArrival(id string) time.Time {
	bk.mu.Lock()
	defer bk.mu.Unlock()
	return bk.first[id]
}

func (bk *broker) lastDelivery(id string) (amqp.Delivery, bool) {
	bk.mu.Lock()
	defer bk.mu.Unlock()
	d, ok := bk.delivery[id]
	return d, ok
}

func (bk *broker) String() string { return fmt.Sprintf("broker %s", bk.prefix) }
