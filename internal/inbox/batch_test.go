package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// processAll hands every delivery of ds to b at once, each on its own
// goroutine as the bus's handlers run, and returns their errors in order.
func processAll(ctx context.Context, b *inbox.BatchRunner, ds []delivery) []error {
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	for i, d := range ds {
		wg.Go(func() { _, errs[i] = b.Process(ctx, d.ev, d.meta) })
	}
	wg.Wait()
	return errs
}

// batchHandler is handleOrderCreated for a whole batch, with one statement
// per table. The deliveries whose event ids are in fail fail with that
// error and write nothing. It counts the deliveries it was handed in seen.
func batchHandler(fail map[string]error, seen *atomic.Int64) inbox.BatchHandler {
	return func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		seen.Add(int64(len(batch)))
		results := make([]inbox.Result, len(batch))
		var customers, ids []string
		var units []int64
		for i, d := range batch {
			if err := fail[d.Meta.ID]; err != nil {
				results[i].Err = err
				continue
			}
			ev, ok := d.Event.(*orderv1.OrderCreated)
			if !ok {
				results[i].Err = eventbus.Permanent(fmt.Errorf("unexpected %T", d.Event))
				continue
			}
			customers, units, ids = append(customers, ev.GetCustomerEmail()), append(units, ev.GetTotal().GetUnits()), append(ids, d.Meta.ID)
			results[i].Events = []proto.Message{&orderv1.OrderConfirmed{
				OrderId: ev.GetOrderId(), CustomerEmail: ev.GetCustomerEmail(), Total: ev.GetTotal(),
			}}
		}
		if _, err := tx.Exec(ctx, `
			INSERT INTO totals (customer, units)
			SELECT customer, sum(units) FROM unnest($1::text[], $2::bigint[]) AS t(customer, units) GROUP BY customer
			ON CONFLICT (customer) DO UPDATE SET units = totals.units + excluded.units`, customers, units); err != nil {
			return nil, err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO applied (event_id) SELECT unnest($1::text[])`, ids); err != nil {
			return nil, err
		}
		return results, nil
	}
}

// TestBatchRunnerAppliesEachEventOnceAndIsolatesFailures runs concurrent
// deliveries through a BatchRunner: every event (delivered two or three
// times, concurrently, so copies share batches) applies once and reaches
// the handler once, a delivery that fails fails alone and leaves no inbox
// row, so its redelivery runs again, and the deliveries share
// transactions.
func TestBatchRunnerAppliesEachEventOnceAndIsolatesFailures(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var events []delivery
	want := state{Totals: map[string]int64{}}
	for i := range 30 {
		customer := fmt.Sprintf("c%d@example.com", i%4)
		d := newDelivery(t, customer, int64(i+1))
		events = append(events, d)
		if i != 13 {
			want.Totals[customer] += int64(i + 1)
		}
	}
	errFail := errors.New("this delivery fails")
	failing := events[13]
	var seen atomic.Int64
	b := inbox.NewBatchRunner(runner, batchHandler(map[string]error{failing.meta.ID: errFail}, &seen), 16, 10*time.Second)
	handle := inbox.WrapBatch[*orderv1.OrderCreated](b)

	var deliveries []delivery
	for i, d := range events {
		deliveries = append(deliveries, d, d)
		if i%3 == 0 {
			deliveries = append(deliveries, d)
		}
	}
	errs := make([]error, len(deliveries))
	var wg sync.WaitGroup
	for i, d := range deliveries {
		wg.Go(func() { errs[i] = handle(ctx, d.ev, d.meta) })
	}
	wg.Wait()
	var failed int64
	for i, err := range errs {
		if deliveries[i].meta.ID == failing.meta.ID {
			failed++
			if !errors.Is(err, errFail) {
				t.Errorf("delivery %d of the failing event: err = %v, want %v", i, err, errFail)
			}
		} else if err != nil {
			t.Errorf("delivery %d: %v", i, err)
		}
	}
	want.Applied, want.Inbox, want.Outbox = len(events)-1, len(events)-1, len(events)-1
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	wantCounts := inbox.Counts{Processed: int64(len(events) - 1), Duplicates: int64(len(deliveries)-len(events)) - (failed - 1), Failed: failed}
	if diff := cmp.Diff(wantCounts, runner.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	// Copies of an event in one batch reach the handler once; the failing
	// event reaches it once per batch it was in.
	if n := seen.Load(); n < int64(len(events)) || n > int64(len(events))+failed-1 {
		t.Errorf("handler saw %d deliveries, want %d to %d", n, len(events), int64(len(events))+failed-1)
	}
	txs, n := b.Stats()
	if n != int64(len(deliveries)) || txs >= n {
		t.Errorf("%d deliveries in %d transactions; want all %d, sharing transactions", n, txs, len(deliveries))
	}
	t.Logf("%d deliveries in %d transactions", n, txs)

	// The failed event left no trace, so its redelivery runs.
	ok := inbox.NewBatchRunner(runner, batchHandler(nil, &seen), 16, 10*time.Second)
	if outcome, err := ok.Process(ctx, failing.ev, failing.meta); outcome != inbox.Processed || err != nil {
		t.Fatalf("redelivery of the failed event = %v, %v; want processed", outcome, err)
	}
	want.Totals[failing.ev.GetCustomerEmail()] += failing.ev.GetTotal().GetUnits()
	want.Applied, want.Inbox, want.Outbox = len(events), len(events), len(events)
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state after the redelivery (-want +got):\n%s", diff)
	}
	// The outgoing events carry the deliveries' correlation and trace.
	var corr, parent string
	if err := pool.QueryRow(ctx, `SELECT correlation_id, trace_parent FROM outbox ORDER BY seq DESC LIMIT 1`).Scan(&corr, &parent); err != nil {
		t.Fatal(err)
	}
	if corr != failing.meta.CorrelationID || parent != failing.meta.TraceParent {
		t.Errorf("outbox row: correlation %q, trace parent %q; want %q, %q", corr, parent, failing.meta.CorrelationID, failing.meta.TraceParent)
	}
}

func TestBatchRunnerDuplicateOfProcessedEvent(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	var dupHook atomic.Int64
	var commits atomic.Int64
	runner := inbox.NewRunner(pool, service, inbox.Metrics{Duplicate: func(eventbus.Meta) { dupHook.Add(1) }},
		inbox.OnCommit(func() { commits.Add(1) }))
	var seen atomic.Int64
	b := inbox.NewBatchRunner(runner, batchHandler(nil, &seen), 16, 10*time.Second)
	d := newDelivery(t, "a@example.com", 3)
	for i, want := range []inbox.Outcome{inbox.Processed, inbox.Duplicate, inbox.Duplicate} {
		if got, err := b.Process(ctx, d.ev, d.meta); got != want || err != nil {
			t.Errorf("delivery %d = %v, %v; want %v", i+1, got, err, want)
		}
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("handler saw %d deliveries, want 1", n)
	}
	if n := dupHook.Load(); n != 2 {
		t.Errorf("Duplicate hook called %d times, want 2", n)
	}
	if n := commits.Load(); n != 1 {
		t.Errorf("OnCommit called %d times, want once: the duplicates' batches processed nothing", n)
	}
	want := state{Totals: map[string]int64{"a@example.com": 3}, Applied: 1, Inbox: 1, Outbox: 1}
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

// TestBatchRunnerFailedBatchCommitsNothing: whatever fails every batch as
// a whole (the handler's own error, a panic, a wrong number of results,
// an outgoing event that cannot be encoded) fails each of its deliveries,
// also when handled again in halves, and commits nothing, not even inbox
// rows.
func TestBatchRunnerFailedBatchCommitsNothing(t *testing.T) {
	errDown := errors.New("database gone")
	var seen atomic.Int64
	good := batchHandler(nil, &seen)
	tests := []struct {
		name    string
		h       inbox.BatchHandler
		wantErr error
	}{
		{
			name: "handler error",
			h: func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
				if _, err := good(ctx, tx, batch); err != nil {
					return nil, err
				}
				return nil, errDown
			},
			wantErr: errDown,
		},
		{
			name: "panic",
			h: func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
				if _, err := good(ctx, tx, batch); err != nil {
					return nil, err
				}
				panic("handler bug")
			},
		},
		{
			name: "too few results",
			h: func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
				res, err := good(ctx, tx, batch)
				return res[:len(res)-1], err
			},
		},
		{
			name: "bad outgoing event",
			h: func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
				res, err := good(ctx, tx, batch)
				// Money is not an event: it declares no routing key.
				res[len(res)-1].Events = []proto.Message{&moneyv1.Money{}}
				return res, err
			},
			wantErr: eventbus.ErrNotEvent,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			pool := newService(t)
			runner := inbox.NewRunner(pool, service, inbox.Metrics{})
			b := inbox.NewBatchRunner(runner, tt.h, 16, 10*time.Second)
			ds := []delivery{newDelivery(t, "a@example.com", 1), newDelivery(t, "b@example.com", 2), newDelivery(t, "a@example.com", 4)}
			errs := processAll(ctx, b, ds)
			for i, err := range errs {
				if err == nil || tt.wantErr != nil && !errors.Is(err, tt.wantErr) {
					t.Errorf("delivery %d: err = %v, want %v", i, err, tt.wantErr)
				}
			}
			if diff := cmp.Diff(state{Totals: map[string]int64{}}, readState(t, pool)); diff != "" {
				t.Errorf("state (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(inbox.Counts{Failed: int64(len(ds))}, runner.Counts()); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}

// TestBatchRunnerIsolatesADeliveryThatFailsItsBatch: the handler writes
// its batch with one statement, which one delivery's row makes fail (a
// NULL customer), so every batch holding it fails as a whole. Handled
// again in halves, only that delivery fails; every other is processed
// once, in the transactions that did not hold it, its second copy a
// duplicate.
func TestBatchRunnerIsolatesADeliveryThatFailsItsBatch(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var events []delivery
	want := state{Totals: map[string]int64{}}
	for i := range 40 {
		customer := fmt.Sprintf("c%d@example.com", i%4)
		events = append(events, newDelivery(t, customer, int64(i+1)))
		if i != 17 {
			want.Totals[customer] += int64(i + 1)
		}
	}
	bad := events[17]
	var seen atomic.Int64
	good := batchHandler(nil, &seen)
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		res, err := good(ctx, tx, batch)
		if err != nil {
			return nil, err
		}
		var customers []*string
		for _, d := range batch {
			c := d.Event.(*orderv1.OrderCreated).GetCustomerEmail()
			if d.Meta.ID == bad.meta.ID {
				customers = append(customers, nil)
			} else {
				customers = append(customers, &c)
			}
		}
		// totals.customer is NOT NULL: the bad delivery fails the statement.
		if _, err := tx.Exec(ctx, `INSERT INTO totals (customer, units) SELECT c, 0 FROM unnest($1::text[]) AS t(c) ON CONFLICT DO NOTHING`, customers); err != nil {
			return nil, err
		}
		return res, nil
	}
	b := inbox.NewBatchRunner(runner, h, 16, 10*time.Second)
	// Each event is delivered twice, so copies land in one half or in
	// both: a copy whose twin committed in the other half is a duplicate.
	errs := processAll(ctx, b, append(slices.Clone(events), events...))
	for i, err := range errs {
		switch bad := i%len(events) == 17; {
		case bad && (err == nil || !strings.Contains(err.Error(), "null value in column")):
			t.Errorf("a copy of the bad delivery: err = %v, want the NOT NULL violation", err)
		case !bad && err != nil:
			t.Errorf("delivery %d: %v", i, err)
		}
	}
	want.Applied, want.Inbox, want.Outbox = len(events)-1, len(events)-1, len(events)-1
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	wantCounts := inbox.Counts{Processed: int64(len(events) - 1), Duplicates: int64(len(events) - 1), Failed: 2}
	if diff := cmp.Diff(wantCounts, runner.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
	if txs, _ := b.Stats(); txs >= int64(len(events)) {
		t.Errorf("%d batches for %d deliveries; want them sharing batches, or the test shows nothing", txs, len(events))
	}
}

// TestBatchRunnerDataExceptionIsPermanent: a delivery whose data a
// statement cannot take (a NUL byte in text, SQLSTATE 22021) fails its
// batch; handled alone it fails again, and permanently: it would fail
// the same way at every attempt, so it goes to the dead-letter queue
// rather than up the retry ladder. The others are processed.
func TestBatchRunnerDataExceptionIsPermanent(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var seen atomic.Int64
	b := inbox.NewBatchRunner(runner, batchHandler(nil, &seen), 16, 10*time.Second)
	ds := newDeliveries(t, 8)
	ds[3] = newDelivery(t, "a\x00b@example.com", 4)
	errs := processAll(ctx, b, ds)
	for i, err := range errs {
		switch {
		case i == 3 && (!eventbus.IsPermanent(err) || !postgres.DataException(err)):
			t.Errorf("the delivery with a NUL byte: err = %v, want a permanent failure for its data", err)
		case i != 3 && err != nil:
			t.Errorf("delivery %d: %v", i, err)
		}
	}
	if got := readState(t, pool); got.Applied != len(ds)-1 || got.Inbox != len(ds)-1 {
		t.Errorf("%d events applied with %d inbox rows, want %d of each", got.Applied, got.Inbox, len(ds)-1)
	}
}

// TestBatchRunnerDoesNotSplitOnATransientFailure: a batch that fails for
// an outage or the server's shortage of resources fails as a whole,
// without being handled again in halves: that would not help, and an
// outage would take about twice as many transactions to fail. Its
// deliveries' attempts do not count: the server was short, not they wrong.
func TestBatchRunnerDoesNotSplitOnATransientFailure(t *testing.T) {
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	conflict := &pgconn.PgError{Code: "53300", Message: "sorry, too many clients already"}
	var seen atomic.Int64
	gate := newHeldGate()
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		gate.enter()
		seen.Add(int64(len(batch)))
		return nil, conflict
	}
	b := inbox.NewBatchRunner(runner, h, 16, 10*time.Second)
	ds := newDeliveries(t, 9)
	errs := processBehindHeldBatch(t, b, gate, ds)
	for i, err := range errs {
		if !errors.Is(err, conflict) || !eventbus.IsUnavailable(err) {
			t.Errorf("delivery %d: err = %v, want the server's refusal, not counted as an attempt (eventbus.Unavailable)", i, err)
		}
	}
	if n := seen.Load(); n != int64(len(ds)) {
		t.Errorf("handler saw %d deliveries, want each of the %d once", n, len(ds))
	}
	if n := gate.calls.Load(); n >= int64(len(ds)) {
		t.Errorf("%d batches for %d deliveries; want them sharing batches, or the test shows nothing", n, len(ds))
	}
}

// TestUnreachableDatabaseIsAnOutage: a delivery that failed because the
// database could not be reached is marked eventbus.Unavailable, so the
// bus retries it without counting an attempt, whichever runner ran it.
func TestUnreachableDatabaseIsAnOutage(t *testing.T) {
	// Nothing listens on port 1.
	pool, err := pgxpool.New(context.Background(), "postgres://postgres@127.0.0.1:1/none?connect_timeout=2&sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var seen atomic.Int64
	b := inbox.NewBatchRunner(runner, batchHandler(nil, &seen), 16, 10*time.Second)
	d := newDelivery(t, "a@example.com", 5)
	_, err = b.Process(context.Background(), d.ev, d.meta)
	if err == nil || !eventbus.IsUnavailable(err) || eventbus.IsPermanent(err) {
		t.Errorf("BatchRunner: error = %v, want it marked eventbus.Unavailable", err)
	}
	err = inbox.Wrap(runner, handleOrderCreated)(context.Background(), d.ev, d.meta)
	if err == nil || !eventbus.IsUnavailable(err) {
		t.Errorf("Runner: error = %v, want it marked eventbus.Unavailable", err)
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("handler saw %d deliveries, want none", n)
	}
}

// TestHandlersNetworkErrorsAreNoOutage: a delivery failing with a network
// error of its own (a mail server dropping its connection, say) while the
// database answers is not an outage: the attempt counts.
func TestHandlersNetworkErrorsAreNoOutage(t *testing.T) {
	pool := newService(t)
	ds := []delivery{newDelivery(t, "a@example.com", 1), newDelivery(t, "b@example.com", 2), newDelivery(t, "c@example.com", 3)}
	fail := map[string]error{
		ds[0].meta.ID: fmt.Errorf("smtp DATA: %w", io.EOF),
		ds[1].meta.ID: fmt.Errorf("send: %w", &net.OpError{Op: "read", Net: "tcp", Err: os.ErrDeadlineExceeded}),
		ds[2].meta.ID: fmt.Errorf("call provider: %w", context.DeadlineExceeded),
	}
	var seen atomic.Int64
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(fail, &seen), 16, 10*time.Second)
	for _, d := range ds {
		_, err := b.Process(context.Background(), d.ev, d.meta)
		if !errors.Is(err, fail[d.meta.ID]) || eventbus.IsUnavailable(err) {
			t.Errorf("%v: want the handler's error, counted as an attempt (not eventbus.Unavailable)", err)
		}
	}
}

// TestAWaitBehindASlowBatchIsNoAttempt: a delivery whose deadline passes
// while it waits for the batch in flight never ran; its failure is marked
// eventbus.Unavailable (no attempt counted), so a slow batch ahead of it
// cannot walk it to the dead-letter queue.
func TestAWaitBehindASlowBatchIsNoAttempt(t *testing.T) {
	pool := newService(t)
	slow, waiting := newDelivery(t, "a@example.com", 1), newDelivery(t, "b@example.com", 2)
	started, release := make(chan struct{}), make(chan struct{})
	var seen atomic.Int64
	inner := batchHandler(nil, &seen)
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		if batch[0].Meta.ID == slow.meta.ID {
			close(started)
			<-release
		}
		return inner(ctx, tx, batch)
	}
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), h, 16, 10*time.Second)
	done := make(chan error, 1)
	go func() {
		_, err := b.Process(context.Background(), slow.ev, slow.meta)
		done <- err
	}()
	<-started
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := b.Process(ctx, waiting.ev, waiting.meta)
	close(release)
	if !errors.Is(err, postgres.ErrNotRun) || !errors.Is(err, context.DeadlineExceeded) || !eventbus.IsUnavailable(err) {
		t.Errorf("the delivery waiting past its deadline: %v; want postgres.ErrNotRun with the deadline, marked eventbus.Unavailable", err)
	}
	if err := <-done; err != nil {
		t.Errorf("the slow batch's delivery: %v", err)
	}
	if n := seen.Load(); n != 1 {
		t.Errorf("the handler saw %d deliveries, want the slow batch's one", n)
	}
}

// TestOutageAsksTheProbe: with WithProbe, whether a delivery's timeout is
// an outage is the probe's answer, not the pool's: the same failure is
// the database's when the probe fails, and the delivery's own when it
// answers.
func TestOutageAsksTheProbe(t *testing.T) {
	pool := newService(t)
	for _, down := range []bool{true, false} {
		d := newDelivery(t, "a@example.com", 1)
		timeout := fmt.Errorf("write stock: %w", context.DeadlineExceeded)
		var probes, seen atomic.Int64
		probe := func(context.Context) error {
			probes.Add(1)
			if down {
				return errors.New("connection refused")
			}
			return nil
		}
		r := inbox.NewRunner(pool, service, inbox.Metrics{}, inbox.WithProbe(probe))
		b := inbox.NewBatchRunner(r, batchHandler(map[string]error{d.meta.ID: timeout}, &seen), 16, 10*time.Second)
		_, err := b.Process(context.Background(), d.ev, d.meta)
		if !errors.Is(err, context.DeadlineExceeded) || eventbus.IsUnavailable(err) != down {
			t.Errorf("probe down=%v: %v: want the handler's error, marked eventbus.Unavailable only if the probe failed", down, err)
		}
		if probes.Load() != 1 {
			t.Errorf("probe down=%v: asked %d times, want once", down, probes.Load())
		}
	}
}

// TestServerEndingTheConnectionIsAnOutage: a delivery failing because
// the server ended its connection (a restart: SQLSTATE 57P01) is an
// outage even when the database answers again by the time it is judged.
func TestServerEndingTheConnectionIsAnOutage(t *testing.T) {
	pool := newService(t)
	d := newDelivery(t, "a@example.com", 1)
	restart := &pgconn.PgError{Severity: "FATAL", Code: "57P01", Message: "terminating connection due to administrator command"}
	var seen atomic.Int64
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(map[string]error{d.meta.ID: fmt.Errorf("write: %w", restart)}, &seen), 16, 10*time.Second)
	if _, err := b.Process(context.Background(), d.ev, d.meta); !errors.Is(err, restart) || !eventbus.IsUnavailable(err) {
		t.Errorf("%v: want the server's error marked eventbus.Unavailable", err)
	}
}

// TestLockTimeoutIsNoCountedAttempt: a delivery whose transaction could
// not have a lock within its lock_timeout (SQLSTATE 55P03; another
// transaction held it) failed for the database's state, not its own: the
// attempt does not count, so a compensation kept waiting does not reach
// the dead-letter queue.
func TestLockTimeoutIsNoCountedAttempt(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	holder, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Release()
	const key = 7_104_233
	if _, err := holder.Exec(ctx, `SELECT pg_advisory_lock($1)`, key); err != nil {
		t.Fatal(err)
	}
	defer holder.Exec(ctx, `SELECT pg_advisory_unlock($1)`, key)
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '100ms'`); err != nil {
			return nil, err
		}
		_, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, key)
		return make([]inbox.Result, len(batch)), err
	}
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), h, 16, 10*time.Second)
	d := newDelivery(t, "a@example.com", 1)
	_, err = b.Process(ctx, d.ev, d.meta)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "55P03" || !eventbus.IsUnavailable(err) {
		t.Errorf("Process = %v; want the lock timeout (55P03), not counted as an attempt (eventbus.Unavailable)", err)
	}
	// An old event (a replay, a backlog) is retried so too.
	old := newDelivery(t, "b@example.com", 2)
	old.meta.Time = time.Now().Add(-25 * time.Hour)
	if _, err := b.Process(ctx, old.ev, old.meta); !eventbus.IsUnavailable(err) {
		t.Errorf("Process of a day-old event = %v; want it not counted as an attempt either", err)
	}
	// After BusyRetries such retries in a row, a failure that lasting
	// counts: the delivery reaches the dead-letter queue in the end
	// rather than going round for ever.
	old.meta.OutageRetries = inbox.BusyRetries
	_, err = b.Process(ctx, old.ev, old.meta)
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "55P03" || eventbus.IsUnavailable(err) {
		t.Errorf("Process after %d uncounted retries = %v; want the lock timeout (55P03), counted as an attempt", inbox.BusyRetries, err)
	}
}

