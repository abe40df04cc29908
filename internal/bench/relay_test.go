package bench

import (
	"context"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

func testID(t *testing.T) string {
	t.Helper()
	id, err := randomID()
	if err != nil {
		t.Fatal(err)
	}
	return "t" + id
}

// TestLagBench runs both lag runs briefly against the real servers and
// checks that every event is accounted for and that Close removes the
// database and the topology. It asserts no timing.
func TestLagBench(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := testID(t)
	b, err := NewLagBench(ctx, postgrestest.URL(), platformtest.AMQPURL(), id, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	defer func() {
		if !closed {
			_ = b.Close()
		}
	}()

	const rate, n = 200, 200
	relay, err := b.Relay(ctx, rate, time.Second, outbox.DefaultPollInterval)
	if err != nil {
		t.Fatalf("Relay: %v", err)
	}
	if relay.Lag.Count != n || relay.ToPublish.Count != n || relay.Commit.Count != n {
		t.Errorf("relay run counted %d lags, %d publish calls, %d commits; want %d each", relay.Lag.Count, relay.ToPublish.Count, relay.Commit.Count, n)
	}
	if relay.Batches == 0 || relay.MeanBatch*float64(relay.Batches) < n || relay.MaxBatch < 1 {
		t.Errorf("relay run: %d batches of %.1f on average (max %d) cannot carry %d events", relay.Batches, relay.MeanBatch, relay.MaxBatch, n)
	}
	if relay.Target != rate || relay.Rate <= 0 {
		t.Errorf("relay run: target %v, rate %v", relay.Target, relay.Rate)
	}

	raw, err := b.Raw(ctx, rate, time.Second)
	if err != nil {
		t.Fatalf("Raw: %v", err)
	}
	if raw.Lag.Count != n || raw.ToPublish.Count != n || raw.Batches != 0 {
		t.Errorf("raw run counted %d lags, %d publishes, %d relay batches; want %d, %d, 0", raw.Lag.Count, raw.ToPublish.Count, raw.Batches, n, n)
	}
	var left int
	if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("outbox after the raw run holds %d rows, want 0", left)
	}

	closed = true
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	admin, err := pgx.Connect(ctx, postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	var exists bool
	if err := admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)", b.database).Scan(&exists); err != nil {
		t.Fatal(err)
	}
	if exists {
		t.Errorf("database %s still exists after Close", b.database)
	}
	conn, err := amqp.Dial(platformtest.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if _, err := readyMessages(conn, b.queue); err == nil {
		t.Errorf("queue %s still exists after Close", b.queue)
	}
}
