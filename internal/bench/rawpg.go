package bench

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

// rawSchema has the order service's orders table and the outbox table:
// the raw ceiling writes one row into each per transaction.
const rawSchema = `
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
    status            text        NOT NULL,
    status_reason     text        NOT NULL DEFAULT '',
    stock_reserved    boolean     NOT NULL DEFAULT false,
    payment_succeeded boolean     NOT NULL DEFAULT false,
    payment_id        text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL
);
CREATE INDEX orders_customer_seq ON orders (customer_email, seq DESC);
CREATE INDEX orders_status_seq ON orders (status, seq DESC);
CREATE TABLE outbox (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text        NOT NULL,
    type           text        NOT NULL,
    routing_key    text        NOT NULL,
    source         text        NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    event_time     timestamptz NOT NULL,
    trace_parent   text        NOT NULL DEFAULT '',
    trace_state    text        NOT NULL DEFAULT '',
    body           bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);`

// RawPG is the raw PostgreSQL ceiling for CreateOrder: plain pgx
// transactions that insert an order row and an outbox row and commit.
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
	if _, err := admin.Exec(ctx, "SET search_path TO "+pgx.Identifier{schema}.Sanitize()+";"+rawSchema); err != nil {
		return nil, fmt.Errorf("create raw tables: %w", err)
	}
	return &RawPG{url: url, schema: schema}, nil
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

func insert(ctx context.Context, pool *pgxpool.Pool, items, body []byte) error {
	id, err := uuid.NewV7()
	if err != nil {
		return err
	}
	now := time.Now().UTC()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, `
		INSERT INTO orders (id, request_id, customer_email, items, total_currency, total_units, total_nanos,
			payment_token, status, status_reason, stock_reserved, payment_succeeded, payment_id, create_time, update_time)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)`,
		id, uuid.New(), "raw@example.com", items, "EUR", int64(9), int32(990000000), "tok_visa", "PENDING", "",
		false, false, "", now, now); err != nil {
		return fmt.Errorf("insert order: %w", err)
	}
	if _, err := tx.Exec(ctx, `
		INSERT INTO outbox (id, type, routing_key, source, correlation_id, event_time, body)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		uuid.NewString(), "ordermesh.order.v1.OrderCreated", "order.created", "order", id.String(), now, body); err != nil {
		return fmt.Errorf("insert outbox row: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
