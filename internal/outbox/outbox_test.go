package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

func newOutbox(tb testing.TB) (*pgxpool.Pool, string) {
	tb.Helper()
	return postgrestest.NewSchema(tb, outbox.Migrations)
}

// event returns a small, valid event and its encoded message.
func event(tb testing.TB, n int) eventbus.Message {
	tb.Helper()
	orderID := uuid.NewString()
	m, err := eventbus.NewMessage(&orderv1.OrderCancelled{
		OrderId:       orderID,
		CustomerEmail: "buyer@example.com",
		Reason:        fmt.Sprintf("test %d", n),
	}, testService, orderID)
	if err != nil {
		tb.Fatal(err)
	}
	return m
}

// commit writes n events in one transaction and returns their ids.
func commit(tb testing.TB, pool *pgxpool.Pool, n int) []string {
	tb.Helper()
	ids, err := tryCommit(pool, n)
	if err != nil {
		tb.Fatal(err)
	}
	return ids
}

// tryCommit is commit for goroutines other than the test's.
func tryCommit(pool *pgxpool.Pool, n int) ([]string, error) {
	msgs := make([]eventbus.Message, n)
	ids := make([]string, n)
	for i := range msgs {
		orderID := uuid.NewString()
		m, err := eventbus.NewMessage(&orderv1.OrderCancelled{OrderId: orderID, Reason: fmt.Sprintf("test %d", i)}, testService, orderID)
		if err != nil {
			return nil, err
		}
		msgs[i], ids[i] = m, m.ID
	}
	err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		return outbox.Add(context.Background(), tx, msgs...)
	})
	if err != nil {
		return nil, fmt.Errorf("commit outbox rows: %w", err)
	}
	return ids, nil
}

func pending(tb testing.TB, pool *pgxpool.Pool) int64 {
	tb.Helper()
	s, err := outbox.ReadStats(context.Background(), pool)
	if err != nil {
		tb.Fatal(err)
	}
	return s.Pending
}

// runRelay runs r until the test ends and fails the test if Run errs.
func runRelay(tb testing.TB, r *outbox.Relay) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			tb.Errorf("Relay.Run: %v", err)
		}
	})
}

// waitEmpty waits until the outbox has no rows.
func waitEmpty(tb testing.TB, pool *pgxpool.Pool, timeout time.Duration) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		empty, err := outbox.Empty(context.Background(), pool)
		if err != nil {
			tb.Fatal(err)
		}
		if empty {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("outbox still has %d rows after %s", pending(tb, pool), timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestAddRejectsIncompleteMessages(t *testing.T) {
	pool, _ := newOutbox(t)
	tests := []struct {
		name   string
		modify func(*eventbus.Message)
		want   string
	}{
		{"missing id", func(m *eventbus.Message) { m.ID = "" }, "missing id"},
		{"missing type", func(m *eventbus.Message) { m.Type = "" }, "missing type"},
		{"missing routing key", func(m *eventbus.Message) { m.RoutingKey = "" }, "missing routing key"},
		{"missing source", func(m *eventbus.Message) { m.Source = "" }, "missing source"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			good, bad := event(t, 1), event(t, 2)
			tt.modify(&bad)
			err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
				return outbox.Add(context.Background(), tx, good, bad)
			})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Add = %v, want an error containing %q", err, tt.want)
			}
			if n := pending(t, pool); n != 0 {
				t.Errorf("outbox has %d rows after a rejected Add, want 0", n)
			}
		})
	}
}

