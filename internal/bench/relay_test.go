package bench

import (
	"context"
	"io"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres"
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

// TestLagBench measures briefly against the real servers and checks that
// every event of every kind is accounted for and that Close removes the
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

	const rate, rounds, n = 200, 2, 200 // 100 events a round
	var lines int
	lag, err := b.Measure(ctx, rate, time.Second, rounds, outbox.DefaultPollInterval, func(string, ...any) { lines++ })
	if err != nil {
		t.Fatalf("Measure: %v", err)
	}
	if lag.Rounds != rounds || lag.Duration != time.Second || len(lag.Diagnostics) != 1 || lines != 3*rounds {
		t.Errorf("Measure: %d rounds of %v, %d diagnostics, %d round lines; want %d, 1s, 1, %d", lag.Rounds, lag.Duration, len(lag.Diagnostics), lines, rounds, 3*rounds)
	}
	relays := map[string]LagRun{"relay": lag.Relay}
	for _, d := range lag.Diagnostics {
		relays[d.Name] = d.Run
	}
	for name, r := range relays {
		if r.Lag.Count != n || r.ToPublish.Count != n || r.Commit.Count != n {
			t.Errorf("%s: counted %d lags, %d publish calls, %d commits; want %d each", name, r.Lag.Count, r.ToPublish.Count, r.Commit.Count, n)
		}
		// The mean times the count gives back the total only up to
		// floating-point rounding (200/195*195 < 200).
		if r.Batches == 0 || math.Round(r.MeanBatch*float64(r.Batches)) < n || r.MaxBatch < 1 || r.Publish.Count != r.Batches {
			t.Errorf("%s: %d batches of %.1f on average (max %d), %d durations, for %d events", name, r.Batches, r.MeanBatch, r.MaxBatch, r.Publish.Count, n)
		}
		if r.Target != rate || r.Rate <= 0 {
			t.Errorf("%s: target %v, rate %v", name, r.Target, r.Rate)
		}
	}
	if got, want := lag.Relay.Between.Count, lag.Relay.Batches-rounds; got != want {
		t.Errorf("relay: %d gaps between Publish calls, want %d (batches − rounds)", got, want)
	}
	if d := lag.Diagnostics[0].Run; d.Between.Count != 0 {
		t.Errorf("relay with %d workers: %d gaps between Publish calls, want none (calls overlap)", diagWorkers, d.Between.Count)
	}
	if raw := lag.Raw; raw.Lag.Count != n || raw.ToPublish.Count != n || raw.Batches != 0 || raw.Target != rate {
		t.Errorf("raw: counted %d lags, %d publishes, %d relay batches, target %v; want %d, %d, 0, %d", raw.Lag.Count, raw.ToPublish.Count, raw.Batches, raw.Target, n, n, rate)
	}
	var left int
	if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("outbox after the runs holds %d rows, want 0", left)
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
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := ch.ExchangeDeclarePassive(b.cfg.ExchangeName(), amqp.ExchangeTopic, true, false, false, false, nil); err == nil {
		_ = ch.Close()
		t.Errorf("exchange %s still exists after Close", b.cfg.ExchangeName())
	}
}

// TestWaitDrained checks that WaitDrained waits for ready messages in the
// service and retry queues and for outbox rows, names them when it gives
// up, and ignores the dead-letter queue.
func TestWaitDrained(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	id := testID(t)
	admin := postgrestest.URL()
	p := &Platform{Prefix: "bench-" + id + ".", Database: "bench_" + id, AMQPURL: platformtest.AMQPURL(),
		Procs: map[string]*Proc{"order": {Name: "order"}}, adminURL: admin, retryDelays: "1s"}
	dbURL, err := databaseURL(admin, p.Database)
	if err != nil {
		t.Fatal(err)
	}
	p.DatabaseURL = dbURL
	if err := postgres.CreateDatabaseIfMissing(ctx, dbURL); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dropDatabase(admin, p.Database); err != nil {
			t.Error(err)
		}
	})
	pool, err := postgres.Open(ctx, dbURL, "order")
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := postgres.Migrate(ctx, pool, "order", outbox.Migrations); err != nil {
		t.Fatal(err)
	}

	conn, err := amqp.Dial(p.AMQPURL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	t.Cleanup(func() {
		if err := deleteTopology(p.AMQPURL, p.Prefix, []string{"order"}, p.retryDelays); err != nil {
			t.Error(err)
		}
	})
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	defer ch.Close()
	cfg := eventbus.Config{Prefix: p.Prefix, Service: "order"}
	if err := ch.ExchangeDeclare(cfg.ExchangeName(), amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{cfg.QueueName(), cfg.RetryQueueName(time.Second), cfg.DLQName()} {
		if _, err := ch.QueueDeclare(q, false, false, false, false, nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	publish := func(q string) {
		t.Helper()
		dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, "", q, true, false, amqp.Publishing{Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		if ok, err := dc.WaitContext(ctx); err != nil || !ok {
			t.Fatalf("publish to %s: confirmed %v, %v", q, ok, err)
		}
	}
	// A dead letter stays; it must not hold the wait up.
	publish(cfg.DLQName())
	d, err := p.WaitDrained(ctx, 10*time.Second)
	if err != nil {
		t.Fatalf("WaitDrained with only a dead letter: %v", err)
	}
	if d.Initial != nil {
		t.Errorf("WaitDrained with only a dead letter: found %q left", d.Initial)
	}

	publish(cfg.RetryQueueName(time.Second))
	if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		m, err := orderCreated()
		if err != nil {
			return err
		}
		return outbox.Add(ctx, tx, m)
	}); err != nil {
		t.Fatal(err)
	}
	d, err = p.WaitDrained(ctx, 500*time.Millisecond)
	if err == nil {
		t.Fatal("WaitDrained with a queued message and an outbox row: no error")
	}
	left := []string{"queue " + cfg.RetryQueueName(time.Second) + ": 1 ready", "order outbox: 1 rows", "queue " + cfg.DLQName() + ": 1 dead letters"}
	for _, want := range left {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("WaitDrained error %q does not say %q", err, want)
		}
	}
	if diff := cmp.Diff(left, d.Initial); diff != "" {
		t.Errorf("WaitDrained first poll (-want +got):\n%s", diff)
	}

	if _, err := ch.QueuePurge(cfg.RetryQueueName(time.Second), false); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, "DELETE FROM outbox"); err != nil {
		t.Fatal(err)
	}
	if _, err := p.WaitDrained(ctx, 10*time.Second); err != nil {
		t.Fatalf("WaitDrained after emptying: %v", err)
	}
}