// TestBatchTooBigIsHandledInHalves: a batch the server refuses for the
// memory it took (53200, out of memory) is handled again in halves, which
// may not need as much, rather than failing whole as an outage would.
func TestBatchTooBigIsHandledInHalves(t *testing.T) {
	pool := newService(t)
	gate := newHeldGate()
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		gate.enter()
		if len(batch) > 2 {
			return nil, &pgconn.PgError{Code: "53200", Message: "out of memory"}
		}
		return make([]inbox.Result, len(batch)), nil
	}
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), h, 16, 10*time.Second)
	ds := newDeliveries(t, 9)
	for i, err := range processBehindHeldBatch(t, b, gate, ds) {
		if err != nil {
			t.Errorf("delivery %d: %v; want it handled in a smaller batch", i, err)
		}
	}
}

// openService is newService with a pool of its own on url (the test
// database, or a proxy in front of it), made with opts.
func openService(t *testing.T, url string, opts ...postgres.Option) *pgxpool.Pool {
	t.Helper()
	_, schema := postgrestest.NewSchema(t, ledger, outbox.Migrations, inbox.Migrations)
	pool, err := postgres.Open(context.Background(), url, schema, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

// TestTimeoutInABusyPoolIsNoOutage: a delivery that timed out waiting for
// one of the pool's connections, all busy, while the database answers, is
// not an outage: the check does not queue for the busy pool.
func TestTimeoutInABusyPoolIsNoOutage(t *testing.T) {
	ctx := context.Background()
	pool := openService(t, postgrestest.URL(), postgres.WithMaxConns(1))
	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()
	var seen atomic.Int64
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(nil, &seen), 16, 300*time.Millisecond)
	d := newDelivery(t, "a@example.com", 1)
	if _, err := b.Process(ctx, d.ev, d.meta); !errors.Is(err, context.DeadlineExceeded) || eventbus.IsUnavailable(err) {
		t.Errorf("%v: want a timeout counted as an attempt (not eventbus.Unavailable)", err)
	}
}

// TestStalledDatabaseIsAnOutage: a database whose packets stop (a network
// partition: no error, only silence) fails deliveries with timeouts, which
// are outages when the database does not answer a ping either; a timeout
// while it answers (a handler too slow) is the delivery's own failure.
func TestStalledDatabaseIsAnOutage(t *testing.T) {
	ctx := context.Background()
	proxy, url := postgrestest.Proxied(t)
	pool := openService(t, url)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var seen atomic.Int64
	b := inbox.NewBatchRunner(runner, batchHandler(nil, &seen), 16, 2*time.Second)
	d := newDelivery(t, "a@example.com", 5)
	if _, err := b.Process(ctx, d.ev, d.meta); err != nil {
		t.Fatalf("with the path up: %v", err)
	}

	slow := inbox.NewBatchRunner(runner, func(ctx context.Context, _ pgx.Tx, _ []inbox.Delivery) ([]inbox.Result, error) {
		<-ctx.Done()
		return nil, ctx.Err()
	}, 16, 500*time.Millisecond)
	d = newDelivery(t, "a@example.com", 6)
	if _, err := slow.Process(ctx, d.ev, d.meta); !errors.Is(err, context.DeadlineExceeded) || eventbus.IsUnavailable(err) {
		t.Errorf("a handler too slow, the database answering: %v, want a timeout counted as an attempt", err)
	}

	proxy.Blackhole()
	defer proxy.SetUp(false) // closes the stalled connections, so the pool closes at once
	d = newDelivery(t, "a@example.com", 7)
	if _, err := b.Process(ctx, d.ev, d.meta); err == nil || !eventbus.IsUnavailable(err) {
		t.Errorf("the database stalled: %v, want it marked eventbus.Unavailable", err)
	}
}

func TestBatchRunnerMissingIDIsPermanent(t *testing.T) {
	pool := newService(t)
	var seen atomic.Int64
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(nil, &seen), 16, 10*time.Second)
	d := newDelivery(t, "a@example.com", 5)
	d.meta.ID = ""
	_, err := b.Process(context.Background(), d.ev, d.meta)
	if !errors.Is(err, inbox.ErrMissingID) || !eventbus.IsPermanent(err) {
		t.Fatalf("error = %v, want a permanent ErrMissingID", err)
	}
	if n := seen.Load(); n != 0 {
		t.Errorf("handler saw %d deliveries, want none", n)
	}
}

