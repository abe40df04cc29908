package bench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

// rawOrders is the order service's orders table (its migration 001,
// without the notification trigger, which fires on updates only); the
// outbox is the platform's own, made by its migrations (outbox.Migrations).
// The raw ceiling writes one row into each per transaction.
const rawOrders = `
CREATE TABLE orders (
    seq               bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                uuid        PRIMARY KEY,
    request_id        uuid        NOT NULL UNIQUE,
    customer_email    text        NOT NULL,
    items             jsonb       NOT NULL,
    total_currency    text        NOT NULL,
    total_units       bigint      NOT NULL,
    total_nanos       integer     NOT NULL,
    payment_token     text        NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    status_reason     text        NOT NULL DEFAULT '',
    stock_reserved    boolean     NOT NULL DEFAULT false,
    payment_succeeded boolean     NOT NULL DEFAULT false,
    payment_id        text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL
);
CREATE INDEX orders_customer_seq ON orders (customer_email, seq DESC);
CREATE INDEX orders_status_seq ON orders (status, seq DESC);`

// RawPG is the raw PostgreSQL ceiling for CreateOrder: plain pgx
// transactions that insert an order row and an outbox row and commit, each
// sent in one round trip (BEGIN, the inserts and COMMIT pipelined), the
// least a client can make of the same durable work.
type RawPG struct {
	url    string
	schema string
}

// NewRawPG creates schema in the database at url with the raw tables.
// Close drops the schema.
// Connections are opened only while Run runs, so the benchmark holds few
// of the server's connections (which other users share) at a time.
func NewRawPG(ctx context.Context, url, schema string) (*RawPG, error) {
	admin, err := pgx.Connect(ctx, url)
	if err != nil {
		return nil, fmt.Errorf("connect: %w", err)
	}
	defer admin.Close(ctx)
	if _, err := admin.Exec(ctx, "CREATE SCHEMA "+pgx.Identifier{schema}.Sanitize()); err != nil {
		return nil, fmt.Errorf("create schema %s: %w", schema, err)
	}
	r := &RawPG{url: url, schema: schema}
	if _, err := admin.Exec(ctx, "SET search_path TO "+pgx.Identifier{schema}.Sanitize()+";"+rawOrders); err != nil {
		return nil, errors.Join(fmt.Errorf("create raw tables: %w", err), r.Close(ctx))
	}
	if err := postgres.Migrate(ctx, admin, schema, outbox.Migrations); err != nil {
		return nil, errors.Join(fmt.Errorf("create raw outbox: %w", err), r.Close(ctx))
	}
	return r, nil
}

// Close drops the schema.
func (r *RawPG) Close(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, r.url)
	if err != nil {
		return fmt.Errorf("drop schema %s: %w", r.schema, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{r.schema}.Sanitize()+" CASCADE"); err != nil {
		return fmt.Errorf("drop schema %s: %w", r.schema, err)
	}
	return nil
}

// Run opens conns connections, then runs clients goroutines, each
// committing one transaction after another for d, and returns committed
// transactions per second and how many committed; connecting is not
// timed. When window is not nil, Run calls it once the connections are
// open and the function it returns with the count once the clients are
// done, before it closes the connections: the CPU window of the trial,
// which must see the backends alive at both ends (a backend that exits
// within it takes its CPU time out of every process's count).
func (r *RawPG) Run(ctx context.Context, clients, conns int, d time.Duration, window func() (end func(ops int64))) (float64, int64, error) {
	pool, err := postgres.Open(ctx, r.url, r.schema, postgres.WithMaxConns(int32(conns)), postgres.WithMinConns(int32(conns)),
		postgres.WithApplicationName("ordermesh-bench-raw"))
	if err != nil {
		return 0, 0, fmt.Errorf("open raw pool: %w", err)
	}
	defer pool.Close()
	// Open every connection before the clock starts.
	held := make([]*pgxpool.Conn, 0, conns)
	for range conns {
		c, err := pool.Acquire(ctx)
		if err != nil {
			for _, h := range held {
				h.Release()
			}
			return 0, 0, fmt.Errorf("open raw connection: %w", err)
		}
		held = append(held, c)
	}
	for _, h := range held {
		h.Release()
	}

	body := make([]byte, 160)
	_, _ = rand.Read(body)
	items, err := json.Marshal([]map[string]any{{"product_id": "RAW-1", "quantity": 1, "currency_code": "EUR", "units": 9, "nanos": 990000000}})
	if err != nil {
		return 0, 0, err
	}
	var done atomic.Int64
	var firstErr error
	var once sync.Once
	endWindow := func(int64) {}
	if window != nil {
		endWindow = window()
	}
	start := time.Now()
	end := start.Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(end) {
				if err := insert(ctx, pool, items, body); err != nil {
					once.Do(func() { firstErr = err })
					return
				}
				done.Add(1)
			}
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	endWindow(done.Load())
	if firstErr != nil {
		return 0, 0, firstErr
	}
	return float64(done.Load()) / elapsed.Seconds(), done.Load(), nil
}

// insert commits one order row and its outbox row, sent as one batch:
// BEGIN, both inserts and COMMIT in one round trip, as the order service
// pipelines its own. The customer is one of a thousand, as the load
// generator's are.
func insert(ctx context.Context, pool *pgxpool.Pool, items, body []byte) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	conn, err := pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("acquire: %w", err)
	}
	defer conn.Release()
	b := &pgx.Batch{}
	b.Queue(`BEGIN`)
	b.Queue(`
		INSERT INTO orders (id, request_id, customer_email, items, total_currency, total_units, total_nanos,
			payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id, create_time, update_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		id, uuid.New(), fmt.Sprintf("raw-%03d@example.com", mrand.IntN(1000)), items, "EUR", int64(9), int32(990000000),
		"tok_visa", "PENDING", "", false, false, "", now, now)
	b.Queue(`
		INSERT INTO outbox (id, type, routing_key, source, correlation_id, event_time, body)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		uuid.NewString(), "ordermesh.order.v1.OrderCreated", "order.created", "order", id.String(), now, body)
	b.Queue(`COMMIT`).Exec(func(tag pgconn.CommandTag) error {
		if tag.String() != "COMMIT" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	})
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		// A failed statement leaves the transaction aborted; the
		// connection goes back to the pool only once it is rolled back.
		postgres.RollbackConn(ctx, conn)
		return fmt.Errorf("insert order and outbox row: %w", err)
	}
	return nil
}
