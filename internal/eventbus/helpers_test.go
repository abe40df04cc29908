package eventbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/config"
)

// testURL is the broker the integration tests use.
func testURL() string {
	if u := os.Getenv("ORDERMESH_TEST_AMQP_URL"); u != "" {
		return u
	}
	return DefaultURL
}

func testLogger() *slog.Logger {
	if os.Getenv("ORDERMESH_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// rawConn dials the test broker without the bus, failing the test with a
// clear message when the broker is absent.
func rawConn(tb testing.TB) *amqp.Connection {
	tb.Helper()
	conn, err := amqp.DialConfig(testURL(), amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		tb.Fatalf("RabbitMQ is required at %s (set ORDERMESH_TEST_AMQP_URL): %v", config.RedactURL(testURL()), err)
	}
	tb.Cleanup(func() { _ = conn.Close() })
	return conn
}

func rawChannel(tb testing.TB, conn *amqp.Connection) *amqp.Channel {
	tb.Helper()
	ch, err := conn.Channel()
	if err != nil {
		tb.Fatalf("open channel: %v", err)
	}
	return ch
}

// testConfig returns a config with a random prefix, short retry delays,
// and registers the deletion of every exchange and queue it names (plus
// extraQueues) at the end of the test.
func testConfig(tb testing.TB, service string, extraQueues ...string) Config {
	tb.Helper()
	cfg, err := Config{
		URL:            testURL(),
		Prefix:         "test-" + randomHex(4) + ".",
		Service:        service,
		RetryDelays:    []time.Duration{50 * time.Millisecond, 100 * time.Millisecond},
		ReconnectMin:   50 * time.Millisecond,
		ReconnectMax:   time.Second,
		HandlerTimeout: 10 * time.Second,
	}.WithDefaults()
	if err != nil {
		tb.Fatal(err)
	}
	conn := rawConn(tb) // fail early if the broker is absent
	tb.Cleanup(func() {
		ch, err := conn.Channel()
		if err != nil {
			tb.Errorf("cleanup: open channel: %v", err)
			return
		}
		defer ch.Close()
		queues := append([]string{cfg.QueueName(), cfg.DLQName()}, extraQueues...)
		for _, d := range cfg.RetryDelays {
			queues = append(queues, cfg.RetryQueueName(d))
		}
		for _, q := range queues {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				tb.Errorf("cleanup: delete queue %s: %v", q, err)
				return
			}
		}
		if err := ch.ExchangeDelete(cfg.ExchangeName(), false, false); err != nil {
			tb.Errorf("cleanup: delete exchange: %v", err)
		}
	})
	return cfg
}

// startSubscriber runs sub until the test ends (or stop is called) and
// waits until it is subscribed.
func startSubscriber(t *testing.T, sub *Subscriber) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- sub.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Run: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	wctx, wcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer wcancel()
	if err := sub.WaitUp(wctx); err != nil {
		t.Fatalf("subscriber never came up: %v", err)
	}
	return stop
}

func startPublisher(t testing.TB, cfg Config) *Publisher {
	t.Helper()
	p, err := NewPublisher(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := p.WaitUp(ctx); err != nil {
		t.Fatalf("publisher never came up: %v", err)
	}
	return p
}

// eventually polls cond every 50ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sampleEvents returns one valid event of every type.
func sampleEvents() []proto.Message {
	orderID := uuid.NewString()
	money := func() *moneyv1.Money { return &moneyv1.Money{CurrencyCode: "EUR", Units: 12, Nanos: 500000000} }
	lines := func() []*inventoryv1.StockLine {
		return []*inventoryv1.StockLine{{ProductId: "SKU-1", Quantity: 2}}
	}
	return []proto.Message{
		&orderv1.OrderCreated{
			OrderId:       orderID,
			CustomerEmail: "ada@example.com",
			Items: []*orderv1.LineItem{{
				ProductId: "SKU-1", Quantity: 2,
				UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 6, Nanos: 250000000},
			}},
			Total:        money(),
			PaymentToken: "tok_ok",
			CreateTime:   timestamppb.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)),
		},
		&orderv1.OrderConfirmed{OrderId: orderID, CustomerEmail: "ada@example.com", Total: money()},
		&orderv1.OrderRejected{OrderId: orderID, CustomerEmail: "ada@example.com", Reason: "out of stock: SKU-1"},
		&orderv1.OrderCancelled{OrderId: orderID, CustomerEmail: "ada@example.com"},
		&inventoryv1.StockReserved{OrderId: orderID, Items: lines()},
		&inventoryv1.StockReservationFailed{
			OrderId:   orderID,
			Shortages: []*inventoryv1.Shortage{{ProductId: "SKU-1", Requested: 3, Available: 1}},
			Reason:    "out of stock: SKU-1 (wanted 3, have 1)",
		},
		&inventoryv1.StockReleased{OrderId: orderID, Items: lines()},
		&paymentv1.PaymentSucceeded{OrderId: orderID, PaymentId: "pay_1", Amount: money()},
		&paymentv1.PaymentFailed{OrderId: orderID, Reason: "card declined"},
		&paymentv1.PaymentRefunded{OrderId: orderID, PaymentId: "pay_1", Amount: money()},
		&notificationv1.NotificationSent{
			OrderId:   orderID,
			Kind:      notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_RECEIVED,
			Recipient: "ada@example.com",
		},
	}
}

func newOrderCreated(t testing.TB) (*orderv1.OrderCreated, Message) {
	t.Helper()
	ev := sampleEvents()[0].(*orderv1.OrderCreated)
	m, err := NewMessage(ev, "order", ev.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	return ev, m
}

// closeTestConnections force-closes the broker connections whose
// client-provided name starts with prefix (only this test's) and returns
// how many it closed.
func closeTestConnections(t *testing.T, prefix string) int {
	t.Helper()
	out, err := exec.Command("rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").Output()
	if err != nil {
		t.Fatalf("rabbitmqctl list_connections: %v", err)
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, `{"connection_name","`+prefix) {
			continue
		}
		if out, err := exec.Command("rabbitmqctl", "-q", "close_connection", pid, "test fault injection").CombinedOutput(); err != nil {
			t.Fatalf("rabbitmqctl close_connection %s: %v: %s", pid, err, out)
		}
		n++
	}
	return n
}

// publishRaw publishes one message to the test exchange without the bus.
func publishRaw(t *testing.T, ch *amqp.Channel, cfg Config, key string, pub amqp.Publishing) {
	t.Helper()
	dc, err := ch.PublishWithDeferredConfirm(cfg.ExchangeName(), key, true, false, pub)
	if err != nil {
		t.Fatalf("raw publish: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if ok, err := dc.WaitContext(ctx); err != nil || !ok {
		t.Fatalf("raw publish confirm: ok=%v err=%v", ok, err)
	}
}

// deadLetters waits until the DLQ holds n messages and returns them.
func deadLetters(t *testing.T, q *DLQ, n int) []DeadLetter {
	t.Helper()
	var got []DeadLetter
	var lastErr error
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		got, lastErr = q.List(ctx, 0)
		cancel()
		if lastErr == nil && len(got) >= n {
			return got
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("DLQ holds %d messages, want %d (last error %v)", len(got), n, lastErr)
	return nil
}

var errBoom = errors.New("boom")

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }
