package inbox_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// ledger is the test service's domain: a non-idempotent running total per
// customer and one row per application, so any double effect shows.
var ledger = postgres.Source{Name: "ledger", FS: fstest.MapFS{
	"001_ledger.sql": {Data: []byte(`
		CREATE TABLE totals (customer text PRIMARY KEY, units bigint NOT NULL);
		CREATE TABLE applied (event_id text NOT NULL);`)},
}}

const service = "ledger"

func newService(t testing.TB) *pgxpool.Pool {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, ledger, outbox.Migrations, inbox.Migrations)
	return pool
}

// handleOrderCreated adds the order's total to its customer's running total
// and emits OrderConfirmed.
func handleOrderCreated(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
	if _, err := tx.Exec(ctx, `
		INSERT INTO totals (customer, units) VALUES ($1, $2)
		ON CONFLICT (customer) DO UPDATE SET units = totals.units + excluded.units`,
		ev.GetCustomerEmail(), ev.GetTotal().GetUnits()); err != nil {
		return nil, err
	}
	if _, err := tx.Exec(ctx, `INSERT INTO applied (event_id) VALUES ($1)`, meta.ID); err != nil {
		return nil, err
	}
	return []proto.Message{&orderv1.OrderConfirmed{
		OrderId:       ev.GetOrderId(),
		CustomerEmail: ev.GetCustomerEmail(),
		Total:         ev.GetTotal(),
	}}, nil
}

// delivery is an event as the bus hands it to a handler.
type delivery struct {
	ev   *orderv1.OrderCreated
	meta eventbus.Meta
}