func TestAddStoresEverythingInOrder(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	a, b := event(t, 1), event(t, 2)
	a.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	a.TraceState = "vendor=1"
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		if err := outbox.Add(ctx, tx, a, b); err != nil {
			return err
		}
		return outbox.AddEvents(ctx, tx, "other", "corr-1", &orderv1.OrderRejected{OrderId: uuid.NewString(), Reason: "x"})
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state, body FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (eventbus.Message, error) {
		var m eventbus.Message
		err := r.Scan(&m.ID, &m.Type, &m.RoutingKey, &m.Source, &m.CorrelationID, &m.Time, &m.TraceParent, &m.TraceState, &m.Body)
		m.Time = m.Time.UTC()
		return m, err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 {
		t.Fatalf("outbox has %d rows, want 3", len(got))
	}
	// PostgreSQL keeps microseconds.
	a.Time, b.Time = a.Time.Truncate(time.Microsecond), b.Time.Truncate(time.Microsecond)
	if diff := cmp.Diff([]eventbus.Message{a, b}, got[:2]); diff != "" {
		t.Errorf("stored messages (-want +got):\n%s", diff)
	}
	third := got[2]
	if third.Source != "other" || third.CorrelationID != "corr-1" || third.RoutingKey != "order.rejected" || third.Type != "ordermesh.order.v1.OrderRejected" {
		t.Errorf("AddEvents row = %+v", third.Meta)
	}
}

func TestQueueWritesWithTheBatchAndRejectsIncompleteMessages(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	bad := event(t, 3)
	bad.RoutingKey = ""
	if err := outbox.Queue(&pgx.Batch{}, event(t, 1), bad); err == nil || !strings.Contains(err.Error(), "missing routing key") {
		t.Fatalf("Queue with an incomplete message = %v, want an error naming it", err)
	}
	a, b := event(t, 1), event(t, 2)
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		batch := &pgx.Batch{}
		batch.Queue(`SELECT 1`)
		if err := outbox.Queue(batch, a, b); err != nil {
			return err
		}
		return tx.SendBatch(ctx, batch).Close()
	})
	if err != nil {
		t.Fatal(err)
	}
	rows, err := pool.Query(ctx, `SELECT id FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{a.ID, b.ID}, ids); diff != "" {
		t.Errorf("outbox ids (-want +got):\n%s", diff)
	}
}

func TestReadStatsAndEmpty(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	if empty, err := outbox.Empty(ctx, pool); err != nil || !empty {
		t.Fatalf("Empty on a new outbox = %v, %v", empty, err)
	}
	if s, err := outbox.ReadStats(ctx, pool); err != nil || s != (outbox.Stats{}) {
		t.Fatalf("ReadStats on a new outbox = %+v, %v", s, err)
	}
	commit(t, pool, 3)
	time.Sleep(50 * time.Millisecond)
	s, err := outbox.ReadStats(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pending != 3 || s.OldestAge < 50*time.Millisecond || s.OldestAge > time.Minute {
		t.Errorf("ReadStats = %+v, want 3 pending at least 50ms old", s)
	}
	if empty, err := outbox.Empty(ctx, pool); err != nil || empty {
		t.Errorf("Empty with 3 rows = %v, %v", empty, err)
	}
}

// TestOldestWaitingCountsRefusedRows: the oldest event not yet published
// may be one the broker refused, waiting in outbox_deferred.
func TestOldestWaitingCountsRefusedRows(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	if age, err := outbox.OldestWaiting(ctx, pool); err != nil || age != 0 {
		t.Fatalf("OldestWaiting on a new outbox = %v, %v; want 0", age, err)
	}
	commit(t, pool, 2)
	if _, err := pool.Exec(ctx, `UPDATE outbox SET created_at = now() - interval '1 minute'`); err != nil {
		t.Fatal(err)
	}
	if age, err := outbox.OldestWaiting(ctx, pool); err != nil || age < time.Minute || age > 2*time.Minute {
		t.Fatalf("OldestWaiting with rows a minute old = %v, %v; want a minute", age, err)
	}
	// The older row was refused an hour ago; the other is published.
	if _, err := pool.Exec(ctx, `
		WITH moved AS (DELETE FROM outbox WHERE seq = (SELECT min(seq) FROM outbox)
			RETURNING seq, id, type, routing_key, source, event_time, body)
		INSERT INTO outbox_deferred (seq, id, type, routing_key, source, event_time, body, created_at, attempts, next_attempt_at)
		SELECT seq, id, type, routing_key, source, event_time, body, now() - interval '1 hour', 5, now() FROM moved`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
		t.Fatal(err)
	}
	if age, err := outbox.OldestWaiting(ctx, pool); err != nil || age < time.Hour || age > time.Hour+time.Minute {
		t.Fatalf("OldestWaiting with a row refused an hour ago = %v, %v; want an hour", age, err)
	}
}

func TestRelayPublishesOnWakeBeforePoll(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	// The relay polls at start, then not for an hour: only Wake can have it
	// publish a row committed after that first poll.
	relay := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{PollInterval: time.Hour})
	// The first poll publishes a row committed before the start; once the
	// outbox is empty again that poll is over.
	first := commit(t, pool, 1)
	runRelay(t, relay)
	bk.waitFor(t, 30*time.Second, first...)
	waitEmpty(t, pool, 30*time.Second)

	msg := event(t, 1)
	msg.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	committed := time.Now()
	if err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		return outbox.Add(context.Background(), tx, msg)
	}); err != nil {
		t.Fatal(err)
	}
	relay.Wake()
	bk.waitFor(t, 30*time.Second, msg.ID)
	t.Logf("commit to delivery: %s (poll interval 1h)", bk.firstArrival(msg.ID).Sub(committed))

	d, _ := bk.lastDelivery(msg.ID)
	got := struct{ ID, Type, Key, AppID, Corr, CT, TraceParent string }{
		d.MessageId, d.Type, d.RoutingKey, d.AppId, d.CorrelationId, d.ContentType, fmt.Sprint(d.Headers["traceparent"]),
	}
	want := struct{ ID, Type, Key, AppID, Corr, CT, TraceParent string }{
		msg.ID, msg.Type, msg.RoutingKey, msg.Source, msg.CorrelationID, eventbus.ContentType, msg.TraceParent,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delivery properties (-want +got):\n%s", diff)
	}
	var body orderv1.OrderCancelled
	if err := proto.Unmarshal(d.Body, &body); err != nil || body.GetReason() != "test 1" {
		t.Errorf("delivered body = %v, %v", &body, err)
	}
	waitEmpty(t, pool, 5*time.Second)
}

func TestRelayRolledBackTransactionPublishesNothing(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	relay := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{PollInterval: 50 * time.Millisecond})
	runRelay(t, relay)

	rolledBack := event(t, 1)
	errAbort := errors.New("abort")
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		if err := outbox.Add(ctx, tx, rolledBack); err != nil {
			return err
		}
		return errAbort
	})
	if !errors.Is(err, errAbort) {
		t.Fatalf("WithTx = %v", err)
	}
	// A later commit is published; by then the rolled-back one would have
	// been too, had it been written.
	marker := commit(t, pool, 1)
	bk.waitFor(t, 5*time.Second, marker...)
	time.Sleep(200 * time.Millisecond)
	if diff := cmp.Diff(map[string]int{marker[0]: 1}, bk.counts()); diff != "" {
		t.Errorf("deliveries by message id (-want +got):\n%s", diff)
	}
}

// switchPublisher forwards to whichever publisher it currently holds.
type switchPublisher struct {
	cur   atomic.Pointer[eventbus.Publisher]
	fails atomic.Int64
}

func (s *switchPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	err := s.cur.Load().Publish(ctx, msgs...)
	if err != nil {
		s.fails.Add(1)
	}
	return err
}

func TestRelayBrokerOutageOnlyDelays(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	// Nothing listens on port 1: the publisher's link stays down.
	var pub switchPublisher
	pub.cur.Store(bk.publisher(t, "amqp://guest:guest@127.0.0.1:1/"))
	var (
		failedBatches atomic.Int64
		failMu        sync.Mutex
		failedAt      []time.Time // when each failed batch was reported
	)
	relay := outbox.NewRelay(pool, &pub, outbox.Config{
		PollInterval: 50 * time.Millisecond,
		BatchSize:    20,
		MinBackoff:   20 * time.Millisecond,
		MaxBackoff:   200 * time.Millisecond,
		Metrics: outbox.Metrics{Failed: func(int, error) {
			failMu.Lock()
			failedAt = append(failedAt, time.Now())
			failMu.Unlock()
			failedBatches.Add(1)
		}},
	})
	runRelay(t, relay)

	var ids []string
	for range 5 {
		ids = append(ids, commit(t, pool, 10)...)
	}
	// Backing off from 20ms, doubling up to 200ms (each wait ±20%), the
	// relay waits 20+40+80+160+200+200+200 = 900ms ±20% between its first
	// and its 8th failed attempt; a relay that did not back off would make
	// them within milliseconds, one that did not double the wait within
	// 170ms. The bound is half the nominal span, and slowness only
	// stretches the span: it cannot fail on a busy machine.
	const attempts = 8
	for deadline := time.Now().Add(time.Minute); failedBatches.Load() < attempts; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d failed batches reported in a minute of outage, want at least %d", failedBatches.Load(), attempts)
		}
	}
	failMu.Lock()
	span := failedAt[attempts-1].Sub(failedAt[0])
	failMu.Unlock()
	t.Logf("the first %d failed batches took %s", attempts, span)
	if minSpan := 450 * time.Millisecond; span < minSpan {
		t.Errorf("the first %d failed batches came within %s, want at least %s: the relay does not back off", attempts, span, minSpan)
	}
	if n := len(bk.counts()); n != 0 {
		t.Fatalf("%d messages delivered while the broker was unreachable", n)
	}
	if n := pending(t, pool); n != int64(len(ids)) {
		t.Fatalf("outbox has %d rows during the outage, want %d", n, len(ids))
	}

	// The broker "returns".
	pub.cur.Store(bk.upPublisher(t))
	bk.waitFor(t, 10*time.Second, ids...)
	waitEmpty(t, pool, 5*time.Second)
	for id, n := range bk.counts() {
		if n != 1 {
			t.Errorf("message %s delivered %d times, want 1", id, n)
		}
	}
}

// holdingPublisher publishes through the real publisher, then reports the
// confirmed batch and waits for release before returning.
type holdingPublisher struct {
	inner     outbox.Publisher
	confirmed chan []string
	release   chan struct{}
}

func (h *holdingPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	if err := h.inner.Publish(ctx, msgs...); err != nil {
		return err
	}
	ids := make([]string, len(msgs))
	for i, m := range msgs {
		ids[i] = m.ID
	}
	h.confirmed <- ids
	select {
	case <-h.release:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func TestRelayDeletesRowsOnlyAfterConfirm(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	hold := &holdingPublisher{inner: bk.upPublisher(t), confirmed: make(chan []string, 1), release: make(chan struct{})}
	relay := outbox.NewRelay(pool, hold, outbox.Config{PollInterval: 50 * time.Millisecond})
	runRelay(t, relay)

	ids := commit(t, pool, 5)
	var got []string
	select {
	case got = <-hold.confirmed:
	case <-time.After(5 * time.Second):
		t.Fatal("relay did not publish within 5s")
	}
	if diff := cmp.Diff(ids, got); diff != "" {
		t.Errorf("published batch (-want +got):\n%s", diff)
	}
	// The broker confirmed (and delivered) them, but until Publish returns
	// the rows stay.
	bk.waitFor(t, 5*time.Second, ids...)
	if n := pending(t, pool); n != 5 {
		t.Errorf("outbox has %d rows before Publish returned, want 5", n)
	}
	close(hold.release)
	waitEmpty(t, pool, 5*time.Second)
}

func TestTwoRelaysPublishEachRowOnce(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	var published [2]atomic.Int64
	for i := range published {
		r := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{
			PollInterval: 20 * time.Millisecond,
			BatchSize:    25,
			Workers:      2,
			Metrics:      outbox.Metrics{Published: func(n int) { published[i].Add(int64(n)) }},
		})
		runRelay(t, r)
	}

	// Commit while both relays run, from several writers.
	const writers, txs, perTx = 4, 25, 10
	var (
		mu  sync.Mutex
		ids []string
	)
	var g errgroup.Group
	for range writers {
		g.Go(func() error {
			for range txs {
				got, err := tryCommit(pool, perTx)
				if err != nil {
					return err
				}
				mu.Lock()
				ids = append(ids, got...)
				mu.Unlock()
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	bk.waitFor(t, 20*time.Second, ids...)
	waitEmpty(t, pool, 5*time.Second)
	time.Sleep(200 * time.Millisecond) // Let any duplicate arrive.

	counts := bk.counts()
	if len(counts) != len(ids) {
		t.Errorf("%d distinct messages delivered, want %d", len(counts), len(ids))
	}
	for id, n := range counts {
		if n != 1 {
			t.Errorf("message %s delivered %d times, want 1", id, n)
		}
	}
	t.Logf("rows published by relay 1: %d, relay 2: %d", published[0].Load(), published[1].Load())
	if total := published[0].Load() + published[1].Load(); total != int64(len(ids)) {
		t.Errorf("relays report %d published rows, want %d", total, len(ids))
	}
}

// TestRelayPollsForRowsNobodyWoke commits rows without waking the relay,
// as another process would, and sees them published at the next poll.
func TestRelayPollsForRowsNobodyWoke(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	relay := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{PollInterval: 300 * time.Millisecond})
	// The first look, at start, publishes a row committed before; once the
	// outbox is empty again it is over, and only a poll can publish more.
	first := commit(t, pool, 1)
	runRelay(t, relay)
	bk.waitFor(t, 30*time.Second, first...)
	waitEmpty(t, pool, 30*time.Second)

	ids := commit(t, pool, 3)
	committed := time.Now()
	bk.waitFor(t, 5*time.Second, ids...)
	t.Logf("delivered %s after commit (poll interval 300ms)", time.Since(committed))
	waitEmpty(t, pool, 5*time.Second)
}

func TestDrainPublishesEverything(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	relay := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{BatchSize: 7})
	ids := commit(t, pool, 30)
	if err := relay.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	if n := pending(t, pool); n != 0 {
		t.Errorf("outbox has %d rows after Drain", n)
	}
	bk.waitFor(t, 5*time.Second, ids...)
}

// writingPublisher stands for other instances writing to the outbox while
// a relay drains it: each Publish commits one more row, then confirms.
type writingPublisher struct {
	pool  *pgxpool.Pool
	calls atomic.Int64
}

func (w *writingPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	w.calls.Add(1)
	_, err := tryCommit(w.pool, 1)
	return err
}

// TestDrainEndsWhileOthersKeepWriting: a drain at shutdown publishes the
// rows written before it began and ends, though rows keep coming; one
// that took every row it found would run until its deadline.
func TestDrainEndsWhileOthersKeepWriting(t *testing.T) {
	pool, _ := newOutbox(t)
	pub := &writingPublisher{pool: pool}
	relay := outbox.NewRelay(pool, pub, outbox.Config{BatchSize: 5})
	commit(t, pool, 20)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := relay.Drain(ctx); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	// 20 rows in batches of 5; each batch wrote one more row, which the
	// drain leaves.
	if got := pub.calls.Load(); got != 4 {
		t.Errorf("Drain made %d Publish calls, want 4 (the 20 rows it began with, 5 a batch)", got)
	}
	if n := pending(t, pool); n != 4 {
		t.Errorf("outbox has %d rows after Drain, want the 4 written during it", n)
	}
}

func TestRelaySurvivesBrokerConnectionLoss(t *testing.T) {
	pool, _ := newOutbox(t)
	bk := newBroker(t)
	pub := bk.upPublisher(t)
	relay := outbox.NewRelay(pool, pub, outbox.Config{
		PollInterval: 50 * time.Millisecond,
		BatchSize:    50,
		MinBackoff:   20 * time.Millisecond,
		MaxBackoff:   200 * time.Millisecond,
	})
	runRelay(t, relay)

	// Commit steadily while the publisher's connection is cut twice.
	const txs = 40
	var (
		all       []string
		committed atomic.Int64 // transactions
		writers   errgroup.Group
	)
	writers.Go(func() error {
		for range txs {
			ids, err := tryCommit(pool, 25)
			if err != nil {
				return err
			}
			all = append(all, ids...)
			committed.Add(1)
			time.Sleep(20 * time.Millisecond)
		}
		return nil
	})
	waitUntil := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(5 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not within a minute: %s (writers committed %d of %d transactions)", what, committed.Load(), txs)
			}
		}
	}
	var lastCut time.Time
	for i := range 2 {
		// Each cut comes while the writers are at it (after a quarter,
		// then half, of their transactions), and on a link the publisher
		// (re)opened after the cut before.
		waitUntil(fmt.Sprintf("%d transactions committed before cut %d", (i+1)*txs/4, i+1), func() bool {
			return committed.Load() >= int64((i+1)*txs/4)
		})
		waitUntil(fmt.Sprintf("the publisher up again before cut %d", i+1), func() bool {
			st := pub.State()
			return st.Up && st.Since.After(lastCut)
		})
		lastCut = time.Now()
		if n := platformtest.CloseConnections(t, bk.prefix+testService+".publisher"); n != 1 {
			t.Errorf("closed %d publisher connections, want 1", n)
		}
	}
	if err := writers.Wait(); err != nil {
		t.Fatal(err)
	}
	bk.waitFor(t, 30*time.Second, all...)
	waitEmpty(t, pool, 10*time.Second)
	dups := 0
	for _, n := range bk.counts() {
		dups += n - 1
	}
	t.Logf("%d events delivered after 2 connection losses; %d duplicate deliveries", len(all), dups)
}

// TestRelayDefersUnroutableRowsWithoutHoldingUpOthers puts an event no
// queue is bound to receive at the head of the outbox: the routable events
// behind it are published once each and deleted, and the unroutable one
// stays, waiting with a growing delay.
func TestRelayDefersUnroutableRowsWithoutHoldingUpOthers(t *testing.T) {
	for _, tt := range []struct {
		name      string
		strays    int
		batchSize int
	}{
		{name: "one in a batch with others", strays: 1},
		// Every row of the first batch fails: it is put back all the same,
		// and the rows behind it go out.
		{name: "a whole batch of them ahead of the others", strays: 5, batchSize: 5},
	} {
		t.Run(tt.name, func(t *testing.T) {
			pool, _ := newOutbox(t)
			bk := newBroker(t)
			// Only order events route; a stock event is unroutable.
			conn, err := amqp.Dial(amqpURL())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ch, err := conn.Channel()
			if err != nil {
				t.Fatal(err)
			}
			defer ch.Close()
			if err := ch.QueueUnbind(bk.prefix+"all", "#", bk.prefix+"ordermesh.events", nil); err != nil {
				t.Fatal(err)
			}
			if err := ch.QueueBind(bk.prefix+"all", "order.#", bk.prefix+"ordermesh.events", false, nil); err != nil {
				t.Fatal(err)
			}

			for range tt.strays {
				orderID := uuid.NewString()
				stray, err := eventbus.NewMessage(&inventoryv1.StockReserved{OrderId: orderID,
					Items: []*inventoryv1.StockLine{{ProductId: "SKU-1", Quantity: 1}}}, testService, orderID)
				if err != nil {
					t.Fatal(err)
				}
				if err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
					return outbox.Add(context.Background(), tx, stray)
				}); err != nil {
					t.Fatal(err)
				}
			}
			ids := commit(t, pool, 5)

			runRelay(t, outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{PollInterval: 50 * time.Millisecond, BatchSize: tt.batchSize}))
			bk.waitFor(t, 10*time.Second, ids...)
			time.Sleep(time.Second) // let the relay go round a few times more
			for _, id := range ids {
				if n := bk.counts()[id]; n != 1 {
					t.Errorf("event %s delivered %d times, want once", id, n)
				}
			}
			var left, deferred, attempts int
			if err := pool.QueryRow(context.Background(), `SELECT (SELECT count(*) FROM outbox), count(*), coalesce(min(attempts), 0) FROM outbox_deferred`).Scan(&left, &deferred, &attempts); err != nil {
				t.Fatal(err)
			}
			if left != 0 || deferred != tt.strays || attempts < 1 {
				t.Errorf("outbox holds %d rows and outbox_deferred %d (least attempts %d), want only the %d unroutable ones, each deferred", left, deferred, attempts, tt.strays)
			}
		})
	}
}

// TestRelayKeepsRowsWhenTheDeleteFails has the database refuse the
// relay's DELETE after the broker confirmed a batch: the batch fails, its
// rows stay, no connection is left inside a transaction, and the next
// batch publishes the rows again and deletes them.
func TestRelayKeepsRowsWhenTheDeleteFails(t *testing.T) {
	ctx := context.Background()
	pool, schema := newOutbox(t)
	bk := newBroker(t)
	relay := outbox.NewRelay(pool, bk.upPublisher(t), outbox.Config{BatchSize: 10})
	ids := commit(t, pool, 3)
	if _, err := pool.Exec(ctx, `
		CREATE FUNCTION refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN RAISE EXCEPTION 'deletes refused'; END $$;
		CREATE TRIGGER refuse BEFORE DELETE ON outbox FOR EACH ROW EXECUTE FUNCTION refuse_delete();`); err != nil {
		t.Fatal(err)
	}

	n, err := relay.PublishBatch(ctx)
	if err == nil || !strings.Contains(err.Error(), "deletes refused") {
		t.Fatalf("PublishBatch with deletes refused = %d, %v; want the database's error", n, err)
	}
	bk.waitFor(t, 5*time.Second, ids...)
	if got := pending(t, pool); got != 3 {
		t.Fatalf("outbox has %d rows after the failed delete, want 3", got)
	}
	var inTx int
	if err := pool.QueryRow(ctx, `
		SELECT count(*) FROM pg_stat_activity
		WHERE application_name = $1 AND state LIKE 'idle in transaction%'`,
		"ordermesh-test-"+schema).Scan(&inTx); err != nil {
		t.Fatal(err)
	}
	if inTx != 0 {
		t.Fatalf("%d connections left inside a transaction", inTx)
	}

	if _, err := pool.Exec(ctx, `DROP TRIGGER refuse ON outbox`); err != nil {
		t.Fatal(err)
	}
	if n, err := relay.PublishBatch(ctx); err != nil || n != 3 {
		t.Fatalf("PublishBatch once deletes work = %d, %v; want 3, nil", n, err)
	}
	if got := pending(t, pool); got != 0 {
		t.Fatalf("outbox has %d rows, want none", got)
	}
	// Confirmed is not yet consumed: wait for the second copies.
	bk.waitForN(t, 5*time.Second, 2, ids...)
	time.Sleep(200 * time.Millisecond) // and for any copy more
	for _, id := range ids {
		if c := bk.counts()[id]; c != 2 {
			t.Errorf("message %s delivered %d times, want 2 (before and after the failed delete)", id, c)
		}
	}
}

// unansweredPublisher fails every Publish the way a timed-out or broken
// link does: a PublishError confirming none, the broker having refused none.
type unansweredPublisher struct{}

func (unansweredPublisher) Publish(_ context.Context, msgs ...eventbus.Message) error {
	return &eventbus.PublishError{Err: fmt.Errorf("confirm: %w", context.DeadlineExceeded),
		Confirmed: make([]bool, len(msgs)), Refused: make([]bool, len(msgs))}
}

// mixedPublisher answers each Publish as a link lost in the middle of a
// batch whose first message the broker refused does: message 0 refused,
// message 1 confirmed, the rest unanswered.
type mixedPublisher struct{}

func (mixedPublisher) Publish(_ context.Context, msgs ...eventbus.Message) error {
	pe := &eventbus.PublishError{Err: fmt.Errorf("publish: %w", eventbus.ErrUnroutable),
		Confirmed: make([]bool, len(msgs)), Refused: make([]bool, len(msgs))}
	pe.Refused[0] = true
	pe.Confirmed[1] = true
	return pe
}

// TestRelaySettlesEachRowByItsMessagesOutcome: in one batch, a confirmed
// row is deleted, a refused one is put back to wait, and the unanswered
// ones stay as they were, due at once; the batch reports them as an
// error, so the relay backs off before trying them again.
func TestRelaySettlesEachRowByItsMessagesOutcome(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	ids := commit(t, pool, 4)
	relay := outbox.NewRelay(pool, mixedPublisher{}, outbox.Config{BatchSize: 10})
	n, err := relay.PublishBatch(ctx)
	if err == nil || !strings.Contains(err.Error(), "2 unanswered") || n != 1 {
		t.Fatalf("PublishBatch = %d, %v; want 1 published and an error for the 2 unanswered", n, err)
	}
	got := map[string]string{}
	rows, err := pool.Query(ctx, `
		SELECT id, CASE WHEN attempts = 0 AND next_attempt_at <= now() THEN 'due' ELSE 'other' END FROM outbox
		UNION ALL
		SELECT id, CASE WHEN attempts = 1 AND next_attempt_at > now() THEN 'waiting' ELSE 'other' END FROM outbox_deferred`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var id, state string
		if err := rows.Scan(&id, &state); err != nil {
			t.Fatal(err)
		}
		got[id] = state
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{ids[0]: "waiting", ids[2]: "due", ids[3]: "due"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("outbox rows after the batch (-want +got; the confirmed %s deleted):\n%s", ids[1], diff)
	}
}

// TestRelayKeepsUnansweredRowsAsTheyAre: a batch the broker did not answer
// (nothing confirmed, nothing refused) is an error of the batch's, and its
// rows stay as they were, due at once and in order: only rows the broker
// refused are put back to wait.
func TestRelayKeepsUnansweredRowsAsTheyAre(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	commit(t, pool, 5)
	relay := outbox.NewRelay(pool, unansweredPublisher{}, outbox.Config{BatchSize: 10})
	if n, err := relay.PublishBatch(ctx); err == nil || !errors.Is(err, context.DeadlineExceeded) || n != 0 {
		t.Fatalf("PublishBatch = %d, %v; want the timeout", n, err)
	}
	if err := relay.Drain(ctx); err == nil {
		t.Error("Drain = nil, want the timeout: the flush at shutdown must say it failed")
	}
	var deferred int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox_deferred`).Scan(&deferred); err != nil {
		t.Fatal(err)
	}
	if left := pending(t, pool); left != 5 || deferred != 0 {
		t.Errorf("outbox: %d rows, %d put back to wait; want all 5, none waiting", left, deferred)
	}
}

// refusingPublisher refuses every message, as a broker with no queue
// bound for them does.
type refusingPublisher struct{}

func (refusingPublisher) Publish(_ context.Context, msgs ...eventbus.Message) error {
	pe := &eventbus.PublishError{Err: fmt.Errorf("publish: %w", eventbus.ErrUnroutable),
		Confirmed: make([]bool, len(msgs)), Refused: make([]bool, len(msgs))}
	for i := range pe.Refused {
		pe.Refused[i] = true
	}
	return pe
}

// TestRelayBacksOffRefusedRowsUpToTheCap: a row the broker keeps refusing
// waits MinBackoff, then twice that, and so on, never more than
// MaxBackoff.
func TestRelayBacksOffRefusedRowsUpToTheCap(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	commit(t, pool, 1)
	relay := outbox.NewRelay(pool, refusingPublisher{}, outbox.Config{MinBackoff: time.Second, MaxBackoff: 4 * time.Second})
	var waits []time.Duration
	for range 5 {
		if n, err := relay.PublishBatch(ctx); err != nil || n != 0 {
			t.Fatalf("PublishBatch = %d, %v; want nothing published and no error (the row waits)", n, err)
		}
		var wait time.Duration
		if err := pool.QueryRow(ctx, `SELECT next_attempt_at - now() FROM outbox_deferred`).Scan(&wait); err != nil {
			t.Fatal(err)
		}
		waits = append(waits, wait.Round(100*time.Millisecond))
		// Due again at once, for the next round.
		if _, err := pool.Exec(ctx, `UPDATE outbox_deferred SET next_attempt_at = now()`); err != nil {
			t.Fatal(err)
		}
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second, 4 * time.Second}
	if !slices.Equal(waits, want) {
		t.Errorf("waits %v, want %v", waits, want)
	}
	var attempts int
	if err := pool.QueryRow(ctx, `SELECT attempts FROM outbox_deferred`).Scan(&attempts); err != nil || attempts != 5 {
		t.Errorf("attempts = %d, %v; want 5", attempts, err)
	}
}

// stalledPublisher never hears back from the broker: it waits for its
// context to end, as a publish to a stalled broker does.
type stalledPublisher struct{}

func (stalledPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	<-ctx.Done()
	return &eventbus.PublishError{Err: fmt.Errorf("wait for confirms: %w", ctx.Err()),
		Confirmed: make([]bool, len(msgs)), Refused: make([]bool, len(msgs))}
}

// TestRelayBoundsAPublishByPublishTimeout: a publish that never gets its
// confirms ends at PublishTimeout, whatever the caller's context, and the
// batch fails with its rows as they were.
func TestRelayBoundsAPublishByPublishTimeout(t *testing.T) {
	pool, _ := newOutbox(t)
	commit(t, pool, 3)
	relay := outbox.NewRelay(pool, stalledPublisher{}, outbox.Config{PublishTimeout: 200 * time.Millisecond})
	done := make(chan error, 1)
	go func() {
		_, err := relay.PublishBatch(context.Background())
		done <- err
	}()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("PublishBatch = %v, want the publish timeout", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("PublishBatch still waits a minute on; PublishTimeout does not bound it")
	}
	if got := pending(t, pool); got != 3 {
		t.Errorf("outbox has %d rows, want all 3 kept", got)
	}
}

// TestUpgradeMovesDeferredRows: rows an earlier version put back to wait
// in the outbox itself move to outbox_deferred with the migration that
// makes it, their attempts and due time kept; the others stay.
func TestUpgradeMovesDeferredRows(t *testing.T) {
	ctx := context.Background()
	before := fstest.MapFS{}
	err := fs.WalkDir(outbox.Migrations.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || strings.HasPrefix(path.Base(p), "004_") {
			return err
		}
		body, err := fs.ReadFile(outbox.Migrations.FS, p)
		before[p] = &fstest.MapFile{Data: body}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	pool, schema := postgrestest.NewSchema(t)
	if err := postgres.Migrate(ctx, pool, schema, postgres.Source{Name: outbox.Migrations.Name, FS: before}); err != nil {
		t.Fatal(err)
	}
	ids := commit(t, pool, 2)
	if _, err := pool.Exec(ctx, `UPDATE outbox SET attempts = 3, next_attempt_at = now() + interval '1 hour' WHERE id = $1`, ids[1]); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, schema, outbox.Migrations); err != nil {
		t.Fatal(err)
	}
	var fresh, deferred string
	var attempts int
	var wait time.Duration
	if err := pool.QueryRow(ctx, `SELECT (SELECT string_agg(id, ',') FROM outbox), id, attempts, next_attempt_at - now() FROM outbox_deferred`).Scan(&fresh, &deferred, &attempts, &wait); err != nil {
		t.Fatal(err)
	}
	if fresh != ids[0] || deferred != ids[1] || attempts != 3 || wait < 59*time.Minute {
		t.Errorf("after the upgrade: outbox %q, deferred %q with %d attempts due in %s; want %s, and %s with 3 due in an hour", fresh, deferred, attempts, wait, ids[0], ids[1])
	}
}

// gatePublisher refuses every message, as a broker with no queue bound for
// them does, until open is set; then it confirms them, counting them.
type gatePublisher struct {
	open     atomic.Bool
	accepted atomic.Int64
}

func (g *gatePublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	if !g.open.Load() {
		return refusingPublisher{}.Publish(ctx, msgs...)
	}
	g.accepted.Add(int64(len(msgs)))
	return nil
}

// TestRelayPublishesDeferredRowsOnceTakenIn: rows the broker refused wait
// in outbox_deferred and go out, from a running relay, once the broker
// takes them (a consumer bound its queue).
func TestRelayPublishesDeferredRowsOnceTakenIn(t *testing.T) {
	pool, _ := newOutbox(t)
	pub := &gatePublisher{}
	relay := outbox.NewRelay(pool, pub, outbox.Config{PollInterval: 50 * time.Millisecond, MinBackoff: 50 * time.Millisecond, MaxBackoff: 200 * time.Millisecond})
	runRelay(t, relay)
	commit(t, pool, 3)
	relay.Wake()
	eventually := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); !ok(); time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("%s: not within 10 s", what)
			}
		}
	}
	eventually("the refused rows deferred", func() bool {
		var n int
		if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM outbox_deferred`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 3
	})
	pub.open.Store(true)
	eventually("the deferred rows published", func() bool { return pending(t, pool) == 0 })
	if n := pub.accepted.Load(); n != 3 {
		t.Errorf("%d messages confirmed, want the 3 deferred", n)
	}
}

// recordingPublisher confirms every message and records their ids in the
// order published.
type recordingPublisher struct {
	mu  sync.Mutex
	ids []string
}

func (p *recordingPublisher) Publish(_ context.Context, msgs ...eventbus.Message) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, m := range msgs {
		p.ids = append(p.ids, m.ID)
	}
	return nil
}

// TestDeferredRowsDoNotWaitForTheOutboxToEmpty: due deferred rows go out
// while the relay is still working through a backlog of whole batches, not
// only once the outbox has run dry.
func TestDeferredRowsDoNotWaitForTheOutboxToEmpty(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	deferred := commit(t, pool, 3)
	if _, err := outbox.NewRelay(pool, refusingPublisher{}, outbox.Config{}).PublishBatch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox_deferred SET next_attempt_at = now()`); err != nil {
		t.Fatal(err)
	}
	fresh := commit(t, pool, 50)
	pub := &recordingPublisher{}
	runRelay(t, outbox.NewRelay(pool, pub, outbox.Config{BatchSize: 5}))
	for deadline := time.Now().Add(10 * time.Second); pending(t, pool) > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the outbox did not empty within 10 s")
		}
	}
	pub.mu.Lock()
	defer pub.mu.Unlock()
	lastDeferred := -1 // where the last of the deferred rows went out
	for i, id := range pub.ids {
		if slices.Contains(deferred, id) {
			lastDeferred = i
		}
	}
	if last := slices.Index(pub.ids, fresh[len(fresh)-1]); lastDeferred < 0 || lastDeferred > last {
		t.Errorf("the last deferred row went out %dth of %d, after the backlog's last (%dth)", lastDeferred+1, len(pub.ids), last+1)
	}
}

