package app_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/jackc/pgx/v5"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// BenchmarkCreate measures App.Create, group commit included, from the
// given number of concurrent callers, without the gRPC stack: what
// CreateOrder's database path alone sustains. ns/op is per order.
func BenchmarkCreate(b *testing.B) {
	for _, clients := range []int{1, 8, 50} {
		b.Run(fmt.Sprintf("clients=%d", clients), func(b *testing.B) {
			pool, schema := postgrestest.NewSchema(b, store.Migrations, outbox.Migrations)
			a := app.New(pool, store.NewWatcher(pool.Config().ConnConfig, schema, quiet), quiet, nil)
			ctx := context.Background()
			var next atomic.Int64
			var failed atomic.Value
			var wg sync.WaitGroup
			b.ResetTimer()
			for range clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for next.Add(1) <= int64(b.N) {
						if _, err := a.Create(ctx, request()); err != nil {
							failed.CompareAndSwap(nil, err)
							return
						}
					}
				}()
			}
			wg.Wait()
			b.StopTimer()
			if err, _ := failed.Load().(error); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "orders/s")
		})
	}
}

// BenchmarkHandleOutcomes measures App.Handle applying stock.reserved and
// payment.succeeded to batches of 20 orders (40 events a transaction, as
// the inbox runner hands them over under load), confirming each order:
// the order service's share of the saga without the bus. ns/op is per
// order.
func BenchmarkHandleOutcomes(b *testing.B) {
	const batchOrders = 20
	pool, schema := postgrestest.NewSchema(b, store.Migrations, outbox.Migrations)
	a := app.New(pool, store.NewWatcher(pool.Config().ConnConfig, schema, quiet), quiet, nil)
	ctx := context.Background()
	// The orders, placed by 50 concurrent callers (group commit).
	ids := make([]string, b.N)
	var next atomic.Int64
	var failed atomic.Value
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			for i := next.Add(1) - 1; i < int64(b.N); i = next.Add(1) - 1 {
				o, err := a.Create(ctx, request())
				if err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				ids[i] = o.ID
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for start := 0; start < b.N; start += batchOrders {
		b.StopTimer()
		var batch []inbox.Delivery
		for _, id := range ids[start:min(start+batchOrders, b.N)] {
			batch = append(batch,
				delivery(b, &inventoryv1.StockReserved{OrderId: id}),
				delivery(b, &paymentv1.PaymentSucceeded{OrderId: id, PaymentId: "ch_" + id[:8]}))
		}
		b.StartTimer()
		if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
			return handleAllOK(ctx, fixture{app: a, pool: pool, schema: schema}, tx, batch)
		}); err != nil {
			b.Fatal(err)
		}
	}
}
