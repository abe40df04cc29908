package app_test

import (
	"context"
	"fmt"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	toxiproxy "github.com/Shopify/toxiproxy/v2"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/rs/zerolog"
	"golang.org/x/sync/errgroup"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/inventory/internal/app"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

// benchConcurrency is how many deliveries the service's subscriber hands
// to its handlers at once (ORDERMESH_CONCURRENCY's default).
const benchConcurrency = 32

// BenchmarkOrderEvents measures the inventory's event handling as the
// service wires it (the inbox's batch runner and the app's handler),
// without the broker: benchConcurrency goroutines play the subscriber's
// handlers, and each op is one order of one unit of a single stocked
// product, handled as order.created and then order.confirmed — the fault
// suite's hot product. The latency sub-benchmarks put a TCP proxy adding
// that much per direction between the runner and PostgreSQL, as the fault
// suite's TestWorkerKill does. It reports deliveries/s, round trips per
// delivery (a statement, or a pipelined batch of them, is one) and
// deliveries per transaction. Run with a fixed count, e.g.
//
//	go test -run '^$' -bench OrderEvents -benchtime 2000x ./services/inventory/internal/app/
func BenchmarkOrderEvents(b *testing.B) {
	for _, latency := range []time.Duration{0, 5 * time.Millisecond} {
		b.Run(fmt.Sprintf("latency=%v", latency), func(b *testing.B) {
			benchOrderEvents(b, latency)
		})
	}
}

func benchOrderEvents(b *testing.B, latency time.Duration) {
	ctx := context.Background()
	direct, schema := postgrestest.NewSchema(b, store.Migrations, outbox.Migrations, inbox.Migrations)
	const product = "BENCH-HOT"
	if _, err := store.SetStock(ctx, direct, product, int64(b.N)); err != nil {
		b.Fatal(err)
	}
	var trips roundTrips
	pool := openThrough(b, schema, latency, &trips)
	a := app.New(pool, quiet)
	handle := wireHandlers(a, inbox.NewRunner(pool, app.Source, inbox.Metrics{}))

	orders := make(chan int)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(orders)
		for i := range b.N {
			select {
			case orders <- i:
			case <-gctx.Done():
				return gctx.Err()
			}
		}
		return nil
	})
	trips.n.Store(0)
	b.ResetTimer()
	start := time.Now()
	for range benchConcurrency {
		g.Go(func() error {
			for range orders {
				id := uuid.NewString()
				if err := handle.created(gctx, created(id, line(product, 1)), benchMeta(id, "order.created")); err != nil {
					return err
				}
				if err := handle.confirmed(gctx, confirmed(id), benchMeta(id, "order.confirmed")); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		b.Fatal(err)
	}
	elapsed := time.Since(start)
	b.StopTimer()

	deliveries := 2 * float64(b.N)
	b.ReportMetric(deliveries/elapsed.Seconds(), "deliveries/s")
	b.ReportMetric(float64(trips.n.Load())/deliveries, "roundtrips/delivery")
	if txs, _ := handle.stats(); txs > 0 {
		b.ReportMetric(deliveries/float64(txs), "deliveries/tx")
	}
	l, err := store.GetStock(ctx, direct, product)
	if err != nil {
		b.Fatal(err)
	}
	if l.Available != 0 || l.Reserved != 0 {
		b.Fatalf("stock after %d confirmed orders of %d units: %+v, want none available or reserved", b.N, b.N, l)
	}
}

// benchHandlers are the service's handlers of the benchmarked events.
type benchHandlers struct {
	created   func(context.Context, *orderv1.OrderCreated, eventbus.Meta) error
	confirmed func(context.Context, *orderv1.OrderConfirmed, eventbus.Meta) error
	// stats returns how many transactions carried how many deliveries.
	stats func() (transactions, deliveries int64)
}

// wireHandlers wires a's handlers to runner as main.go does.
func wireHandlers(a *app.App, runner *inbox.Runner) benchHandlers {
	b := inbox.NewBatchRunner(runner, a.Handle, benchConcurrency, time.Minute)
	return benchHandlers{
		created:   inbox.WrapBatch[*orderv1.OrderCreated](b),
		confirmed: inbox.WrapBatch[*orderv1.OrderConfirmed](b),
		stats:     b.Stats,
	}
}

func benchMeta(orderID, key string) eventbus.Meta {
	return eventbus.Meta{ID: uuid.NewString(), Type: key, RoutingKey: key, CorrelationID: orderID, Attempt: 1}
}

// openThrough opens a pool on schema whose connections pass through a
// proxy adding latency per direction (none when latency is 0) and counts
// their round trips in trips.
func openThrough(b *testing.B, schema string, latency time.Duration, trips *roundTrips) *pgxpool.Pool {
	b.Helper()
	dbURL := postgrestest.URL()
	if latency > 0 {
		u, err := url.Parse(dbURL)
		if err != nil {
			b.Fatal(err)
		}
		p := toxiproxy.NewProxy(toxiproxy.NewServer(toxiproxy.NewMetricsContainer(nil), zerolog.Nop()), "postgres", "127.0.0.1:0", u.Host)
		if err := p.Start(); err != nil {
			b.Fatalf("start proxy: %v", err)
		}
		b.Cleanup(p.Stop)
		for _, stream := range []string{"upstream", "downstream"} {
			toxic := fmt.Sprintf(`{"type":"latency","stream":%q,"attributes":{"latency":%d}}`, stream, latency.Milliseconds())
			if _, err := p.Toxics.AddToxicJson(strings.NewReader(toxic)); err != nil {
				b.Fatalf("add latency: %v", err)
			}
		}
		u.Host = p.Listen
		dbURL = u.String()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	pool, err := postgres.Open(ctx, dbURL, schema, postgres.WithApplicationName("ordermesh-bench-"+schema),
		func(c *pgxpool.Config) { c.ConnConfig.Tracer = trips })
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(pool.Close)
	return pool
}

// roundTrips counts the statements and pipelined batches sent: each is
// one round trip to the server.
type roundTrips struct{ n atomic.Int64 }

func (r *roundTrips) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	r.n.Add(1)
	return ctx
}

func (r *roundTrips) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (r *roundTrips) TraceBatchStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceBatchStartData) context.Context {
	r.n.Add(1)
	return ctx
}

func (r *roundTrips) TraceBatchQuery(context.Context, *pgx.Conn, pgx.TraceBatchQueryData) {}

func (r *roundTrips) TraceBatchEnd(context.Context, *pgx.Conn, pgx.TraceBatchEndData) {}