// TestReadStatsEstimatesALargeBacklog: past the rows it counts, ReadStats
// estimates the backlog from the outbox's span of sequence numbers (an
// upper bound: a row gone from the middle still counts) and says so;
// refused rows waiting in outbox_deferred count too.
func TestReadStatsEstimatesALargeBacklog(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	commit(t, pool, 12)
	s, err := outbox.ReadStatsUpTo(ctx, pool, 20)
	if err != nil || s.Pending != 12 || s.Estimated {
		t.Fatalf("ReadStats of 12 rows counting up to 20 = %+v, %v; want 12, exact", s, err)
	}
	if _, err := pool.Exec(ctx, `DELETE FROM outbox WHERE seq = (SELECT min(seq) + 5 FROM outbox)`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `
		WITH moved AS (DELETE FROM outbox WHERE seq = (SELECT max(seq) FROM outbox)
			RETURNING seq, id, type, routing_key, source, event_time, body, created_at)
		INSERT INTO outbox_deferred (seq, id, type, routing_key, source, event_time, body, created_at, attempts, next_attempt_at)
		SELECT seq, id, type, routing_key, source, event_time, body, created_at, 1, now() FROM moved`); err != nil {
		t.Fatal(err)
	}
	// 10 rows in the outbox over a span of 11 sequence numbers (one
	// gone from the middle, the last one moved), 1 deferred.
	if s, err := outbox.ReadStatsUpTo(ctx, pool, 20); err != nil || s.Pending != 11 || s.Estimated {
		t.Errorf("ReadStats counting up to 20 = %+v, %v; want 11, exact", s, err)
	}
	if s, err := outbox.ReadStatsUpTo(ctx, pool, 4); err != nil || s.Pending != 12 || !s.Estimated {
		t.Errorf("ReadStats counting up to 4 = %+v, %v; want 12 (the outbox's span of 11, and 1 deferred), estimated", s, err)
	}
	// Counting none: both tables estimated (the deferred row's, from the
	// statistics, no lower than the one counted).
	if s, err := outbox.ReadStatsUpTo(ctx, pool, 0); err != nil || s.Pending != 12 || !s.Estimated {
		t.Errorf("ReadStats counting up to 0 = %+v, %v; want 12 (a span of 11, 1 deferred row), estimated", s, err)
	}
	if s, err := outbox.ReadStats(ctx, pool); err != nil || s.Pending != 11 || s.Estimated || s.OldestAge <= 0 {
		t.Errorf("ReadStats = %+v, %v; want 11, exact, with an age", s, err)
	}
}

