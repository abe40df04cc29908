package service_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/service"
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/internal/testport"
	"github.com/ordermesh/ordermesh/internal/testproxy"
)

// TestFlushWaitsForTheBroker: events left in the outbox at a stop while
// the broker is out of reach are published once it is back within the
// flush's time, rather than left for the next start; with none left, the
// stop does not wait for the broker.
func TestFlushWaitsForTheBroker(t *testing.T) {
	for _, events := range []int{1, 0} {
		t.Run(fmt.Sprintf("%d events", events), func(t *testing.T) { testFlush(t, events) })
	}
}

func testFlush(t *testing.T, events int) {
	name := "flusher"
	prefix, schema := isolate(t, name, []time.Duration{time.Second})
	broker, err := url.Parse(platformtest.AMQPURL())
	if err != nil {
		t.Fatalf("broker url: %v", err)
	}
	proxy := testproxy.New(t, broker.Host)
	broker.Host = proxy.Addr()
	cfg := service.Config{
		GRPCAddr: "127.0.0.1:0", DatabaseURL: postgrestest.URL(), DatabaseSchema: schema,
		AMQPURL: broker.String(), TopologyPrefix: prefix,
		Prefetch: 10, Concurrency: 2, RetryDelays: []time.Duration{time.Second},
		RelayInterval: time.Minute, ShutdownTimeout: 20 * time.Second, HandlerTimeout: 5 * time.Second,
	}
	spec := service.Spec{
		Name:               name,
		BrokerGatesServing: true,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			h := func(context.Context, pgx.Tx, *orderv1.OrderCreated, eventbus.Meta) ([]proto.Message, error) {
				return nil, nil
			}
			return nil, eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, h))
		},
	}
	svc := runService(t, spec, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	health := svc.health(t)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, 10*time.Second)

	proxy.SetUp(false)
	waitHealth(t, health, service.BrokerHealthName, healthpb.HealthCheckResponse_NOT_SERVING, time.Minute)
	ctx := context.Background()
	pool, err := postgres.Open(ctx, postgrestest.URL(), schema)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	for range events {
		if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
			ev := orderCreated("tok")
			return outbox.AddEvents(ctx, tx, name, ev.GetOrderId(), ev)
		}); err != nil {
			t.Fatalf("write an event: %v", err)
		}
	}
	begin := time.Now()
	svc.stop()
	if events == 0 {
		if err := svc.wait(t); err != nil {
			t.Errorf("run returned %v after shutdown", err)
		}
		if d := time.Since(begin); d > 10*time.Second {
			t.Errorf("the stop took %v with nothing to flush, want it not to wait for the broker (20 s)", d)
		}
		return
	}
	time.Sleep(time.Second) // the stop reaches its flush, the broker still away
	proxy.SetUp(true)
	if err := svc.wait(t); err != nil {
		t.Errorf("run returned %v after shutdown", err)
	}
	var left int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM outbox_deferred)`).Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("%d events left in the outbox after the stop, want them published once the broker was back", left)
	}
}

// TestWorkerRuntime runs a worker on the real broker and database: it
// becomes SERVING, handles an event through the inbox, exports metrics,
// goes NOT_SERVING when its broker connections are cut or black-holed and
// SERVING again after it reconnects, and stops cleanly.
func TestWorkerRuntime(t *testing.T) {
	name := "worker"
	prefix, schema := isolate(t, name, []time.Duration{100 * time.Millisecond})

	adminAddr := testport.Addr(t)
	// The worker reaches the broker through a proxy the test can cut.
	broker, err := url.Parse(platformtest.AMQPURL())
	if err != nil {
		t.Fatalf("broker url: %v", err)
	}
	proxy := testproxy.New(t, broker.Host)
	broker.Host = proxy.Addr()
	amqpURL := broker.String()
	cfg := service.Config{
		GRPCAddr: "127.0.0.1:0", Admin: telemetry.Admin{Addr: adminAddr},
		DatabaseURL: postgrestest.URL(), DatabaseSchema: schema,
		AMQPURL: amqpURL, TopologyPrefix: prefix,
		Prefetch: 10, Concurrency: 2, RetryDelays: []time.Duration{100 * time.Millisecond},
		// The relay's poll is far off: what the handler emits is published
		// at once only because the inbox wakes the relay after its commit.
		RelayInterval: time.Minute, ShutdownTimeout: 5 * time.Second,
		// Far above what the test needs, so that it changes nothing else.
		MemoryLimit: 1 << 30,
		GCPercent:   150,
	}
	prevLimit := debug.SetMemoryLimit(-1)
	prevGC := debug.SetGCPercent(100)
	debug.SetGCPercent(prevGC)
	var handled atomic.Int32
	spec := service.Spec{
		Name:               name,
		BrokerGatesServing: true,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			h := func(_ context.Context, _ pgx.Tx, ev *orderv1.OrderCreated, _ eventbus.Meta) ([]proto.Message, error) {
				handled.Add(1)
				if ev.GetPaymentToken() != "echo" {
					return nil, nil
				}
				// Emit the event once more, which this worker consumes too.
				again := proto.Clone(ev).(*orderv1.OrderCreated)
				again.PaymentToken = "tok"
				return []proto.Message{again}, nil
			}
			return nil, eventbus.Handle(s.Subscriber, inbox.Wrap(s.Inbox, h))
		},
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := runService(t, spec, cfg, log)
	defer func() {
		svc.stop()
		if err := svc.wait(t); err != nil {
			t.Errorf("run returned %v after shutdown", err)
		}
		if got := debug.SetMemoryLimit(-1); got != prevLimit {
			t.Errorf("memory limit after Run = %d, want %d as before", got, prevLimit)
		}
		if got := debug.SetGCPercent(prevGC); got != prevGC {
			t.Errorf("GOGC after Run = %d, want %d as before", got, prevGC)
		}
	}()

	health := svc.health(t)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	waitHealth(t, health, service.BrokerHealthName, healthpb.HealthCheckResponse_SERVING, 5*time.Second)

	pub := newPublisher(t, cfg, log)
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	ev := orderCreated("echo")
	if err := pub.PublishEvents(pctx, ev.OrderId, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
	// It reaches the handler through the inbox, and what the handler
	// emits is published well before the relay's next poll.
	waitFor(t, 10*time.Second, "event and the event it emitted handled", func() bool { return handled.Load() == 2 })

	// Metrics. The inbox counts an event once its transaction committed,
	// a moment after the handler ran: wait for the counts.
	wantMetrics := []string{`ordermesh_eventbus_link_up{role="subscriber"} 1`, `ordermesh_inbox_events_total{outcome="processed"} 2`, "ordermesh_outbox_pending 0", "ordermesh_outbox_pending_estimated 0", "ordermesh_outbox_stats_up 1", "go_goroutines", "go_gc_gomemlimit_bytes 1.073741824e+09", "go_gc_gogc_percent 150"}
	var body string
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		body = get(t, "http://"+adminAddr+"/metrics")
		if !slices.ContainsFunc(wantMetrics, func(w string) bool { return !strings.Contains(body, w) }) || time.Now().After(deadline) {
			break
		}
	}
	for _, want := range wantMetrics {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// Cut the path to the broker: NOT_SERVING, overall and on the
	// broker's name; restore it: SERVING again. How fast is not asserted:
	// these deadlines only guard against hangs.
	proxy.SetUp(false)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_NOT_SERVING, time.Minute)
	waitHealth(t, health, service.BrokerHealthName, healthpb.HealthCheckResponse_NOT_SERVING, time.Minute)
	proxy.SetUp(true)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, time.Minute)

	// A path that silently stops carrying anything is noticed by the
	// heartbeats (about 3 s, then the next health poll): NOT_SERVING as
	// well. Nothing closes the connections; only the heartbeats can
	// notice.
	proxy.Blackhole()
	waitHealth(t, health, "", healthpb.HealthCheckResponse_NOT_SERVING, time.Minute)
	proxy.SetUp(true)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, time.Minute)

	// A broker that closes the connections (rabbitmqctl close_connection)
	// is survived too: the worker comes back SERVING and handles events.
	if n := platformtest.CloseConnections(t, prefix+name+"."); n == 0 {
		t.Fatal("found no broker connection of the worker to close")
	}
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, 10*time.Second)
	ev.OrderId, ev.PaymentToken = uuid.NewString(), "tok"
	pctx2, pcancel2 := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel2()
	if err := pub.PublishEvents(pctx2, ev.OrderId, ev); err != nil {
		t.Fatalf("publish after reconnect: %v", err)
	}
	waitFor(t, 10*time.Second, "event handled after reconnect", func() bool { return handled.Load() == 3 })
}

func TestReadConfigGCPercent(t *testing.T) {
	spec := service.Spec{Name: "order", GRPCAddr: ":50051", AdminAddr: "127.0.0.1:9091", GCPercent: 200}
	for _, tt := range []struct {
		name string
		env  map[string]string
		spec service.Spec
		want int
	}{
		{name: "the service's default", spec: spec, want: 200},
		{name: "no default", spec: service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}, want: 0},
		{name: "GOGC set: the runtime's alone", env: map[string]string{"GOGC": "50"}, spec: spec, want: 0},
		{name: "GOGC off", env: map[string]string{"GOGC": "off"}, spec: spec, want: 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := config.NewEnv(func(k string) string { return tt.env[k] })
			if got := service.ReadConfig(env, tt.spec).GCPercent; got != tt.want {
				t.Errorf("GCPercent = %d, want %d", got, tt.want)
			}
			if err := env.Err(); err != nil {
				t.Errorf("Err() = %v", err)
			}
		})
	}
}

func TestReadConfigMemoryLimit(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092", MemoryLimit: 18 << 20}
	tests := []struct {
		name string
		env  map[string]string
		spec service.Spec
		want config.Bytes
		err  string
	}{
		{name: "the service's default", spec: spec, want: 18 << 20},
		{name: "no default", spec: service.Spec{Name: "order", GRPCAddr: ":50051", AdminAddr: "127.0.0.1:9091"}, want: 0},
		{name: "ORDERMESH_MEMORY_LIMIT", env: map[string]string{"ORDERMESH_MEMORY_LIMIT": "64MiB"}, spec: spec, want: 64 << 20},
		{name: "ORDERMESH_MEMORY_LIMIT without a default", env: map[string]string{"ORDERMESH_MEMORY_LIMIT": "64MiB"}, spec: service.Spec{Name: "order", GRPCAddr: ":50051", AdminAddr: "127.0.0.1:9091"}, want: 64 << 20},
		{name: "ORDERMESH_MEMORY_LIMIT off", env: map[string]string{"ORDERMESH_MEMORY_LIMIT": "off"}, spec: spec, want: 0},
		{
			name: "GOMEMLIMIT set: the runtime's alone",
			env:  map[string]string{"GOMEMLIMIT": "1GiB", "ORDERMESH_MEMORY_LIMIT": "64MiB"},
			spec: spec, want: 0,
		},
		{name: "GOMEMLIMIT off", env: map[string]string{"GOMEMLIMIT": "off"}, spec: spec, want: 0},
		{
			name: "ORDERMESH_MEMORY_LIMIT zero",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "0"},
			spec: spec, want: 0,
			err: "ORDERMESH_MEMORY_LIMIT: must be positive, or off",
		},
		{
			name: "ORDERMESH_MEMORY_LIMIT invalid",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "64MB"},
			spec: spec, want: 18 << 20,
			err: `ORDERMESH_MEMORY_LIMIT: invalid size "64MB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
		{
			name: "ORDERMESH_MEMORY_LIMIT invalid without a default",
			env:  map[string]string{"ORDERMESH_MEMORY_LIMIT": "64MB"},
			spec: service.Spec{Name: "order", GRPCAddr: ":50051", AdminAddr: "127.0.0.1:9091"}, want: 0,
			err: `ORDERMESH_MEMORY_LIMIT: invalid size "64MB": want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := config.NewEnv(func(k string) string { return tt.env[k] })
			cfg := service.ReadConfig(env, tt.spec)
			if cfg.MemoryLimit != tt.want {
				t.Errorf("MemoryLimit = %v, want %v", cfg.MemoryLimit, tt.want)
			}
			gotErr := ""
			if err := env.Err(); err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.err {
				t.Errorf("Err() = %q, want %q", gotErr, tt.err)
			}
		})
	}
}

func TestReadConfigDurationsMustBePositive(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}
	env := config.NewEnv(func(k string) string {
		return map[string]string{"ORDERMESH_SHUTDOWN_TIMEOUT": "0s", "ORDERMESH_RELAY_POLL_INTERVAL": "-1s"}[k]
	})
	service.ReadConfig(env, spec)
	err := env.Err()
	for _, want := range []string{"ORDERMESH_SHUTDOWN_TIMEOUT: must be positive", "ORDERMESH_RELAY_POLL_INTERVAL: must be positive"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Err() = %v, want it to say %q", err, want)
		}
	}
}

func TestReadConfigAMQPURL(t *testing.T) {
	spec := service.Spec{Name: "worker", GRPCAddr: ":50052", AdminAddr: "127.0.0.1:9092"}
	missing := filepath.Join(t.TempDir(), "ca.pem")
	for _, tt := range []struct {
		name, url, err string
	}{
		{name: "amqps with the system's CAs", url: "amqps://svc:pw@mq.example/"},
		{
			name: "a TLS parameter on amqp",
			url:  "amqp://svc:pw@mq.example/?cacertfile=/etc/ssl/ca.pem",
			err:  "ORDERMESH_AMQP_URL: cacertfile applies to TLS connections only: use amqps://",
		},
		{
			name: "a CA file that is not there",
			url:  "amqps://svc:pw@mq.example/?cacertfile=" + missing,
			err:  "ORDERMESH_AMQP_URL: cacertfile: open " + missing + ": no such file or directory",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			env := config.NewEnv(func(k string) string {
				if k == "ORDERMESH_AMQP_URL" {
					return tt.url
				}
				return ""
			})
			cfg := service.ReadConfig(env, spec)
			if cfg.AMQPURL != tt.url {
				t.Errorf("AMQPURL = %q, want %q", cfg.AMQPURL, tt.url)
			}
			gotErr := ""
			if err := env.Err(); err != nil {
				gotErr = err.Error()
			}
			if gotErr != tt.err {
				t.Errorf("Err() = %q, want %q", gotErr, tt.err)
			}
		})
	}
}

// runningService is a service a test runs with service.Run.
type runningService struct {
	addr net.Addr
	stop context.CancelFunc // begins the shutdown
	done <-chan error
}

// runService runs spec with cfg and returns once it serves gRPC. The
// service stops when the test ends, if the test did not stop it first.
func runService(t *testing.T, spec service.Spec, cfg service.Config, log *slog.Logger) *runningService {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- service.Run(ctx, spec, cfg, log, ready) }()
	select {
	case addr := <-ready:
		return &runningService{addr: addr, stop: cancel, done: done}
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("service did not start")
	}
	return nil
}

// isolate gives a test of a service called name its own topology prefix
// and database schema, which it removes when the test ends (the queues
// with retry queues of delays).
func isolate(t *testing.T, name string, delays []time.Duration) (prefix, schema string) {
	t.Helper()
	var b [6]byte
	_, _ = rand.Read(b[:])
	prefix = "svc-" + hex.EncodeToString(b[:]) + "."
	schema = postgrestest.RandomSchema(t)
	t.Cleanup(func() { postgrestest.DropSchema(t, schema) })
	t.Cleanup(func() { platformtest.DeleteTopology(t, platformtest.AMQPURL(), prefix, []string{name}, delays) })
	return prefix, schema
}

// health returns a health client of the service, dialled for the test.
func (s *runningService) health(t *testing.T) healthpb.HealthClient {
	t.Helper()
	conn, err := grpc.NewClient(s.addr.String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// wait waits for the service's run to end after stop and returns its
// error.
func (s *runningService) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-s.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("service did not stop within 30 s of its shutdown")
		return nil
	}
}

// newPublisher returns a publisher, up, on cfg's broker and topology.
func newPublisher(t *testing.T, cfg service.Config, log *slog.Logger) *eventbus.Publisher {
	t.Helper()
	pub, err := eventbus.NewPublisher(eventbus.Config{URL: cfg.AMQPURL, Prefix: cfg.TopologyPrefix, Service: "test"}, log)
	if err != nil {
		t.Fatalf("publisher: %v", err)
	}
	t.Cleanup(func() { _ = pub.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := pub.WaitUp(ctx); err != nil {
		t.Fatalf("publisher up: %v", err)
	}
	return pub
}

// orderCreated returns a valid OrderCreated of a new order.
func orderCreated(paymentToken string) *orderv1.OrderCreated {
	return &orderv1.OrderCreated{
		OrderId: uuid.NewString(), CustomerEmail: "ada@example.com", PaymentToken: paymentToken, CreateTime: timestamppb.Now(),
		Items: []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}}},
		Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 1},
	}
}

func waitHealth(t *testing.T, c healthpb.HealthClient, svc string, want healthpb.HealthCheckResponse_ServingStatus, within time.Duration) {
	t.Helper()
	waitFor(t, within, fmt.Sprintf("health %q %v", svc, want), func() bool {
		resp, err := c.Check(context.Background(), &healthpb.HealthCheckRequest{Service: svc})
		return err == nil && resp.GetStatus() == want
	})
}

func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, within)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %v", url, resp.Status, err)
	}
	return string(b)
}

// TestStopWhileStartingIsNoFailure: a service whose context ends while it
// starts (a SIGTERM during its database checks) returns nil, so that its
// binary exits 0, as for any stop asked for.
func TestStopWhileStartingIsNoFailure(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	cfg := service.Config{GRPCAddr: "127.0.0.1:0", DatabaseURL: postgrestest.URL(), DatabaseSchema: "unused",
		AMQPURL: platformtest.AMQPURL(), ShutdownTimeout: time.Second}
	err := service.Run(ctx, service.Spec{Name: "starting"}, cfg, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Errorf("Run with its context ended = %v, want nil", err)
	}
}
