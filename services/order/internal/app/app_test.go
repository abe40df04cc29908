package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/logtest"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	pool   *pgxpool.Pool
	schema string
	app    *app.App
}

// create places an order of request() on f's app, failing the test if it
// cannot.
func (f fixture) create(t *testing.T) order.Order {
	t.Helper()
	o, err := f.app.Create(context.Background(), request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	return o
}

// newFixture gives a test its own migrated schema and an App running its
// watcher until the test ends.
func newFixture(t *testing.T) fixture {
	t.Helper()
	pool, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	return fixture{pool: pool, schema: schema, app: newApp(t, pool, schema)}
}

// newApp starts another instance of the service on the same schema.
func newApp(t *testing.T, pool *pgxpool.Pool, schema string) *app.App {
	t.Helper()
	return newAppLogging(t, pool, schema, quiet)
}

// newAppLogging is newApp with the instance logging to log.
func newAppLogging(t *testing.T, pool *pgxpool.Pool, schema string, log *slog.Logger) *app.App {
	t.Helper()
	w := store.NewWatcher(pool.Config().ConnConfig, schema, quiet)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = w.Run(ctx)
	}()
	t.Cleanup(func() { cancel(); <-done })
	return app.New(pool, w, log, nil)
}

func request() order.Request {
	return order.Request{
		RequestID:     uuid.NewString(),
		CustomerEmail: "ada@example.com",
		Items: []order.LineItem{
			{ProductID: "SKU-1", Quantity: 2, UnitPrice: order.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500000000}},
			{ProductID: "SKU-2", Quantity: 1, UnitPrice: order.Money{CurrencyCode: "EUR", Units: 1}},
		},
		PaymentToken: "tok_visa",
	}
}

// backdateOrders makes the orders with ids (every order when none is
// given) placed ago: stale, for a timeout shorter than ago.
func backdateOrders(t *testing.T, f fixture, ago time.Duration, ids ...string) {
	t.Helper()
	if _, err := f.pool.Exec(context.Background(), `
		UPDATE orders SET create_time = now() - $1::interval
		WHERE coalesce(cardinality($2::uuid[]), 0) = 0 OR id = ANY($2::uuid[])`, ago, ids); err != nil {
		t.Fatal(err)
	}
}

// backdateOutbox makes every event waiting in the outbox written ago: a
// backlog, for a timeout shorter than ten times ago.
func backdateOutbox(t *testing.T, f fixture, ago time.Duration) {
	t.Helper()
	if _, err := f.pool.Exec(context.Background(), `UPDATE outbox SET created_at = now() - $1::interval`, ago); err != nil {
		t.Fatal(err)
	}
}

// outboxTypes lists the event types waiting in the outbox, oldest first.
func outboxTypes(t *testing.T, pool *pgxpool.Pool) []string {
	t.Helper()
	rows, err := pool.Query(context.Background(), `SELECT type FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	types, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	return types
}

func TestCreateComputesTotalAndWritesEvent(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o, err := f.app.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if want := (order.Money{CurrencyCode: "EUR", Units: 20}); o.Total != want {
		t.Errorf("total = %v, want %v", o.Total, want)
	}
	if o.Status != order.StatusPending {
		t.Errorf("status = %v, want PENDING", o.Status)
	}
	got, err := f.app.Get(ctx, o.ID)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.ID != o.ID || got.Total != o.Total || len(got.Items) != 2 || !got.CreateTime.Equal(o.CreateTime) {
		t.Errorf("stored order %+v differs from created %+v", got, o)
	}
	if types := outboxTypes(t, f.pool); len(types) != 1 || types[0] != "ordermesh.order.v1.OrderCreated" {
		t.Errorf("outbox = %v, want one OrderCreated", types)
	}
}

// TestCommitsWithEventsWakeTheRelay: Create and Cancel call the wake
// function after committing their events; a repeated Create, which writes
// none, does not.
func TestCommitsWithEventsWakeTheRelay(t *testing.T) {
	pool, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	var wakes atomic.Int64
	a := app.New(pool, store.NewWatcher(pool.Config().ConnConfig, schema, quiet), quiet, func() { wakes.Add(1) })
	ctx := context.Background()
	req := request()
	o, err := a.Create(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	if n := wakes.Load(); n != 1 {
		t.Errorf("after Create: %d wake-ups, want 1", n)
	}
	if _, err := a.Create(ctx, req); err != nil {
		t.Fatal(err)
	}
	if n := wakes.Load(); n != 1 {
		t.Errorf("after a repeated Create: %d wake-ups, want still 1", n)
	}
	if _, err := a.Cancel(ctx, o.ID, "no longer needed"); err != nil {
		t.Fatal(err)
	}
	if n := wakes.Load(); n != 2 {
		t.Errorf("after Cancel: %d wake-ups, want 2", n)
	}
}

func TestCreateIsIdempotentOnRequestID(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	req := request()
	first, err := f.app.Create(ctx, req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	again, err := f.app.Create(ctx, req)
	if err != nil {
		t.Fatalf("repeat create: %v", err)
	}
	if again.ID != first.ID {
		t.Errorf("repeat returned order %s, want %s", again.ID, first.ID)
	}
	if n := len(outboxTypes(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d events after a repeated request, want 1", n)
	}

	changed := req
	changed.CustomerEmail = "grace@example.com"
	if _, err := f.app.Create(ctx, changed); !errors.Is(err, order.ErrRequestConflict) {
		t.Errorf("same request id, other payload: err = %v, want ErrRequestConflict", err)
	}
}

func TestCreateConcurrentRepeatsMakeOneOrder(t *testing.T) {
	f := newFixture(t)
	req := request()
	var g errgroup.Group
	ids := make([]string, 8)
	for i := range ids {
		g.Go(func() error {
			o, err := f.app.Create(context.Background(), req)
			ids[i] = o.ID
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("create: %v", err)
	}
	for _, id := range ids {
		if id != ids[0] {
			t.Fatalf("concurrent repeats returned different orders: %v", ids)
		}
	}
	if n := len(outboxTypes(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d events, want 1", n)
	}
}

// TestCreateRepeatsAmongNewOrders sends repeats of a placed request
// concurrently with new requests, so batches mix them: the one-round-trip
// write refuses such a batch and it is written again resolving the
// repeats; every new order is placed once and every repeat gets the first
// order.
func TestCreateRepeatsAmongNewOrders(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	placed := request()
	first, err := f.app.Create(ctx, placed)
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	repeats := make([]string, 16)
	for i := range repeats {
		g.Go(func() error {
			o, err := f.app.Create(ctx, placed)
			repeats[i] = o.ID
			return err
		})
		g.Go(func() error {
			_, err := f.app.Create(ctx, request())
			return err
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("create: %v", err)
	}
	for _, id := range repeats {
		if id != first.ID {
			t.Fatalf("repeats returned %v, want %s each time", repeats, first.ID)
		}
	}
	var orders int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM orders`).Scan(&orders); err != nil {
		t.Fatal(err)
	}
	if want := 1 + len(repeats); orders != want || len(outboxTypes(t, f.pool)) != want {
		t.Errorf("%d orders and %d outbox events, want %d of each", orders, len(outboxTypes(t, f.pool)), want)
	}
	// The connection a refused one-round-trip write used is usable again.
	if _, err := f.app.Create(ctx, request()); err != nil {
		t.Errorf("create after the repeats: %v", err)
	}
}

func TestCreateRejectsMixedCurrency(t *testing.T) {
	f := newFixture(t)
	req := request()
	req.Items[1].UnitPrice.CurrencyCode = "USD"
	if _, err := f.app.Create(context.Background(), req); !errors.Is(err, order.ErrMixedCurrency) {
		t.Fatalf("err = %v, want ErrMixedCurrency", err)
	}
}

func TestGetUnknown(t *testing.T) {
	f := newFixture(t)
	if _, err := f.app.Get(context.Background(), uuid.NewString()); !errors.Is(err, order.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestListPagesAndFilters(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	var created []string
	for i := range 7 {
		req := request()
		if i%2 == 1 {
			req.CustomerEmail = "grace@example.com"
		}
		o, err := f.app.Create(ctx, req)
		if err != nil {
			t.Fatalf("create: %v", err)
		}
		created = append(created, o.ID)
	}
	if _, err := f.app.Cancel(ctx, created[0], "test"); err != nil {
		t.Fatalf("cancel: %v", err)
	}

	// All orders, newest first, three per page, the pages alternately
	// with and without line items.
	var got []string
	token := ""
	for page := 0; ; page++ {
		withItems := page%2 == 0
		orders, next, err := f.app.List(ctx, store.Filter{}, 3, token, withItems)
		if err != nil {
			t.Fatalf("list page %d: %v", page, err)
		}
		for _, o := range orders {
			got = append(got, o.ID)
			whole, err := f.app.Get(ctx, o.ID)
			if err != nil {
				t.Fatalf("get %s: %v", o.ID, err)
			}
			if !withItems {
				whole.Items = nil
			}
			if diff := cmp.Diff(whole, o); diff != "" {
				t.Errorf("page %d (items: %v) lists order %s as (-got by Get +listed):\n%s", page, withItems, o.ID, diff)
			}
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(got) != len(created) {
		t.Fatalf("listed %d orders, want %d", len(got), len(created))
	}
	for i := range got {
		if got[i] != created[len(created)-1-i] {
			t.Fatalf("listing order %v, want newest first %v", got, created)
		}
	}

	grace, _, err := f.app.List(ctx, store.Filter{CustomerEmail: "grace@example.com"}, 0, "", true)
	if err != nil || len(grace) != 3 {
		t.Errorf("filter by email: %d orders, err %v; want 3", len(grace), err)
	}
	cancelled, _, err := f.app.List(ctx, store.Filter{Status: order.StatusCancelled}, 0, "", true)
	if err != nil || len(cancelled) != 1 || cancelled[0].ID != created[0] {
		t.Errorf("filter by status: %v, err %v; want the cancelled order", cancelled, err)
	}

	_, next, err := f.app.List(ctx, store.Filter{}, 2, "", true)
	if err != nil || next == "" {
		t.Fatalf("first page: next %q, err %v", next, err)
	}
	if _, _, err := f.app.List(ctx, store.Filter{Status: order.StatusPending}, 2, next, true); !errors.Is(err, app.ErrInvalidPageToken) {
		t.Errorf("token for another filter: err = %v, want ErrInvalidPageToken", err)
	}
	if _, _, err := f.app.List(ctx, store.Filter{}, 2, "garbage!", true); !errors.Is(err, app.ErrInvalidPageToken) {
		t.Errorf("garbage token: err = %v, want ErrInvalidPageToken", err)
	}
}

// delivery makes ev a delivery as the bus would hand it over.
func delivery(t testing.TB, ev proto.Message) inbox.Delivery {
	t.Helper()
	key, err := eventbus.RoutingKey(ev.ProtoReflect().Descriptor())
	if err != nil {
		t.Fatalf("routing key: %v", err)
	}
	return inbox.Delivery{Event: ev, Meta: eventbus.Meta{
		ID: uuid.NewString(), Type: string(ev.ProtoReflect().Descriptor().FullName()),
		RoutingKey: key, Source: "test", Time: time.Now().UTC(),
	}}
}

// handle runs Handle on a batch of events in one transaction, like the
// inbox runner, and returns each event's error. The transaction commits
// even when some events failed, as the runner's does; an error of the
// handler itself fails the test.
func handle(t *testing.T, f fixture, events ...proto.Message) []error {
	t.Helper()
	ctx := context.Background()
	batch := make([]inbox.Delivery, len(events))
	for i, ev := range events {
		batch[i] = delivery(t, ev)
	}
	var results []inbox.Result
	err := postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
		var err error
		results, err = f.app.Handle(ctx, tx, batch)
		return err
	})
	if err != nil {
		t.Fatalf("handle %d events: %v", len(events), err)
	}
	if len(results) != len(events) {
		t.Fatalf("handle %d events: %d results", len(events), len(results))
	}
	errs := make([]error, len(results))
	for i, r := range results {
		if len(r.Events) > 0 {
			t.Errorf("event %d: Handle returned events for the runner, want them in its own outbox writes", i)
		}
		errs[i] = r.Err
	}
	return errs
}

// handleAllOK runs Handle on batch in tx and returns its error, or the
// first delivery's error.
func handleAllOK(ctx context.Context, f fixture, tx pgx.Tx, batch []inbox.Delivery) error {
	results, err := f.app.Handle(ctx, tx, batch)
	if err != nil {
		return err
	}
	for i, r := range results {
		if r.Err != nil {
			return fmt.Errorf("event %d: %w", i, r.Err)
		}
	}
	return nil
}

// inTx handles one event alone and returns its error.
func inTx(t *testing.T, f fixture, ev proto.Message) error {
	t.Helper()
	return handle(t, f, ev)[0]
}

func TestOutcomesConfirmThenCancel(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o, err := f.app.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := inTx(t, f, &paymentv1.PaymentSucceeded{OrderId: o.ID, PaymentId: "ch_1"}); err != nil {
		t.Fatalf("payment succeeded: %v", err)
	}
	if got, _ := f.app.Get(ctx, o.ID); got.Status != order.StatusPending {
		t.Fatalf("after payment only: %v, want PENDING", got.Status)
	}
	if err := inTx(t, f, &inventoryv1.StockReserved{OrderId: o.ID}); err != nil {
		t.Fatalf("stock reserved: %v", err)
	}
	if got, _ := f.app.Get(ctx, o.ID); got.Status != order.StatusConfirmed {
		t.Fatalf("after both: %v, want CONFIRMED", got.Status)
	}
	if _, err := f.app.Cancel(ctx, o.ID, "changed my mind"); err != nil {
		t.Fatalf("cancel confirmed: %v", err)
	}
	if _, err := f.app.Cancel(ctx, o.ID, "again"); !errors.Is(err, order.ErrNotCancellable) {
		t.Fatalf("cancel twice: err = %v, want ErrNotCancellable", err)
	}
	want := []string{"ordermesh.order.v1.OrderCreated", "ordermesh.order.v1.OrderConfirmed", "ordermesh.order.v1.OrderCancelled"}
	if got := outboxTypes(t, f.pool); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("outbox = %v, want %v", got, want)
	}
}

func TestOutcomeRejects(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o, err := f.app.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	if err := inTx(t, f, &inventoryv1.StockReservationFailed{OrderId: o.ID, Reason: "out of stock: SKU-1"}); err != nil {
		t.Fatalf("stock failed: %v", err)
	}
	// A late success changes nothing.
	if err := inTx(t, f, &paymentv1.PaymentSucceeded{OrderId: o.ID, PaymentId: "ch_1"}); err != nil {
		t.Fatalf("late payment: %v", err)
	}
	got, err := f.app.Get(ctx, o.ID)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	if got.Status != order.StatusRejected || got.StatusReason != "out of stock: SKU-1" {
		t.Errorf("order = %v %q, want REJECTED with the stock reason", got.Status, got.StatusReason)
	}
	want := []string{"ordermesh.order.v1.OrderCreated", "ordermesh.order.v1.OrderRejected"}
	if got := outboxTypes(t, f.pool); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("outbox = %v, want %v", got, want)
	}
}

func TestOutcomeForUnknownOrderIsPermanent(t *testing.T) {
	f := newFixture(t)
	err := inTx(t, f, &inventoryv1.StockReserved{OrderId: uuid.NewString()})
	if !eventbus.IsPermanent(err) || !errors.Is(err, order.ErrNotFound) {
		t.Fatalf("err = %v, want a permanent ErrNotFound", err)
	}
}

// TestWatchSeesChangesFromAnotherInstance watches through one App while a
// second App on its own pool (another instance of the service) changes the
// order.
func TestWatchSeesChangesFromAnotherInstance(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	o, err := f.app.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	otherPool, err := postgres.Open(ctx, postgrestest.URL(), f.schema)
	if err != nil {
		t.Fatalf("open second pool: %v", err)
	}
	defer otherPool.Close()
	other := newApp(t, otherPool, f.schema)

	var mu sync.Mutex
	var seen []order.Status
	first := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- f.app.Watch(ctx, o.ID, func(o order.Order) error {
			mu.Lock()
			seen = append(seen, o.Status)
			if len(seen) == 1 {
				close(first)
			}
			mu.Unlock()
			return nil
		})
	}()
	select {
	case <-first:
	case <-ctx.Done():
		t.Fatal("no first snapshot")
	}
	if _, err := other.Cancel(ctx, o.ID, "from another instance"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("watch did not end after the order became terminal")
	}
	mu.Lock()
	defer mu.Unlock()
	if fmt.Sprint(seen) != "[PENDING CANCELLED]" {
		t.Errorf("watch saw %v, want [PENDING CANCELLED]", seen)
	}
}

// TestWatchReadsAreBounded: when every watch is signalled at once, at
// most half the pool's connections read the watched orders; the others
// are left to Create and the handlers. The reads are held up here by a
// lock on the orders table, and the watches signalled by notifications
// sent by hand, which touch no table.
func TestWatchReadsAreBounded(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	bound := int(max(1, f.pool.Config().MaxConns/2))
	watches := 4 * bound
	var ids []string
	for range watches {
		o := f.create(t)
		ids = append(ids, o.ID)
	}
	var g errgroup.Group
	defer func() {
		cancel()
		_ = g.Wait()
	}()
	var snapshots atomic.Int64
	for _, id := range ids {
		g.Go(func() error {
			return f.app.Watch(ctx, id, func(order.Order) error { snapshots.Add(1); return nil })
		})
	}
	waitFor(t, 10*time.Second, "every watch's first snapshot", func() bool { return snapshots.Load() == int64(watches) })

	lock, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Rollback(context.Background())
	if _, err := lock.Exec(ctx, `LOCK TABLE orders IN ACCESS EXCLUSIVE MODE`); err != nil {
		t.Fatal(err)
	}
	// A connection of the test's own: the pool's may all be taken.
	conn, err := pgx.Connect(ctx, postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	for _, id := range ids {
		if _, err := conn.Exec(ctx, `SELECT pg_notify($1, $2)`, "orders."+f.schema, id); err != nil {
			t.Fatal(err)
		}
	}
	// waiting counts the pool's connections waiting for the table's lock.
	waiting := func() int {
		var n int
		if err := conn.QueryRow(ctx, `
			SELECT count(*) FROM pg_stat_activity
			WHERE application_name = $1 AND wait_event_type = 'Lock'`, "ordermesh-test-"+f.schema).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	waitFor(t, 10*time.Second, "watch reads waiting for the lock", func() bool { return waiting() >= bound })
	time.Sleep(500 * time.Millisecond) // time for more to start, were they not bounded
	if n := waiting(); n != bound {
		t.Errorf("%d watch reads at once for %d signalled watches, want %d: half the pool's %d connections", n, watches, bound, f.pool.Config().MaxConns)
	}
}

func TestWatchUnknownOrder(t *testing.T) {
	f := newFixture(t)
	err := f.app.Watch(context.Background(), uuid.NewString(), func(order.Order) error { return nil })
	if !errors.Is(err, order.ErrNotFound) {
		t.Fatalf("err = %v, want ErrNotFound", err)
	}
}

func TestTimelineRecordsPublishedAndConsumedEvents(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o, err := f.app.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	steps := []func() error{
		func() error {
			return inTx(t, f, &inventoryv1.StockReserved{OrderId: o.ID, Items: []*inventoryv1.StockLine{{ProductId: "SKU-1", Quantity: 2}}})
		},
		func() error {
			return inTx(t, f, &paymentv1.PaymentFailed{OrderId: o.ID, Reason: "card declined"})
		},
		func() error {
			return inTx(t, f, &inventoryv1.StockReleased{OrderId: o.ID, Items: []*inventoryv1.StockLine{{ProductId: "SKU-1", Quantity: 2}}})
		},
		func() error {
			return inTx(t, f, &notificationv1.NotificationSent{OrderId: o.ID, Recipient: "ada@example.com", Kind: notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_REJECTED})
		},
	}
	for i, step := range steps {
		if err := step(); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	events, err := f.app.Events(ctx, o.ID)
	if err != nil {
		t.Fatalf("events: %v", err)
	}
	var got []string
	for _, e := range events {
		got = append(got, e.RoutingKey+": "+e.Summary)
	}
	want := []string{
		"order.created: 2 line(s), total EUR 20.00",
		"stock.reserved: reserved 2 unit(s)",
		"payment.failed: card declined",
		"order.rejected: card declined",
		"stock.released: released 2 unit(s)",
		"notification.sent: emailed ada@example.com: order rejected",
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("timeline:\n got %q\nwant %q", got, want)
	}
	if _, err := f.app.Events(ctx, uuid.NewString()); !errors.Is(err, order.ErrNotFound) {
		t.Errorf("events of an unknown order: %v, want ErrNotFound", err)
	}
}

// timeline lists order id's timeline as "routing key: summary".
func timeline(t *testing.T, f fixture, id string) []string {
	t.Helper()
	events, err := f.app.Events(context.Background(), id)
	if err != nil {
		t.Fatalf("events of %s: %v", id, err)
	}
	var got []string
	for _, e := range events {
		got = append(got, e.RoutingKey+": "+e.Summary)
	}
	return got
}

func TestHandleAppliesABatchInArrivalOrder(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	confirmed := f.create(t)
	rejected := f.create(t)
	errs := handle(t, f,
		&paymentv1.PaymentSucceeded{OrderId: confirmed.ID, PaymentId: "ch_1", Amount: &moneyv1.Money{CurrencyCode: "EUR", Units: 20}},
		&inventoryv1.StockReservationFailed{OrderId: rejected.ID, Reason: "out of stock: SKU-2"},
		&inventoryv1.StockReserved{OrderId: confirmed.ID},
		// Late for an order rejected earlier in the batch: no change.
		&paymentv1.PaymentSucceeded{OrderId: rejected.ID, PaymentId: "ch_2"},
		&paymentv1.PaymentRefunded{OrderId: rejected.ID, PaymentId: "ch_2", Amount: &moneyv1.Money{CurrencyCode: "EUR", Units: 20}},
		// Twice in one batch under two ids: the second changes nothing.
		&inventoryv1.StockReserved{OrderId: confirmed.ID},
	)
	for i, err := range errs {
		if err != nil {
			t.Errorf("event %d: %v", i, err)
		}
	}
	if got, _ := f.app.Get(ctx, confirmed.ID); got.Status != order.StatusConfirmed || got.PaymentID != "ch_1" {
		t.Errorf("first order is %v with payment %q, want CONFIRMED with ch_1", got.Status, got.PaymentID)
	}
	if got, _ := f.app.Get(ctx, rejected.ID); got.Status != order.StatusRejected || got.StatusReason != "out of stock: SKU-2" || got.PaymentSucceeded {
		t.Errorf("second order is %v %q (paid %v), want REJECTED for the stock and the late payment ignored", got.Status, got.StatusReason, got.PaymentSucceeded)
	}
	want := []string{
		"ordermesh.order.v1.OrderCreated", "ordermesh.order.v1.OrderCreated",
		"ordermesh.order.v1.OrderRejected", "ordermesh.order.v1.OrderConfirmed",
	}
	if got := outboxTypes(t, f.pool); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("outbox = %v, want %v", got, want)
	}
	if got, want := timeline(t, f, confirmed.ID), []string{
		"order.created: 2 line(s), total EUR 20.00",
		"payment.succeeded: charged EUR 20.00 (ch_1)",
		"stock.reserved: reserved 0 unit(s)",
		"order.confirmed: confirmed, total EUR 20.00",
		"stock.reserved: reserved 0 unit(s)",
	}; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("first order's timeline:\n got %q\nwant %q", got, want)
	}
	if got := timeline(t, f, rejected.ID); len(got) != 5 || got[2] != "order.rejected: out of stock: SKU-2" {
		t.Errorf("second order's timeline = %q, want created, stock failure, rejection, late payment, refund", got)
	}
}

func TestHandleFailsBadEventsAloneAndWritesNothingForThem(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	o := f.create(t)
	errs := handle(t, f,
		&inventoryv1.StockReserved{OrderId: uuid.NewString()},
		&inventoryv1.StockReserved{OrderId: "not-a-uuid"},
		&notificationv1.NotificationSent{OrderId: "also not a uuid"},
		&paymentv1.PaymentSucceeded{OrderId: o.ID}, // no payment id
		&orderv1.OrderCreated{OrderId: o.ID},
		&paymentv1.PaymentFailed{OrderId: o.ID, Reason: "card declined"},
	)
	for i, want := range []error{order.ErrNotFound, nil, nil, order.ErrInvalid, nil} {
		if !eventbus.IsPermanent(errs[i]) || (want != nil && !errors.Is(errs[i], want)) {
			t.Errorf("event %d: err = %v, want a permanent error (%v)", i, errs[i], want)
		}
	}
	if errs[5] != nil {
		t.Fatalf("good event in a batch with bad ones: %v", errs[5])
	}
	if got, _ := f.app.Get(ctx, o.ID); got.Status != order.StatusRejected || got.PaymentSucceeded {
		t.Errorf("order is %v (paid %v), want REJECTED by the one good event", got.Status, got.PaymentSucceeded)
	}
	want := []string{
		"order.created: 2 line(s), total EUR 20.00",
		"payment.failed: card declined",
		"order.rejected: card declined",
	}
	if got := timeline(t, f, o.ID); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("timeline:\n got %q\nwant %q", got, want)
	}
	var n int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FROM order_events WHERE order_id <> $1`, o.ID).Scan(&n); err != nil || n != 0 {
		t.Errorf("timeline entries of other orders = %d (%v), want 0", n, err)
	}
}

// TestHandleConcurrentBatchesDoNotDeadlock runs two batches listing the
// same orders in opposite orders in concurrent transactions, as two
// instances of the service would. To make them overlap, a third
// transaction holds the lock of the order in the middle (by id) until both
// batches wait for a lock. Were the orders locked in the order a batch
// lists them, each batch would by then hold the orders on its side of the
// middle, and once the middle is free one would wait for the other's:
// PostgreSQL would end one with a deadlock (40P01). Locked in id order,
// the batch that takes the first order waits for the middle holding all
// the orders before it, the other waits for that batch, and the first
// batch's payments are the ones recorded.
//
// Nor may the order come from the plan: the rows are stored in the
// reverse of id order (as updates leave a table in use), and one batch's
// transaction reads them through the primary key, in id order, the
// other's by scanning the table, in storage order.
func TestHandleConcurrentBatchesDoNotDeadlock(t *testing.T) {
	f := newFixture(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	ids := make([]string, 9)
	for i := range ids {
		ids[i] = uuid.NewString()
	}
	slices.Sort(ids)
	stored := make([]order.Order, len(ids))
	for i, id := range ids {
		o, err := order.New(id, request(), time.Now().UTC().Truncate(time.Microsecond))
		if err != nil {
			t.Fatal(err)
		}
		stored[len(ids)-1-i] = o
	}
	insert := &pgx.Batch{}
	if err := store.QueueInsertAll(insert, stored...); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.SendBatch(ctx, insert).Close(); err != nil {
		t.Fatalf("insert orders: %v", err)
	}
	middle := ids[len(ids)/2]
	type batch struct {
		deliveries []inbox.Delivery
		// plan sets how the batch's transaction reads the orders.
		plan []string
	}
	// forward reads the primary key, in id order; backward scans the
	// table, in storage order.
	forward := batch{plan: []string{`SET LOCAL enable_seqscan = off`, `SET LOCAL enable_bitmapscan = off`}}
	backward := batch{plan: []string{`SET LOCAL enable_indexscan = off`, `SET LOCAL enable_bitmapscan = off`}}
	for i := range ids {
		forward.deliveries = append(forward.deliveries, delivery(t, &paymentv1.PaymentSucceeded{OrderId: ids[i], PaymentId: "ch_forward"}))
		backward.deliveries = append(backward.deliveries, delivery(t, &paymentv1.PaymentSucceeded{OrderId: ids[len(ids)-1-i], PaymentId: "ch_backward"}))
	}

	holder, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// A test that fails early must not leave the lock held: the batches
	// would wait for it, and the fixture's cleanup for them.
	defer func() { _ = holder.Rollback(ctx) }()
	if _, err := store.GetForUpdate(ctx, holder, middle); err != nil {
		t.Fatalf("lock order %s: %v", middle, err)
	}
	pids := make(chan uint32, 2)
	var g errgroup.Group
	for _, b := range []batch{forward, backward} {
		g.Go(func() error {
			return postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
				for _, set := range b.plan {
					if _, err := tx.Exec(ctx, set); err != nil {
						return err
					}
				}
				var pid uint32
				if err := tx.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
					return err
				}
				pids <- pid
				return handleAllOK(ctx, f, tx, b.deliveries)
			})
		})
	}
	var waiting []uint32
	for len(waiting) < 2 {
		select {
		case pid := <-pids:
			waiting = append(waiting, pid)
		case <-ctx.Done():
			t.Fatalf("%d of the 2 batches began: %v", len(waiting), ctx.Err())
		}
	}
	for n := 0; n < len(waiting); time.Sleep(time.Millisecond) {
		if err := f.pool.QueryRow(ctx, `SELECT count(DISTINCT pid) FROM pg_locks WHERE pid = ANY($1) AND NOT granted`, waiting).Scan(&n); err != nil {
			t.Fatalf("wait for both batches to wait for a lock (%d do): %v", n, err)
		}
	}
	if err := holder.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("handle the two batches: %v", err)
	}
	var paymentIDs []string
	for _, id := range ids {
		got, err := f.app.Get(ctx, id)
		if err != nil || !got.PaymentSucceeded {
			t.Fatalf("order %s: %+v, %v; want it paid", id, got, err)
		}
		paymentIDs = append(paymentIDs, got.PaymentID)
	}
	if slices.ContainsFunc(paymentIDs, func(p string) bool { return p != paymentIDs[0] }) {
		t.Errorf("payments recorded %v, want all from the batch that locked first", paymentIDs)
	}
}

func TestGroupCommitFailsOnlyTheOrderPostgreSQLRefuses(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const calls = 32
	reqs := make([]order.Request, calls)
	for i := range reqs {
		reqs[i] = request()
	}
	// PostgreSQL text cannot hold a NUL byte: this order's insert fails,
	// and with it the transaction it shares with the others.
	reqs[7].CustomerEmail = "ada\x00@example.com"
	errs := make([]error, calls)
	var g errgroup.Group
	for i := range reqs {
		g.Go(func() error {
			_, errs[i] = f.app.Create(ctx, reqs[i])
			return nil
		})
	}
	_ = g.Wait()
	for i, err := range errs {
		if (err != nil) != (i == 7) {
			t.Errorf("create %d: err = %v, want an error only for order 7", i, err)
		}
	}
	if n := len(outboxTypes(t, f.pool)); n != calls-1 {
		t.Errorf("%d order.created events, want %d", n, calls-1)
	}
}

func TestGroupCommitSharesTransactions(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const calls = 64
	reqs := make([]order.Request, calls)
	for i := range reqs {
		reqs[i] = request()
	}
	// Two repeats and one conflicting reuse of request ids ride along.
	reqs[10] = reqs[3]
	reqs[20] = reqs[3]
	conflict := reqs[5]
	conflict.PaymentToken = "tok_other"
	reqs[30] = conflict

	ids := make([]string, calls)
	errs := make([]error, calls)
	var g errgroup.Group
	for i := range reqs {
		g.Go(func() error {
			o, err := f.app.Create(ctx, reqs[i])
			ids[i], errs[i] = o.ID, err
			return nil
		})
	}
	_ = g.Wait()

	conflicts := 0
	for i, err := range errs {
		switch {
		case errors.Is(err, order.ErrRequestConflict):
			conflicts++
		case err != nil:
			t.Errorf("create %d: %v", i, err)
		}
	}
	// Of request 5 and its conflicting reuse, whichever committed first
	// won; the other conflicts.
	if conflicts != 1 {
		t.Errorf("%d conflicts, want 1", conflicts)
	}
	if ids[10] != ids[3] || ids[20] != ids[3] {
		t.Errorf("repeats got orders %s, %s; want %s", ids[10], ids[20], ids[3])
	}
	orders, _, err := f.app.List(ctx, store.Filter{}, 1000, "", true)
	if err != nil {
		t.Fatalf("list: %v", err)
	}
	if want := calls - 3; len(orders) != want {
		t.Errorf("%d orders stored, want %d", len(orders), want)
	}
	if n := len(outboxTypes(t, f.pool)); n != calls-3 {
		t.Errorf("%d order.created events, want %d", n, calls-3)
	}
	if b := f.app.CreateBatches(); b >= calls {
		t.Errorf("%d transactions for %d concurrent creates: no group commit", b, calls)
	} else {
		t.Logf("%d concurrent creates in %d transactions", calls, b)
	}
}

func TestCreateWithDatabaseDownIsUnavailable(t *testing.T) {
	_, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	proxy, proxied := postgrestest.Proxied(t)
	pool, err := postgres.Open(context.Background(), proxied, schema)
	if err != nil {
		t.Fatalf("open: %v", err)
	}
	t.Cleanup(pool.Close)
	a := newApp(t, pool, schema)
	if _, err := a.Create(context.Background(), request()); err != nil {
		t.Fatalf("create while up: %v", err)
	}
	proxy.SetUp(false)
	var g errgroup.Group
	for range 8 {
		g.Go(func() error {
			_, err := a.Create(context.Background(), request())
			if !errors.Is(err, app.ErrUnavailable) {
				return fmt.Errorf("create while down: %v, want ErrUnavailable", err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	proxy.SetUp(true)
	if _, err := a.Create(context.Background(), request()); err != nil {
		t.Fatalf("create after recovery: %v", err)
	}
}

// TestWatchSurvivesSilentDatabaseLoss black-holes the watcher's connection
// to PostgreSQL: the watcher notices, reconnects once the path is back,
// and a watch sees a change made afterwards.
func TestWatchSurvivesSilentDatabaseLoss(t *testing.T) {
	pool, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	proxy, proxied := postgrestest.Proxied(t)
	conn, err := pgx.ParseConfig(proxied)
	if err != nil {
		t.Fatal(err)
	}
	w := store.NewWatcher(conn, schema, quiet)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	done := make(chan struct{})
	go func() { defer close(done); _ = w.Run(ctx) }()
	defer func() { cancel(); <-done }()
	a := app.New(pool, w, quiet, nil)
	o, err := a.Create(ctx, request())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	// waitListening waits, up to a deadline against hangs only, until the
	// watcher listens (or, with false, no longer does).
	waitListening := func(want bool, what string) {
		t.Helper()
		for deadline := time.Now().Add(45 * time.Second); w.Listening() != want; time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("watcher Listening() still %v after 45s: %s", !want, what)
			}
		}
	}
	waitListening(true, "never listened")
	seen := make(chan order.Status, 4)
	watchDone := make(chan error, 1)
	go func() {
		watchDone <- a.Watch(ctx, o.ID, func(o order.Order) error { seen <- o.Status; return nil })
	}()
	select {
	case s := <-seen:
		if s != order.StatusPending {
			t.Fatalf("first snapshot %v", s)
		}
	case err := <-watchDone:
		t.Fatalf("watch ended before its first snapshot: %v", err)
	case <-ctx.Done():
		t.Fatal("the watch never sent its first snapshot")
	}
	// The watcher must find its connection dead by itself: nothing closes
	// it, nothing comes through.
	proxy.Blackhole()
	waitListening(false, "the black-holed connection was never found dead")
	proxy.SetUp(true)
	if _, err := a.Cancel(ctx, o.ID, "after the outage"); err != nil {
		t.Fatalf("cancel: %v", err)
	}
	select {
	case s := <-seen:
		if s != order.StatusCancelled {
			t.Fatalf("second snapshot %v, want CANCELLED", s)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("the watch never saw the change made after the outage")
	}
	if err := <-watchDone; err != nil {
		t.Fatalf("watch: %v", err)
	}
}

func TestExpirePendingRejectsOnlyStaleOrders(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	stale := f.create(t)
	fresh := f.create(t)
	done := f.create(t)
	if _, err := f.app.Cancel(ctx, done.ID, "changed my mind"); err != nil {
		t.Fatal(err)
	}
	// stale and done were placed an hour ago; stale half-way through.
	backdateOrders(t, f, time.Hour, stale.ID, done.ID)
	if err := inTx(t, f, &inventoryv1.StockReserved{OrderId: stale.ID}); err != nil {
		t.Fatal(err)
	}

	n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100)
	if err != nil || n != 1 {
		t.Fatalf("ExpirePending = %d, %v; want 1 order rejected", n, err)
	}
	got, err := f.app.Get(ctx, stale.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != order.StatusRejected || got.StatusReason != "timed out after 30m0s waiting for payment" {
		t.Errorf("stale order is %v %q, want REJECTED for the payment it waited for", got.Status, got.StatusReason)
	}
	if got, _ := f.app.Get(ctx, fresh.ID); got.Status != order.StatusPending {
		t.Errorf("fresh order is %v, want PENDING", got.Status)
	}
	if got, _ := f.app.Get(ctx, done.ID); got.Status != order.StatusCancelled {
		t.Errorf("cancelled order is %v, want CANCELLED", got.Status)
	}
	types := outboxTypes(t, f.pool)
	if want := "ordermesh.order.v1.OrderRejected"; types[len(types)-1] != want {
		t.Errorf("last outbox event %s, want %s", types[len(types)-1], want)
	}
	if n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100); err != nil || n != 0 {
		t.Errorf("second ExpirePending = %d, %v; want nothing left to reject", n, err)
	}
}

// TestExpirePendingWaitsForTheOutbox: an order placed an hour ago whose
// events are still in the outbox (the broker away all that time) reached
// no worker, so it does not time out; nor, once they are published, before
// the workers had a timeout to answer.
func TestExpirePendingWaitsForTheOutbox(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now().UTC()
	f.app.SetClock(func() time.Time { return now })
	stale := f.create(t)
	backdateOrders(t, f, time.Hour)
	backdateOutbox(t, f, time.Hour)
	status := func() order.Status {
		t.Helper()
		got, err := f.app.Get(ctx, stale.ID)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status
	}
	if n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100); err != nil || n != 0 || status() != order.StatusPending {
		t.Fatalf("with its order.created unpublished for an hour, ExpirePending = %d, %v and the order is %v; want nothing rejected",
			n, err, status())
	}
	// The relay published it.
	if _, err := f.pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
		t.Fatal(err)
	}
	now = now.Add(29 * time.Minute)
	if n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100); err != nil || n != 0 || status() != order.StatusPending {
		t.Fatalf("29 minutes after its events were published, ExpirePending = %d, %v and the order is %v; want nothing rejected",
			n, err, status())
	}
	now = now.Add(2 * time.Minute)
	if n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100); err != nil || n != 1 || status() != order.StatusRejected {
		t.Fatalf("a timeout after its events were published, ExpirePending = %d, %v and the order is %v; want it rejected",
			n, err, status())
	}
}

// TestExpirePendingWaitsForRefusedEvents: an order whose order.created
// the broker has refused for an hour (a queue refusing messages, none
// bound yet) reached no worker either, so it does not time out.
func TestExpirePendingWaitsForRefusedEvents(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	stale := f.create(t)
	backdateOrders(t, f, time.Hour)
	if _, err := f.pool.Exec(ctx, `
		WITH moved AS (DELETE FROM outbox RETURNING seq, id, type, routing_key, source, event_time, body)
		INSERT INTO outbox_deferred (seq, id, type, routing_key, source, event_time, body, created_at, attempts, next_attempt_at)
		SELECT seq, id, type, routing_key, source, event_time, body, now() - interval '1 hour', 12, now() FROM moved`); err != nil {
		t.Fatal(err)
	}
	if n, err := f.app.ExpirePending(ctx, 30*time.Minute, 100); err != nil || n != 0 {
		t.Fatalf("with its order.created refused for an hour, ExpirePending = %d, %v; want nothing rejected", n, err)
	}
	if got, err := f.app.Get(ctx, stale.ID); err != nil || got.Status != order.StatusPending {
		t.Errorf("the order is %v (%v), want PENDING", got.Status, err)
	}
}

// TestExpiryPauseFollowsAShorterTimeout: a pause begun under a long
// timeout ends no later than the current timeout after the first sweep
// under it: cutting ORDERMESH_ORDER_TIMEOUT cuts the pause too.
func TestExpiryPauseFollowsAShorterTimeout(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	now := time.Now().UTC()
	f.app.SetClock(func() time.Time { return now })
	stale := f.create(t)
	backdateOrders(t, f, 2*time.Hour)
	backdateOutbox(t, f, 3*time.Hour)
	sweep := func(timeout time.Duration, what string, want int) {
		t.Helper()
		if n, err := f.app.ExpirePending(ctx, timeout, 100); err != nil || n != want {
			t.Fatalf("%s: the sweep rejected %d orders (%v), want %d", what, n, err, want)
		}
	}
	sweep(24*time.Hour, "a sweep seeing a backlog under a timeout of a day", 0)
	if _, err := f.pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
		t.Fatal(err)
	}
	now = now.Add(time.Minute)
	sweep(30*time.Minute, "the first sweep under a timeout of 30m", 0)
	now = now.Add(29 * time.Minute)
	sweep(30*time.Minute, "29 minutes later", 0)
	now = now.Add(2 * time.Minute)
	sweep(30*time.Minute, "a timeout after the first sweep under it", 1)
	if got, err := f.app.Get(ctx, stale.ID); err != nil || got.Status != order.StatusRejected {
		t.Errorf("the order is %v (%v), want REJECTED", got.Status, err)
	}
}

// TestALongSweepIsNoAbsence: the next sweep's gap counts from the end of
// a sweep that took long (here the clock runs a minute a read while it
// rejects ten orders), not from its start: otherwise a long sweep would
// pause the timeout after it as if the service had been away.
func TestALongSweepIsNoAbsence(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const (
		timeout = 30 * time.Minute
		away    = 3 * time.Minute
	)
	var mu sync.Mutex
	now, running := time.Now().UTC(), false
	f.app.SetClock(func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		if running {
			now = now.Add(time.Minute)
		}
		return now
	})
	set := func(advance time.Duration, run bool) {
		mu.Lock()
		defer mu.Unlock()
		now, running = now.Add(advance), run
	}
	stale := func(n int) {
		t.Helper()
		for range n {
			if _, err := f.app.Create(ctx, request()); err != nil {
				t.Fatal(err)
			}
		}
		backdateOrders(t, f, 2*time.Hour)
		if _, err := f.pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
			t.Fatal(err)
		}
	}
	stale(10)
	// An instance swept just now.
	if _, err := f.pool.Exec(ctx, `UPDATE expiry_hold SET swept_at = $1`, f.app.Now()); err != nil {
		t.Fatal(err)
	}
	set(0, true)
	if n, err := f.app.ExpirePendingAfter(ctx, timeout, away, 100); err != nil || n != 10 {
		t.Fatalf("the long sweep rejected %d orders (%v), want 10", n, err)
	}
	set(time.Minute, false)
	stale(1)
	if n, err := f.app.ExpirePendingAfter(ctx, timeout, away, 100); err != nil || n != 1 {
		t.Fatalf("the sweep a minute after the long one ended rejected %d orders (%v), want 1", n, err)
	}
}

// TestExpirePendingOnTwoInstances: two instances expiring the same stale
// orders at once reject each once, and between them count each once.
func TestExpirePendingOnTwoInstances(t *testing.T) {
	f := newFixture(t)
	other := newApp(t, f.pool, f.schema)
	ctx := context.Background()
	const n = 40
	for range n {
		if _, err := f.app.Create(ctx, request()); err != nil {
			t.Fatal(err)
		}
	}
	backdateOrders(t, f, time.Hour)
	counts := make([]int, 2)
	var wg sync.WaitGroup
	for i, a := range []*app.App{f.app, other} {
		wg.Go(func() {
			var err error
			if counts[i], err = a.ExpirePending(ctx, 30*time.Minute, n); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if counts[0]+counts[1] != n {
		t.Errorf("the instances counted %d and %d rejected orders, want %d between them", counts[0], counts[1], n)
	}
	var rejected, events int
	if err := f.pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE status = 'REJECTED') FROM orders`).Scan(&rejected); err != nil {
		t.Fatal(err)
	}
	for _, typ := range outboxTypes(t, f.pool) {
		if typ == "ordermesh.order.v1.OrderRejected" {
			events++
		}
	}
	if rejected != n || events != n {
		t.Errorf("%d orders rejected with %d order.rejected events, want %d of each", rejected, events, n)
	}
}

// TestRunExpiryGoesOnPastABatchOthersEnded: a sweep whose batch of
// stale orders another instance ended meanwhile (here a transaction
// holding them, which rejects them while the sweep waits for their locks)
// rejected none of it itself, yet goes on to the next batch at once
// rather than at its next tick (an hour off here; the first sweep is at
// once).
func TestRunExpiryGoesOnPastABatchOthersEnded(t *testing.T) {
	f := newFixture(t)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	var ids []string
	for range 10 {
		o := f.create(t)
		ids = append(ids, o.ID)
	}
	backdateOrders(t, f, time.Hour)
	// The first five (oldest, so the first batch) are being ended by
	// someone else.
	other, err := f.pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Rollback(ctx)
	var pid uint32
	if err := other.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if _, err := other.Exec(ctx, `UPDATE orders SET status = 'REJECTED' WHERE id = ANY($1::uuid[])`, ids[:5]); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop()
	wg.Go(func() {
		if err := f.app.RunExpiryBatches(ctx, 30*time.Minute, 0, time.Hour, 5); err != nil {
			t.Error(err)
		}
	})
	waitFor(t, 10*time.Second, "the sweep waiting for the first batch's locks", func() bool {
		var blocked bool
		err := f.pool.QueryRow(ctx, `SELECT EXISTS (SELECT FROM pg_stat_activity WHERE $1 = ANY(pg_blocking_pids(pid)))`, pid).Scan(&blocked)
		return err == nil && blocked
	})
	if err := other.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the second batch rejected", func() bool {
		var pending int
		err := f.pool.QueryRow(ctx, `SELECT count(*) FROM orders WHERE status = 'PENDING'`).Scan(&pending)
		return err == nil && pending == 0
	})
}

// TestRunExpiryWaitsAnIntervalFirst: the first sweep comes an interval
// after the start, not at once: after a long stop, the outcomes of the
// stale orders may be waiting in the service's queue.
func TestRunExpiryWaitsAnIntervalFirst(t *testing.T) {
	f := newFixture(t)
	ctx, stop := context.WithCancel(context.Background())
	stale := f.create(t)
	backdateOrders(t, f, time.Hour, stale.ID)
	// An instance swept a moment ago: a sweep now would not be paused,
	// and would reject the stale order.
	if _, err := f.pool.Exec(ctx, `UPDATE expiry_hold SET swept_at = now()`); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- f.app.RunExpiry(ctx, 30*time.Minute, time.Hour) }()
	time.Sleep(300 * time.Millisecond)
	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got, err := f.app.Get(context.Background(), stale.ID); err != nil || got.Status != order.StatusPending {
		t.Errorf("stale order is %v (%v) before the first interval passed, want PENDING", got.Status, err)
	}
}

// TestRunExpiryRejectsStaleOrdersUntilStopped: RunExpiry rejects stale
// orders at its ticks, but none while the timeout is paused for a
// timeout after a first sweep that finds no instance swept before it
// (here the first since the tables were made), and returns when stopped.
func TestRunExpiryRejectsStaleOrdersUntilStopped(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	stale := f.create(t)
	backdateOrders(t, f, time.Hour, stale.ID)
	if err := f.app.RunExpiry(ctx, 0, time.Millisecond); err != nil {
		t.Fatalf("RunExpiry with the timeout off = %v, want nil at once", err)
	}
	if got, _ := f.app.Get(ctx, stale.ID); got.Status != order.StatusPending {
		t.Fatalf("with the timeout off the order became %v", got.Status)
	}

	// The relay published the order's events (a backlog older than a
	// tenth of the timeout would pause it).
	if _, err := f.pool.Exec(ctx, `DELETE FROM outbox`); err != nil {
		t.Fatal(err)
	}
	const timeout = 2 * time.Second
	runCtx, stop := context.WithCancel(ctx)
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- f.app.RunExpiry(runCtx, timeout, 200*time.Millisecond) }()
	time.Sleep(time.Second) // sweeps, within the pause
	if got, _ := f.app.Get(ctx, stale.ID); got.Status != order.StatusPending {
		t.Fatalf("the order became %v %v after RunExpiry began, before its first sweep's pause ended", got.Status, time.Since(start))
	}
	waitFor(t, 10*time.Second, "the stale order rejected", func() bool {
		got, err := f.app.Get(ctx, stale.ID)
		return err == nil && got.Status == order.StatusRejected
	})
	if took := time.Since(start); took < timeout {
		t.Errorf("the order was rejected %v after RunExpiry began, within the pause of %v", took, timeout)
	}
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("RunExpiry = %v after its context ended, want nil", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("RunExpiry did not return after its context ended")
	}
}