func TestBatchRunnerEndedContext(t *testing.T) {
	pool := newService(t)
	var seen atomic.Int64
	b := inbox.NewBatchRunner(inbox.NewRunner(pool, service, inbox.Metrics{}), batchHandler(nil, &seen), 16, 10*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	d := newDelivery(t, "a@example.com", 5)
	if _, err := b.Process(ctx, d.ev, d.meta); !errors.Is(err, context.Canceled) {
		t.Fatalf("error = %v, want context.Canceled", err)
	}
	if diff := cmp.Diff(state{Totals: map[string]int64{}}, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

// waitUntil polls cond until it holds, failing the test after a minute (a
// deadline against hangs only).
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within a minute: %s", what)
		}
	}
}

// raiseDeadlock makes PostgreSQL abort tx as a deadlock would: the same
// error (SQLSTATE 40P01) from the server, the transaction unusable after.
func raiseDeadlock(ctx context.Context, tx pgx.Tx) error {
	_, err := tx.Exec(ctx, `DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01', MESSAGE = 'deadlock detected (raised by the test)'; END $$`)
	if err == nil {
		return errors.New("the raised deadlock did not fail the statement")
	}
	return err
}

// TestBatchRunnerRunsABatchAgainAfterAConflict: a batch that lost a
// deadlock or a serialization conflict runs again at once, in a new
// transaction, and its deliveries succeed without going to the retry
// queues (where each would wait and spend an attempt on the conflict).
func TestBatchRunnerRunsABatchAgainAfterAConflict(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var calls, seen atomic.Int64
	apply := batchHandler(nil, &seen)
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		if calls.Add(1) <= 2 {
			return nil, raiseDeadlock(ctx, tx)
		}
		return apply(ctx, tx, batch)
	}
	b := inbox.NewBatchRunner(runner, h, 16, 10*time.Second)
	d := newDelivery(t, "a@example.com", 7)
	out, err := b.Process(ctx, d.ev, d.meta)
	if err != nil || out != inbox.Processed {
		t.Fatalf("Process = %v, %v; want Processed after the conflicts", out, err)
	}
	if n := calls.Load(); n != 3 {
		t.Errorf("handler ran %d times, want 3 (two conflicts, then the commit)", n)
	}
	var units int64
	if err := pool.QueryRow(ctx, `SELECT units FROM totals WHERE customer = 'a@example.com'`).Scan(&units); err != nil {
		t.Fatal(err)
	}
	if units != 7 {
		t.Errorf("total = %d, want 7 (the event applied once)", units)
	}
	if out, err := b.Process(ctx, d.ev, d.meta); err != nil || out != inbox.Duplicate {
		t.Errorf("redelivery: Process = %v, %v; want Duplicate", out, err)
	}
}