func newDelivery(t testing.TB, customer string, units int64) delivery {
	t.Helper()
	ev := &orderv1.OrderCreated{
		OrderId:       uuid.NewString(),
		CustomerEmail: customer,
		Total:         &moneyv1.Money{CurrencyCode: "EUR", Units: units},
	}
	m, err := eventbus.NewMessage(ev, "order", ev.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	m.TraceParent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	return delivery{ev: ev, meta: m.Meta}
}

type state struct {
	Totals  map[string]int64
	Applied int
	Inbox   int
	Outbox  int
}

func readState(t *testing.T, pool *pgxpool.Pool) state {
	t.Helper()
	ctx := context.Background()
	s := state{Totals: map[string]int64{}}
	rows, err := pool.Query(ctx, `SELECT customer, units FROM totals`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var c string
		var u int64
		if err := rows.Scan(&c, &u); err != nil {
			t.Fatal(err)
		}
		s.Totals[c] = u
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for q, dst := range map[string]*int{
		`SELECT count(*) FROM applied`: &s.Applied,
		`SELECT count(*) FROM inbox`:   &s.Inbox,
		`SELECT count(*) FROM outbox`:  &s.Outbox,
	} {
		if err := pool.QueryRow(ctx, q).Scan(dst); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func TestSameEventTwiceAppliesOnce(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	var commits atomic.Int64
	runner := inbox.NewRunner(pool, service, inbox.Metrics{}, inbox.OnCommit(func() { commits.Add(1) }))
	handle := inbox.Wrap(runner, handleOrderCreated)

	d := newDelivery(t, "a@example.com", 10)
	for i := range 2 {
		if err := handle(ctx, d.ev, d.meta); err != nil {
			t.Fatalf("delivery %d: %v", i+1, err)
		}
	}
	if n := commits.Load(); n != 1 {
		t.Errorf("OnCommit called %d times, want once: the duplicate committed nothing", n)
	}
	want := state{Totals: map[string]int64{"a@example.com": 10}, Applied: 1, Inbox: 1, Outbox: 1}
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(inbox.Counts{Processed: 1, Duplicates: 1}, runner.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}

	// The outgoing event is attributed to this service and continues the
	// incoming event's correlation and trace.
	var source, corr, trace, typ string
	if err := pool.QueryRow(ctx, `SELECT source, correlation_id, trace_parent, type FROM outbox`).Scan(&source, &corr, &trace, &typ); err != nil {
		t.Fatal(err)
	}
	got := []string{source, corr, trace, typ}
	wantRow := []string{service, d.meta.CorrelationID, d.meta.TraceParent, "ordermesh.order.v1.OrderConfirmed"}
	if diff := cmp.Diff(wantRow, got); diff != "" {
		t.Errorf("outbox row (-want +got):\n%s", diff)
	}
}

func TestConcurrentDuplicatesApplyOnce(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	var dupHook sync.Map
	runner := inbox.NewRunner(pool, service, inbox.Metrics{
		Duplicate: func(m eventbus.Meta) { dupHook.Store(m.ID, true) },
	})
	d := newDelivery(t, "a@example.com", 7)

	const copies = 6
	outcomes := make([]inbox.Outcome, copies)
	errs := make([]error, copies)
	var wg sync.WaitGroup
	for i := range copies {
		wg.Go(func() {
			outcomes[i], errs[i] = runner.Process(ctx, d.meta, func(ctx context.Context, tx pgx.Tx) ([]proto.Message, error) {
				return handleOrderCreated(ctx, tx, d.ev, d.meta)
			})
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	byOutcome := map[inbox.Outcome]int{}
	for _, o := range outcomes {
		byOutcome[o]++
	}
	if diff := cmp.Diff(map[inbox.Outcome]int{inbox.Processed: 1, inbox.Duplicate: copies - 1}, byOutcome); diff != "" {
		t.Errorf("outcomes (-want +got):\n%s", diff)
	}
	want := state{Totals: map[string]int64{"a@example.com": 7}, Applied: 1, Inbox: 1, Outbox: 1}
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if _, ok := dupHook.Load(d.meta.ID); !ok {
		t.Error("Duplicate hook not called")
	}
}

func TestBatchRedeliveredOutOfOrderAppliesEachOnce(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	handle := inbox.Wrap(runner, handleOrderCreated)

	var batch []delivery
	want := state{Totals: map[string]int64{}}
	for i := range 20 {
		customer := fmt.Sprintf("c%d@example.com", i%3)
		d := newDelivery(t, customer, int64(i+1))
		batch = append(batch, d)
		want.Totals[customer] += int64(i + 1)
	}
	want.Applied, want.Inbox, want.Outbox = len(batch), len(batch), len(batch)

	// First the second half, then everything shuffled, twice: each event
	// arrives two or three times, in no particular order.
	deliveries := append([]delivery{}, batch[10:]...)
	rng := rand.New(rand.NewPCG(1, 2))
	for range 2 {
		shuffled := append([]delivery{}, batch...)
		rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
		deliveries = append(deliveries, shuffled...)
	}
	for i, d := range deliveries {
		if err := handle(ctx, d.ev, d.meta); err != nil {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	wantCounts := inbox.Counts{Processed: int64(len(batch)), Duplicates: int64(len(deliveries) - len(batch))}
	if diff := cmp.Diff(wantCounts, runner.Counts()); diff != "" {
		t.Errorf("counts (-want +got):\n%s", diff)
	}
}

func TestHandlerErrorCommitsNothing(t *testing.T) {
	ctx := context.Background()
	errDown := errors.New("downstream unavailable")
	tests := []struct {
		name          string
		err           error
		wantPermanent bool
	}{
		{name: "transient", err: errDown},
		{name: "permanent", err: eventbus.Permanent(errDown), wantPermanent: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := newService(t)
			runner := inbox.NewRunner(pool, service, inbox.Metrics{})
			d := newDelivery(t, "a@example.com", 5)

			// The handler did its writes, then failed.
			failing := inbox.Wrap(runner, func(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
				if _, err := handleOrderCreated(ctx, tx, ev, meta); err != nil {
					return nil, err
				}
				return nil, tt.err
			})
			err := failing(ctx, d.ev, d.meta)
			if !errors.Is(err, errDown) {
				t.Fatalf("handler error = %v, want it to wrap %v", err, errDown)
			}
			if got := eventbus.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("IsPermanent = %v, want %v", got, tt.wantPermanent)
			}
			want := state{Totals: map[string]int64{}}
			if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
				t.Errorf("state after a failed handler (-want +got):\n%s", diff)
			}

			// The bus's retry then succeeds, once.
			ok := inbox.Wrap(runner, handleOrderCreated)
			for range 2 {
				if err := ok(ctx, d.ev, d.meta); err != nil {
					t.Fatal(err)
				}
			}
			want = state{Totals: map[string]int64{"a@example.com": 5}, Applied: 1, Inbox: 1, Outbox: 1}
			if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
				t.Errorf("state after the retry (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(inbox.Counts{Processed: 1, Duplicates: 1, Failed: 1}, runner.Counts()); diff != "" {
				t.Errorf("counts (-want +got):\n%s", diff)
			}
		})
	}
}

func TestBadOutgoingEventRollsBack(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	d := newDelivery(t, "a@example.com", 5)
	// Money is not an event: it declares no routing key.
	_, err := runner.Process(ctx, d.meta, func(ctx context.Context, tx pgx.Tx) ([]proto.Message, error) {
		if _, err := handleOrderCreated(ctx, tx, d.ev, d.meta); err != nil {
			return nil, err
		}
		return []proto.Message{&moneyv1.Money{}}, nil
	})
	if !errors.Is(err, eventbus.ErrNotEvent) {
		t.Fatalf("Process = %v, want ErrNotEvent", err)
	}
	if diff := cmp.Diff(state{Totals: map[string]int64{}}, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

func TestMissingIDIsPermanent(t *testing.T) {
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	d := newDelivery(t, "a@example.com", 5)
	d.meta.ID = ""
	err := inbox.Wrap(runner, handleOrderCreated)(context.Background(), d.ev, d.meta)
	if !errors.Is(err, inbox.ErrMissingID) || !eventbus.IsPermanent(err) {
		t.Fatalf("error = %v, want a permanent ErrMissingID", err)
	}
	if diff := cmp.Diff(state{Totals: map[string]int64{}}, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

func TestProcessTxSharesATransaction(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{})
	good, bad, dup := newDelivery(t, "a@example.com", 1), newDelivery(t, "b@example.com", 2), newDelivery(t, "a@example.com", 4)
	errBad := errors.New("bad")
	work := func(d delivery, fail bool) inbox.Work {
		return func(ctx context.Context, tx pgx.Tx) ([]proto.Message, error) {
			evs, err := handleOrderCreated(ctx, tx, d.ev, d.meta)
			if fail {
				return nil, errBad
			}
			return evs, err
		}
	}
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		steps := []struct {
			d       delivery
			fail    bool
			want    inbox.Outcome
			wantErr error
		}{
			{good, false, inbox.Processed, nil},
			{bad, true, 0, errBad},
			{dup, false, inbox.Processed, nil},
			{dup, false, inbox.Duplicate, nil},
		}
		for i, s := range steps {
			got, err := runner.ProcessTx(ctx, tx, s.d.meta, work(s.d, s.fail))
			if got != s.want || !errors.Is(err, s.wantErr) {
				t.Errorf("step %d: ProcessTx = %v, %v; want %v, %v", i, got, err, s.want, s.wantErr)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The failed delivery's writes were undone; the others committed.
	want := state{Totals: map[string]int64{"a@example.com": 5}, Applied: 2, Inbox: 2, Outbox: 2}
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
}

// TestPrune: rows older than the retention go, more than one DELETE's
// worth (pruneBatch, 10,000) of them; newer ones stay.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	const old = 25_000
	if _, err := pool.Exec(ctx, `
		INSERT INTO inbox (event_id, processed_at)
		SELECT 'old-' || i, now() - interval '2 hours' FROM generate_series(1, $1) i
		UNION ALL
		SELECT 'new-' || i, now() - interval '10 minutes' FROM generate_series(1, 3) i`, old); err != nil {
		t.Fatal(err)
	}
	n, err := inbox.Prune(ctx, pool, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if n != old {
		t.Errorf("Prune deleted %d rows, want %d", n, old)
	}
	var left []string
	rows, err := pool.Query(ctx, `SELECT event_id FROM inbox ORDER BY event_id`)
	if err != nil {
		t.Fatal(err)
	}
	left, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"new-1", "new-2", "new-3"}, left); diff != "" {
		t.Errorf("rows left (-want +got):\n%s", diff)
	}
	if _, err := inbox.Prune(ctx, pool, 0); err == nil || !strings.Contains(err.Error(), "positive") {
		t.Errorf("Prune with zero retention = %v, want an error", err)
	}
}

// TestBatchingAppliesEachEventOnceAndIsolatesFailures runs concurrent
// deliveries through a batching runner: every event (delivered two or
// three times, concurrently) applies once, a failing handler fails only
// its own delivery, and the deliveries share transactions.
func TestBatchingAppliesEachEventOnceAndIsolatesFailures(t *testing.T) {
	ctx := context.Background()
	pool := newService(t)
	runner := inbox.NewRunner(pool, service, inbox.Metrics{}, inbox.WithBatching(64, 2, 10*time.Second))
	var events []delivery
	want := state{Totals: map[string]int64{}}
	for i := range 30 {
		// One customer per order: deliveries of different orders run in
		// different lanes and must not lock the same rows.
		customer := fmt.Sprintf("c%d@example.com", i)
		d := newDelivery(t, customer, int64(i+1))
		events = append(events, d)
		if i != 13 {
			want.Totals[customer] += int64(i + 1)
		}
	}
	failing := events[13].meta.ID
	handle := inbox.Wrap(runner, func(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
		if meta.ID == failing {
			return nil, errors.New("this handler fails")
		}
		return handleOrderCreated(ctx, tx, ev, meta)
	})
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
	for i, err := range errs {
		if (err != nil) != (deliveries[i].meta.ID == failing) {
			t.Errorf("delivery %d: err = %v", i, err)
		}
	}
	want.Applied, want.Inbox, want.Outbox = len(events)-1, len(events)-1, len(events)-1
	if diff := cmp.Diff(want, readState(t, pool)); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	tx, n := runner.Batches()
	if n != int64(len(deliveries)) || tx >= n {
		t.Errorf("%d deliveries in %d transactions; want all %d, sharing transactions", n, tx, len(deliveries))
	}
	t.Logf("%d deliveries in %d transactions", n, tx)
}