// TestExpiryPauseIsSharedByInstances: the timeout's pause is the
// service's, not a process's. An instance started after another saw the
// outbox's backlog published waits as long as that one; an instance
// started (or restarted) while another keeps sweeping does not wait at
// all; a sweep after no instance swept for a while pauses every instance.
func TestExpiryPauseIsSharedByInstances(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	const (
		timeout = 30 * time.Minute
		away    = 3 * time.Minute
	)
	now := time.Now().UTC()
	clock := func() time.Time { return now }
	log, logs := logtest.New()
	first := newAppLogging(t, f.pool, f.schema, log)
	first.SetClock(clock)
	// stale places an order an hour old.
	stale := func() string {
		t.Helper()
		o, err := first.Create(ctx, request())
		if err != nil {
			t.Fatal(err)
		}
		backdateOrders(t, f, time.Hour, o.ID)
		return o.ID
	}
	status := func(id string) order.Status {
		t.Helper()
		got, err := first.Get(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		return got.Status
	}
	sweep := func(a *app.App, what string, want int) {
		t.Helper()
		if n, err := a.ExpirePendingAfter(ctx, timeout, away, 100); err != nil || n != want {
			t.Fatalf("%s: the sweep rejected %d orders (%v), want %d", what, n, err, want)
		}
	}
	// tick moves the clock a minute at a time, the first instance
	// sweeping each minute, as RunExpiry would.
	tick := func(minutes int) {
		t.Helper()
		for range minutes {
			now = now.Add(time.Minute)
			sweep(first, "a sweep while paused", 0)
		}
	}

	a := stale()
	sweep(first, "the first sweep since the tables were made", 0)
	if !strings.Contains(logs.String(), "no instance swept for stale orders") {
		t.Errorf("the pause after no sweep was not logged; the log:\n%s", logs.String())
	}
	tick(29)
	now = now.Add(2 * time.Minute) // two minutes since the last sweep: not away
	sweep(first, "a timeout after the first sweep", 1)
	if status(a) != order.StatusRejected || !strings.Contains(logs.String(), "order timeouts resume") {
		t.Fatalf("order %v, and the log:\n%s; want it rejected and the end of the pause logged", status(a), logs.String())
	}

	// An instance restarted while the first one keeps sweeping.
	b := stale()
	restarted := newApp(t, f.pool, f.schema)
	restarted.SetClock(clock)
	now = now.Add(time.Minute)
	sweep(restarted, "a restarted instance's first sweep, the other's a minute before", 1)
	if status(b) != order.StatusRejected {
		t.Fatalf("order %v, want rejected", status(b))
	}

	// A backlog seen by one instance pauses the other, which never
	// saw it, after it was published.
	c := stale()
	backdateOutbox(t, f, time.Hour)
	now = now.Add(time.Minute)
	sweep(first, "a sweep seeing the outbox's backlog", 0)
	if !strings.Contains(logs.String(), "the outbox holds events not yet published") {
		t.Errorf("the backlog's pause was not logged; the log:\n%s", logs.String())
	}
	if _, err := f.pool.Exec(ctx, `DELETE FROM outbox`); err != nil { // the relay published it
		t.Fatal(err)
	}
	later := newApp(t, f.pool, f.schema)
	later.SetClock(clock)
	now = now.Add(time.Minute)
	sweep(later, "an instance that never saw the backlog, a minute after it was published", 0)
	tick(28)
	if status(c) != order.StatusPending {
		t.Fatalf("order %v during the backlog's pause, want PENDING", status(c))
	}
	now = now.Add(2 * time.Minute)
	sweep(later, "that instance, a timeout after the backlog was seen", 1)

	// No instance swept for ten minutes: the service (or its database)
	// was away, and outcomes may be queued.
	d := stale()
	now = now.Add(10 * time.Minute)
	sweep(later, "the first sweep after ten minutes without one", 0)
	tick(29)
	if status(d) != order.StatusPending {
		t.Fatalf("order %v during the pause after an absence, want PENDING", status(d))
	}
	now = now.Add(2 * time.Minute)
	sweep(later, "a timeout after the absence", 1)
}

// TestCreateOnTwoInstancesDoesNotDeadlock places two requests on two
// instances, each instance's batch holding both in the order they arrived
// there, which is crossed: r1 then r2 on one, r2 then r1 on the other (a
// client retrying each request on the other instance while its first try
// waits). Open transactions holding request ids hold the batches back
// until both are formed. Inserted in arrival order, the two batches would
// deadlock and PostgreSQL would fail one of them; every call succeeds,
// and each request places one order.
func TestCreateOnTwoInstancesDoesNotDeadlock(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	otherPool, err := postgres.Open(ctx, postgrestest.URL(), f.schema)
	if err != nil {
		t.Fatal(err)
	}
	// A cleanup, not a defer: it must run after the held transactions'
	// rollbacks (cleanups run last first), or, on a failure, Close would
	// wait for the creates that wait for them.
	t.Cleanup(otherPool.Close)
	other := newApp(t, otherPool, f.schema)

	// hold inserts an order of request id id in a transaction left open,
	// so that other inserts of id wait for it; rolling it back lets them go.
	// The transaction is rolled back when the test ends too, should it
	// fail before doing so itself.
	hold := func(id string) pgx.Tx {
		t.Helper()
		tx, err := f.pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
		r := request()
		r.RequestID = id
		o, err := order.New(uuid.NewString(), r, time.Now().UTC())
		if err != nil {
			t.Fatal(err)
		}
		b := &pgx.Batch{}
		if err := store.QueueInsertAll(b, o); err != nil {
			t.Fatal(err)
		}
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			t.Fatal(err)
		}
		return tx
	}
	type result struct {
		req string
		id  string
		err error
	}
	results := make(chan result, 6)
	create := func(a *app.App, r order.Request) {
		go func() {
			o, err := a.Create(ctx, r)
			results <- result{r.RequestID, o.ID, err}
		}()
	}
	// blocked waits until n backends wait for a lock one of held holds.
	blocked := func(n int, held ...pgx.Tx) {
		t.Helper()
		var pids []uint32
		for _, tx := range held {
			pids = append(pids, tx.Conn().PgConn().PID())
		}
		waitFor(t, time.Minute, fmt.Sprintf("%d backends blocked by %v", n, pids), func() bool {
			var got int
			err := f.pool.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE pg_blocking_pids(pid) && $1::int[]", pids).Scan(&got)
			return err == nil && got >= n
		})
	}
	queued := func(a *app.App, n int) {
		t.Helper()
		waitFor(t, time.Minute, fmt.Sprintf("%d creates queued", n), func() bool { return a.QueuedCreates() == n })
	}
	// Which of the two batches takes r2 first when its holder lets go is
	// a race, and only one of the two ways deadlocks: eight rounds.
	for range 8 {
		leadA, leadB, r1, r2 := request(), request(), request(), request()
		heldA, heldB, heldR2 := hold(leadA.RequestID), hold(leadB.RequestID), hold(r2.RequestID)
		// Each instance's first batch waits on a held id; what arrives
		// meanwhile forms its next batch, in arrival order.
		create(f.app, leadA)
		create(other, leadB)
		blocked(2, heldA, heldB)
		create(f.app, r1)
		queued(f.app, 1)
		create(other, r2)
		queued(other, 1)
		create(f.app, r2)
		queued(f.app, 2)
		create(other, r1)
		queued(other, 2)
		// Let one instance's next batch start, then the other's, then both
		// go for r2.
		for _, step := range []struct {
			tx pgx.Tx
			a  *app.App
		}{{heldA, f.app}, {heldB, other}, {heldR2, nil}} {
			if err := step.tx.Rollback(ctx); err != nil {
				t.Fatal(err)
			}
			if step.a != nil {
				queued(step.a, 0)
			}
		}
		placed := map[string]string{}
		for range 6 {
			var r result
			select {
			case r = <-results:
			case <-time.After(60 * time.Second):
				t.Fatal("a create did not return within 60s of the held transactions' rollbacks")
			}
			if r.err != nil {
				t.Errorf("create %s: %v", r.req, r.err)
				continue
			}
			if id, ok := placed[r.req]; ok && id != r.id {
				t.Errorf("request %s placed two orders: %s and %s", r.req, id, r.id)
			}
			placed[r.req] = r.id
		}
	}
}

// waitFor waits until cond holds (the deadline only guards against hangs).
func waitFor(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(within); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("not within %v: %s", within, what)
		}
	}
}