// TestBatchRunnerGivesUpOnAConflictThatPersists: a batch that keeps
// losing conflicts runs ConflictRetries times more, then its deliveries
// fail with the conflict, each once per run: not handled again in halves.
// The database was too busy, not the deliveries wrong: their attempts do
// not count (eventbus.Unavailable).
func TestBatchRunnerGivesUpOnAConflictThatPersists(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	var seen atomic.Int64
	gate := newHeldGate()
	h := func(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
		gate.enter()
		seen.Add(int64(len(batch)))
		return nil, raiseDeadlock(ctx, tx)
	}
	b := inbox.NewBatchRunner(runner, h, 16, 10*time.Second)
	ds := newDeliveries(t, 9)
	errs := processBehindHeldBatch(t, b, gate, ds)
	for i, err := range errs {
		if !postgres.Conflict(err) || !eventbus.IsUnavailable(err) || eventbus.IsPermanent(err) {
			t.Errorf("delivery %d: err = %v; want the deadlock, retried without counting an attempt (eventbus.Unavailable)", i, err)
		}
	}
	runs := int64(1 + inbox.ConflictRetries)
	if n, want := seen.Load(), runs*int64(len(ds)); n != want {
		t.Errorf("handler saw %d deliveries, want %d (each of the %d in each of %d runs of its batch)", n, want, len(ds), runs)
	}
	if n, want := gate.calls.Load(), 2*runs; n != want {
		t.Errorf("handler ran %d times, want %d (two batches, %d runs each)", n, want, runs)
	}
	var inboxRows int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM inbox`).Scan(&inboxRows); err != nil {
		t.Fatal(err)
	}
	if inboxRows != 0 {
		t.Errorf("%d inbox rows after the failed batches, want 0", inboxRows)
	}
}

// newDeliveries returns n deliveries of distinct events, of one customer.
func newDeliveries(t *testing.T, n int) []delivery {
	ds := make([]delivery, n)
	for i := range ds {
		ds[i] = newDelivery(t, "a@example.com", int64(i+1))
	}
	return ds
}

// heldGate holds the first call of a handler until it is opened.
type heldGate struct {
	calls   atomic.Int64
	release chan struct{}
	once    sync.Once
}

func newHeldGate() *heldGate { return &heldGate{release: make(chan struct{})} }

// enter counts a call of the handler and holds the first until open.
func (g *heldGate) enter() {
	if g.calls.Add(1) == 1 {
		<-g.release
	}
}

func (g *heldGate) open() { g.once.Do(func() { close(g.release) }) }

// processBehindHeldBatch processes ds through b, whose handler enters g:
// the first delivery alone, held in the handler until the others have
// queued behind it, so that they share the next batch. It returns each
// delivery's error.
func processBehindHeldBatch(t *testing.T, b *inbox.BatchRunner, g *heldGate, ds []delivery) []error {
	t.Helper()
	ctx := context.Background()
	errs := make([]error, len(ds))
	var wg sync.WaitGroup
	defer wg.Wait()
	defer g.open() // on the way out too, should the test fail while holding it
	wg.Go(func() { _, errs[0] = b.Process(ctx, ds[0].ev, ds[0].meta) })
	waitUntil(t, "the first batch in the handler", func() bool { return g.calls.Load() > 0 })
	for i := 1; i < len(ds); i++ {
		wg.Go(func() { _, errs[i] = b.Process(ctx, ds[i].ev, ds[i].meta) })
	}
	waitUntil(t, fmt.Sprintf("%d deliveries queued behind the first batch", len(ds)-1), func() bool {
		return b.Queued() == len(ds)-1
	})
	g.open()
	wg.Wait()
	return errs
}
