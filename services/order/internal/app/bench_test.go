package app_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/ordermesh/ordermesh/internal/outbox"
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
			a := app.New(pool, store.NewWatcher(postgrestest.URL(), schema, quiet), quiet, nil)
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