// TestReadStatsEstimatesRefusedRows: past the rows it counts, refused
// rows waiting in outbox_deferred are estimated from the table's
// statistics, not reported as the number counted.
func TestReadStatsEstimatesRefusedRows(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	commit(t, pool, 8)
	if _, err := pool.Exec(ctx, `
		WITH moved AS (DELETE FROM outbox
			RETURNING seq, id, type, routing_key, source, event_time, body, created_at)
		INSERT INTO outbox_deferred (seq, id, type, routing_key, source, event_time, body, created_at, attempts, next_attempt_at)
		SELECT seq, id, type, routing_key, source, event_time, body, created_at, 1, now() FROM moved`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE outbox_deferred`); err != nil {
		t.Fatal(err)
	}
	if s, err := outbox.ReadStatsUpTo(ctx, pool, 2); err != nil || s.Pending != 8 || !s.Estimated {
		t.Errorf("ReadStats counting up to 2 = %+v, %v; want the 8 refused rows, estimated", s, err)
	}
}

// countingPublisher counts its Publish calls and the messages in them, and
// refuses them all while refuse is set (else confirms them).
type countingPublisher struct {
	refuse      bool
	calls, msgs atomic.Int64
}

func (p *countingPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	p.calls.Add(1)
	p.msgs.Add(int64(len(msgs)))
	if p.refuse {
		return refusingPublisher{}.Publish(ctx, msgs...)
	}
	return nil
}

// TestRelayRetriesDeferredRowsBatchAfterBatch: due deferred rows go out
// batch after batch while batches are whole and the broker takes them; a
// whole batch the broker refuses again ends the round (its rows wait
// their back-off), rather than the relay going on to refuse the rest at
// once, round after round. Only one of the relay's workers retries them.
func TestRelayRetriesDeferredRowsBatchAfterBatch(t *testing.T) {
	const batch, rows = 5, 15
	for _, tt := range []struct {
		name         string
		refuse       bool
		calls, msgs  int64
		leftDeferred int
	}{
		{"taken", false, rows / batch, rows, 0},
		{"refused", true, 1, batch, rows},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool, _ := newOutbox(t)
			commit(t, pool, rows)
			if _, err := outbox.NewRelay(pool, refusingPublisher{}, outbox.Config{BatchSize: rows}).PublishBatch(ctx); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, `UPDATE outbox_deferred SET next_attempt_at = now() - interval '1 second'`); err != nil {
				t.Fatal(err)
			}
			pub := &countingPublisher{refuse: tt.refuse}
			// Polls an hour apart: only the round at the start runs.
			runRelay(t, outbox.NewRelay(pool, pub, outbox.Config{BatchSize: batch, Workers: 3, PollInterval: time.Hour}))
			time.Sleep(500 * time.Millisecond)
			if calls, msgs := pub.calls.Load(), pub.msgs.Load(); calls != tt.calls || msgs != tt.msgs {
				t.Errorf("%d Publish calls of %d messages, want %d of %d", calls, msgs, tt.calls, tt.msgs)
			}
			var left int
			if err := pool.QueryRow(ctx, `SELECT count(*) FROM outbox_deferred`).Scan(&left); err != nil || left != tt.leftDeferred {
				t.Errorf("%d deferred rows left (%v), want %d", left, err, tt.leftDeferred)
			}
		})
	}
}

// TestDeferredRowsStayWhenTheLinkFails: due deferred rows whose retry the
// broker left unanswered (the link went down), whole or in part, stay as
// they were: due at once, their refusals not counted again; the rows the
// broker did settle in that batch are settled.
func TestDeferredRowsStayWhenTheLinkFails(t *testing.T) {
	ctx := context.Background()
	pool, _ := newOutbox(t)
	commit(t, pool, 4)
	if _, err := outbox.NewRelay(pool, refusingPublisher{}, outbox.Config{}).PublishBatch(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `UPDATE outbox_deferred SET next_attempt_at = now() - interval '1 second'`); err != nil {
		t.Fatal(err)
	}
	type row struct {
		seq      int64
		attempts int
		due      bool
	}
	rows := func() []row {
		t.Helper()
		r, err := pool.Query(ctx, `SELECT seq, attempts, next_attempt_at <= now() FROM outbox_deferred ORDER BY seq`)
		if err != nil {
			t.Fatal(err)
		}
		got, err := pgx.CollectRows(r, func(r pgx.CollectableRow) (row, error) {
			var x row
			return x, r.Scan(&x.seq, &x.attempts, &x.due)
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	before := rows()
	if n, err := outbox.NewRelay(pool, unansweredPublisher{}, outbox.Config{}).PublishBatch(ctx); err == nil || n != 0 {
		t.Fatalf("PublishBatch over a dead link = %d, %v; want an error and nothing published", n, err)
	}
	if after := rows(); !slices.Equal(after, before) {
		t.Errorf("deferred rows after a dead link: %v, want them as they were, %v", after, before)
	}
	// Message 0 refused again, 1 confirmed, 2 and 3 unanswered (the
	// deferred rows go out the longest due first: all equally so here).
	if _, err := outbox.NewRelay(pool, mixedPublisher{}, outbox.Config{}).PublishBatch(ctx); err == nil {
		t.Fatal("PublishBatch with rows unanswered returned no error")
	}
	after := rows()
	if len(after) != 3 {
		t.Fatalf("deferred rows %v, want the confirmed one gone and 3 left", after)
	}
	var refusedAgain, untouched int
	for _, r := range after {
		switch {
		case r.attempts == 2 && !r.due:
			refusedAgain++
		case r.attempts == 1 && r.due:
			untouched++
		}
	}
	if refusedAgain != 1 || untouched != 2 {
		t.Errorf("deferred rows %v, want one refused again (2 attempts, not due) and two as they were (1 attempt, due)", after)
	}
}
