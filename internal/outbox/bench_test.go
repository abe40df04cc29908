package outbox_test

import (
	"context"
	"fmt"
	"testing"
	"testing/fstest"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// rawTable has the outbox's shape: the baseline for BenchmarkAddCommit.
var rawTable = postgres.Source{Name: "bench", FS: fstest.MapFS{
	"001_raw.sql": {Data: []byte(`
		CREATE TABLE raw_events (
			seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
			id text NOT NULL, type text NOT NULL, routing_key text NOT NULL, source text NOT NULL,
			correlation_id text NOT NULL, event_time timestamptz NOT NULL,
			trace_parent text NOT NULL, trace_state text NOT NULL, body bytea NOT NULL,
			created_at timestamptz NOT NULL DEFAULT now());`)},
}}

// BenchmarkAddCommit measures a transaction that writes events with
// outbox.Add and commits, beside the same rows written with plain INSERTs
// into a trigger-less table of the same shape. ns/op is per transaction.
func BenchmarkAddCommit(b *testing.B) {
	ctx := context.Background()
	pool, _ := postgrestest.NewSchema(b, outbox.Migrations, rawTable)
	for _, perTx := range []int{1, 10} {
		msgs := make([]eventbus.Message, perTx)
		for i := range msgs {
			msgs[i] = event(b, i)
		}
		b.Run(fmt.Sprintf("outbox/events=%d", perTx), func(b *testing.B) {
			for b.Loop() {
				err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error { return outbox.Add(ctx, tx, msgs...) })
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*perTx)/b.Elapsed().Seconds(), "events/s")
		})
		b.Run(fmt.Sprintf("raw/events=%d", perTx), func(b *testing.B) {
			for b.Loop() {
				err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
					for _, m := range msgs {
						if _, err := tx.Exec(ctx, `
							INSERT INTO raw_events (id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body)
							VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
							m.ID, m.Type, m.RoutingKey, m.Source, m.CorrelationID, m.Time, m.TraceParent, m.TraceState, m.Body); err != nil {
							return err
						}
					}
					return nil
				})
				if err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.N*perTx)/b.Elapsed().Seconds(), "events/s")
		})
	}
	// Eight writers at once: anything that serialised commits (a NOTIFY
	// on commit, as the outbox once sent, takes a lock shared by the whole
	// cluster) would show here.
	msg := event(b, 0)
	b.Run("outbox/parallel=8", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error { return outbox.Add(ctx, tx, msg) }); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
	b.Run("raw/parallel=8", func(b *testing.B) {
		b.SetParallelism(8)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
					_, err := tx.Exec(ctx, `
						INSERT INTO raw_events (id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body)
						VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`,
						msg.ID, msg.Type, msg.RoutingKey, msg.Source, msg.CorrelationID, msg.Time, msg.TraceParent, msg.TraceState, msg.Body)
					return err
				})
				if err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	})
}

// BenchmarkRelay measures how fast a running relay moves a committed
// backlog of b.N events to the broker: from the moment it starts until every
// row is confirmed and deleted and every message has reached the test
// queue.
func BenchmarkRelay(b *testing.B) {
	for _, workers := range []int{1, 4} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			ctx := context.Background()
			pool, _ := postgrestest.NewSchema(b, outbox.Migrations)
			bk := newBroker(b)
			pub := bk.upPublisher(b)
			var ids []string
			for len(ids) < b.N {
				n := min(500, b.N-len(ids))
				msgs := make([]eventbus.Message, n)
				for i := range msgs {
					msgs[i] = event(b, i)
					ids = append(ids, msgs[i].ID)
				}
				if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error { return outbox.Add(ctx, tx, msgs...) }); err != nil {
					b.Fatal(err)
				}
			}
			relay := outbox.NewRelay(pool, pub, outbox.Config{Workers: workers, BatchSize: 100})

			b.ResetTimer()
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan error, 1)
			go func() { done <- relay.Run(runCtx) }()
			waitEmpty(b, pool, 5*time.Minute)
			bk.waitFor(b, time.Minute, ids...)
			b.StopTimer()
			cancel()
			if err := <-done; err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
		})
	}
}
