package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/inventory/internal/app"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

type fixture struct {
	pool *pgxpool.Pool
	app  *app.App
	// instances each stand for an instance of the service: handle spreads
	// deliveries over them, so concurrent deliveries run in concurrent
	// transactions that contend for locks as different instances' do.
	instances []*inbox.BatchRunner
	next      *atomic.Int64
}

// newFixture gives a test its own migrated schema (inventory, outbox and
// inbox tables), an App on it, and three instances of the service's inbox
// runner.
func newFixture(t *testing.T) fixture {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations, inbox.Migrations)
	f := fixture{pool: pool, app: app.New(pool, quiet), next: new(atomic.Int64)}
	for range 3 {
		runner := inbox.NewRunner(pool, app.Source, inbox.Metrics{})
		f.instances = append(f.instances, inbox.NewBatchRunner(runner, f.app.Handle, 32, time.Minute))
	}
	return f
}

// handle delivers ev, under a new event id, to one of the instances.
func handle(t *testing.T, f fixture, ev proto.Message) error {
	t.Helper()
	b := f.instances[int(f.next.Add(1))%len(f.instances)]
	_, err := b.Process(context.Background(), ev, metaFor(ev))
	return err
}

// mustHandle is handle failing the test on error.
func mustHandle(t *testing.T, f fixture, ev proto.Message) {
	t.Helper()
	if err := handle(t, f, ev); err != nil {
		t.Fatalf("handle %T: %v", ev, err)
	}
}

// metaFor returns the metadata of ev delivered under a new event id.
func metaFor(ev proto.Message) eventbus.Meta {
	var order string
	if o, ok := ev.(interface{ GetOrderId() string }); ok {
		order = o.GetOrderId()
	}
	return eventbus.Meta{ID: uuid.NewString(), Type: string(proto.MessageName(ev)), CorrelationID: order, Attempt: 1}
}

func (f fixture) setStock(t *testing.T, levels map[string]int64) {
	t.Helper()
	for id, n := range levels {
		if _, err := f.app.SetStock(context.Background(), id, n, nil); err != nil {
			t.Fatalf("set stock of %s: %v", id, err)
		}
	}
}

// levels returns the stock of every product, by product id.
func (f fixture) levels(t *testing.T) map[string]stock.Level {
	t.Helper()
	rows, err := f.pool.Query(context.Background(), `SELECT product_id, available, reserved FROM stock`)
	if err != nil {
		t.Fatalf("read stock: %v", err)
	}
	levels, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (stock.Level, error) {
		var l stock.Level
		err := row.Scan(&l.ProductID, &l.Available, &l.Reserved)
		return l, err
	})
	if err != nil {
		t.Fatalf("read stock: %v", err)
	}
	out := map[string]stock.Level{}
	for _, l := range levels {
		out[l.ProductID] = l
	}
	return out
}

func (f fixture) status(t *testing.T, orderID string) stock.Status {
	t.Helper()
	r, err := f.app.Reservation(context.Background(), orderID)
	if err != nil {
		t.Fatalf("reservation of %s: %v", orderID, err)
	}
	return r.Status
}

// outboxEvents decodes the events waiting in the outbox, oldest first.
func outboxEvents(t *testing.T, pool *pgxpool.Pool) []proto.Message {
	t.Helper()
	msgs, err := outbox.Pending(context.Background(), pool, 1000)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	var out []proto.Message
	for _, m := range msgs {
		ev, err := eventbus.Decode(m)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, ev)
	}
	return out
}

func line(product string, qty int32) *orderv1.LineItem {
	return &orderv1.LineItem{ProductId: product, Quantity: qty, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}}
}

func created(id string, items ...*orderv1.LineItem) *orderv1.OrderCreated {
	return &orderv1.OrderCreated{
		OrderId:       id,
		CustomerEmail: "ada@example.com",
		Items:         items,
		Total:         &moneyv1.Money{CurrencyCode: "EUR", Units: int64(len(items))},
		PaymentToken:  "tok_visa",
		CreateTime:    timestamppb.Now(),
	}
}

func confirmed(id string) *orderv1.OrderConfirmed {
	return &orderv1.OrderConfirmed{OrderId: id, CustomerEmail: "ada@example.com", Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}}
}

func rejected(id string) *orderv1.OrderRejected {
	return &orderv1.OrderRejected{OrderId: id, CustomerEmail: "ada@example.com", Reason: "payment declined: card declined"}
}

func cancelled(id string) *orderv1.OrderCancelled {
	return &orderv1.OrderCancelled{OrderId: id, CustomerEmail: "ada@example.com", Reason: "changed my mind"}
}

func stockLine(product string, qty int32) *inventoryv1.StockLine {
	return &inventoryv1.StockLine{ProductId: product, Quantity: qty}
}

func diffEvents(t *testing.T, want []proto.Message, pool *pgxpool.Pool) {
	t.Helper()
	if diff := cmp.Diff(want, outboxEvents(t, pool), protocmp.Transform()); diff != "" {
		t.Errorf("outbox events (-want +got):\n%s", diff)
	}
}

func diffLevels(t *testing.T, f fixture, want map[string]stock.Level) {
	t.Helper()
	if diff := cmp.Diff(want, f.levels(t)); diff != "" {
		t.Errorf("stock levels (-want +got):\n%s", diff)
	}
}

func TestReserveSumsLinesAndMovesStock(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 5, "SKU-2": 3, "SKU-3": 1})
	id := uuid.NewString()
	mustHandle(t, f, created(id, line("SKU-2", 1), line("SKU-1", 2), line("SKU-1", 1)))

	diffEvents(t, []proto.Message{&inventoryv1.StockReserved{OrderId: id, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 3), stockLine("SKU-2", 1)}}}, f.pool)
	diffLevels(t, f, map[string]stock.Level{
		"SKU-1": {ProductID: "SKU-1", Available: 2, Reserved: 3},
		"SKU-2": {ProductID: "SKU-2", Available: 2, Reserved: 1},
		"SKU-3": {ProductID: "SKU-3", Available: 1},
	})
	r, err := f.app.Reservation(context.Background(), id)
	if err != nil {
		t.Fatalf("reservation: %v", err)
	}
	want := stock.Reservation{OrderID: id, Status: stock.StatusReserved, Lines: []stock.Line{{ProductID: "SKU-1", Quantity: 3}, {ProductID: "SKU-2", Quantity: 1}}}
	if diff := cmp.Diff(want, r); diff != "" {
		t.Errorf("reservation (-want +got):\n%s", diff)
	}
}

func TestReservationFailureIsAllOrNothing(t *testing.T) {
	tests := []struct {
		name          string
		items         []*orderv1.LineItem
		wantShortages []*inventoryv1.Shortage
		wantReason    string
	}{
		{
			name:          "one product short",
			items:         []*orderv1.LineItem{line("SKU-1", 2), line("SKU-2", 4)},
			wantShortages: []*inventoryv1.Shortage{{ProductId: "SKU-2", Requested: 4, Available: 3}},
			wantReason:    "out of stock: SKU-2 (wanted 4, have 3)",
		},
		{
			name:          "lines of one product summed past the stock",
			items:         []*orderv1.LineItem{line("SKU-1", 3), line("SKU-2", 1), line("SKU-1", 3)},
			wantShortages: []*inventoryv1.Shortage{{ProductId: "SKU-1", Requested: 6, Available: 5}},
			wantReason:    "out of stock: SKU-1 (wanted 6, have 5)",
		},
		{
			name:  "unknown product has nothing available",
			items: []*orderv1.LineItem{line("NOPE", 1), line("SKU-1", 1), line("SKU-2", 9)},
			wantShortages: []*inventoryv1.Shortage{
				{ProductId: "NOPE", Requested: 1, Available: 0},
				{ProductId: "SKU-2", Requested: 9, Available: 3},
			},
			wantReason: "out of stock: NOPE (wanted 1, have 0), SKU-2 (wanted 9, have 3)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.setStock(t, map[string]int64{"SKU-1": 5, "SKU-2": 3})
			id := uuid.NewString()
			mustHandle(t, f, created(id, tt.items...))

			diffEvents(t, []proto.Message{&inventoryv1.StockReservationFailed{OrderId: id, Shortages: tt.wantShortages, Reason: tt.wantReason}}, f.pool)
			// Nothing is reserved, not even the lines that would have fit.
			diffLevels(t, f, map[string]stock.Level{
				"SKU-1": {ProductID: "SKU-1", Available: 5},
				"SKU-2": {ProductID: "SKU-2", Available: 3},
			})
			if got := f.status(t, id); got != stock.StatusFailed {
				t.Errorf("reservation status = %v, want FAILED", got)
			}
			// A failed order has nothing to release.
			mustHandle(t, f, rejected(id))
			if n := len(outboxEvents(t, f.pool)); n != 1 {
				t.Errorf("outbox has %d events after rejecting a failed order, want 1", n)
			}
		})
	}
}

// TestConcurrentOrdersNeverOversell delivers many order.created at once,
// spread over three instances of the service (so batches of each and
// transactions of different instances run concurrently), against little
// stock: exactly as many orders are reserved as fit, no level goes
// negative, and available + reserved stays what was stocked.
func TestConcurrentOrdersNeverOversell(t *testing.T) {
	tests := []struct {
		name   string
		stock  map[string]int64
		orders int
		// items returns the lines of order i.
		items        func(i int) []*orderv1.LineItem
		wantReserved int
	}{
		{
			name:         "one product",
			stock:        map[string]int64{"SKU-1": 20},
			orders:       50,
			items:        func(int) []*orderv1.LineItem { return []*orderv1.LineItem{line("SKU-1", 1)} },
			wantReserved: 20,
		},
		{
			// Half the orders list the products one way round, half the
			// other: locking in product order keeps them from deadlocking.
			name:   "two products listed in both orders",
			stock:  map[string]int64{"SKU-A": 30, "SKU-B": 30},
			orders: 50,
			items: func(i int) []*orderv1.LineItem {
				if i%2 == 0 {
					return []*orderv1.LineItem{line("SKU-A", 1), line("SKU-B", 2)}
				}
				return []*orderv1.LineItem{line("SKU-B", 2), line("SKU-A", 1)}
			},
			wantReserved: 15,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.setStock(t, tt.stock)
			ids := make([]string, tt.orders)
			var g errgroup.Group
			for i := range ids {
				ids[i] = uuid.NewString()
				g.Go(func() error { return handle(t, f, created(ids[i], tt.items(i)...)) })
			}
			if err := g.Wait(); err != nil {
				t.Fatalf("concurrent order.created: %v", err)
			}

			var reservedOrders int
			heldByOrders := map[string]int64{}
			for _, id := range ids {
				r, err := f.app.Reservation(context.Background(), id)
				if err != nil {
					t.Fatalf("reservation: %v", err)
				}
				switch r.Status {
				case stock.StatusReserved:
					reservedOrders++
					for _, l := range r.Lines {
						heldByOrders[l.ProductID] += l.Quantity
					}
				case stock.StatusFailed:
				default:
					t.Errorf("order %s: reservation %v, want RESERVED or FAILED", id, r.Status)
				}
			}
			if reservedOrders != tt.wantReserved {
				t.Errorf("%d orders reserved, want %d", reservedOrders, tt.wantReserved)
			}
			for id, l := range f.levels(t) {
				if l.Available < 0 || l.Reserved < 0 {
					t.Errorf("%s: negative level %+v", id, l)
				}
				if l.Available+l.Reserved != tt.stock[id] {
					t.Errorf("%s: available %d + reserved %d != stocked %d", id, l.Available, l.Reserved, tt.stock[id])
				}
				if l.Reserved != heldByOrders[id] {
					t.Errorf("%s: reserved %d, but reservations hold %d (lost update)", id, l.Reserved, heldByOrders[id])
				}
			}
			var reservedEvents, failedEvents int
			for _, ev := range outboxEvents(t, f.pool) {
				switch ev.(type) {
				case *inventoryv1.StockReserved:
					reservedEvents++
				case *inventoryv1.StockReservationFailed:
					failedEvents++
				}
			}
			if reservedEvents != tt.wantReserved || failedEvents != tt.orders-tt.wantReserved {
				t.Errorf("outbox: %d StockReserved, %d StockReservationFailed; want %d and %d",
					reservedEvents, failedEvents, tt.wantReserved, tt.orders-tt.wantReserved)
			}
		})
	}
}

func TestConfirmCommitsReservation(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 5})
	id := uuid.NewString()
	mustHandle(t, f, created(id, line("SKU-1", 2)))
	mustHandle(t, f, confirmed(id))
	mustHandle(t, f, confirmed(id)) // a repeat changes nothing

	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 3}})
	if got := f.status(t, id); got != stock.StatusCommitted {
		t.Errorf("reservation status = %v, want COMMITTED", got)
	}
	if n := len(outboxEvents(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d events, want only StockReserved", n)
	}
}

// TestCompensation covers rejected and cancelled orders in every state the
// inventory can hold them in.
func TestCompensation(t *testing.T) {
	released := func(id string) proto.Message {
		return &inventoryv1.StockReleased{OrderId: id, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 2), stockLine("SKU-2", 1)}}
	}
	reserved := func(id string) proto.Message {
		return &inventoryv1.StockReserved{OrderId: id, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 2), stockLine("SKU-2", 1)}}
	}
	tests := []struct {
		name string
		// run handles the order's events in turn.
		run        func(t *testing.T, f fixture, id string)
		wantStatus stock.Status
		wantEvents func(id string) []proto.Message
	}{
		{
			name: "rejected while reserved releases",
			run: func(t *testing.T, f fixture, id string) {
				mustHandle(t, f, rejected(id))
			},
			wantStatus: stock.StatusReleased,
			wantEvents: func(id string) []proto.Message { return []proto.Message{reserved(id), released(id)} },
		},
		{
			name: "cancelled while reserved releases",
			run: func(t *testing.T, f fixture, id string) {
				mustHandle(t, f, cancelled(id))
			},
			wantStatus: stock.StatusReleased,
			wantEvents: func(id string) []proto.Message { return []proto.Message{reserved(id), released(id)} },
		},
		{
			name: "cancelled after confirmed puts stock back",
			run: func(t *testing.T, f fixture, id string) {
				mustHandle(t, f, confirmed(id))
				mustHandle(t, f, cancelled(id))
			},
			wantStatus: stock.StatusReleased,
			wantEvents: func(id string) []proto.Message { return []proto.Message{reserved(id), released(id)} },
		},
		{
			name: "cancelled before its confirmation arrives",
			run: func(t *testing.T, f fixture, id string) {
				mustHandle(t, f, cancelled(id))
				mustHandle(t, f, confirmed(id))
			},
			wantStatus: stock.StatusReleased,
			wantEvents: func(id string) []proto.Message { return []proto.Message{reserved(id), released(id)} },
		},
		{
			name: "rejected and cancelled release once",
			run: func(t *testing.T, f fixture, id string) {
				mustHandle(t, f, rejected(id))
				mustHandle(t, f, cancelled(id))
				mustHandle(t, f, rejected(id))
			},
			wantStatus: stock.StatusReleased,
			wantEvents: func(id string) []proto.Message { return []proto.Message{reserved(id), released(id)} },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.setStock(t, map[string]int64{"SKU-1": 5, "SKU-2": 3})
			id := uuid.NewString()
			mustHandle(t, f, created(id, line("SKU-1", 2), line("SKU-2", 1)))
			tt.run(t, f, id)

			diffLevels(t, f, map[string]stock.Level{
				"SKU-1": {ProductID: "SKU-1", Available: 5},
				"SKU-2": {ProductID: "SKU-2", Available: 3},
			})
			if got := f.status(t, id); got != tt.wantStatus {
				t.Errorf("reservation status = %v, want %v", got, tt.wantStatus)
			}
			diffEvents(t, tt.wantEvents(id), f.pool)
		})
	}
}

func TestReleaseWithNothingHeld(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 1})
	id := uuid.NewString()
	mustHandle(t, f, created(id, line("SKU-1", 2)))
	mustHandle(t, f, rejected(id))
	mustHandle(t, f, cancelled(id))
	if got := f.status(t, id); got != stock.StatusFailed {
		t.Errorf("reservation status = %v, want FAILED", got)
	}
	evs := outboxEvents(t, f.pool)
	if len(evs) != 1 {
		t.Fatalf("outbox = %v, want only StockReservationFailed", evs)
	}
	if _, ok := evs[0].(*inventoryv1.StockReservationFailed); !ok {
		t.Errorf("outbox = %v, want only StockReservationFailed", evs)
	}
	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 1}})
}

func TestTerminalBeforeCreatedNeverReserves(t *testing.T) {
	tests := []struct {
		name  string
		first func(t *testing.T, f fixture, id string)
	}{
		{"rejected first", func(t *testing.T, f fixture, id string) { mustHandle(t, f, rejected(id)) }},
		{"cancelled first", func(t *testing.T, f fixture, id string) { mustHandle(t, f, cancelled(id)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.setStock(t, map[string]int64{"SKU-1": 5})
			id := uuid.NewString()
			tt.first(t, f, id)
			if got := f.status(t, id); got != stock.StatusBlocked {
				t.Fatalf("reservation status = %v, want BLOCKED", got)
			}
			mustHandle(t, f, created(id, line("SKU-1", 2)))
			mustHandle(t, f, cancelled(id))

			if got := f.status(t, id); got != stock.StatusBlocked {
				t.Errorf("reservation status = %v, want BLOCKED", got)
			}
			diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 5}})
			diffEvents(t, nil, f.pool)
		})
	}
}

// TestCreatedRacingCancelled handles each order's order.created and
// order.cancelled at the same time. Whichever wins, the end state is the
// same: nothing held, every unit available, and a reservation that is
// either released or blocked.
func TestCreatedRacingCancelled(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 100})
	ids := make([]string, 20)
	var g errgroup.Group
	for i := range ids {
		ids[i] = uuid.NewString()
		g.Go(func() error { return handle(t, f, created(ids[i], line("SKU-1", 3))) })
		g.Go(func() error { return handle(t, f, cancelled(ids[i])) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("handle: %v", err)
	}
	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 100}})
	for _, id := range ids {
		if s := f.status(t, id); s != stock.StatusReleased && s != stock.StatusBlocked {
			t.Errorf("order %s: reservation %v, want RELEASED or BLOCKED", id, s)
		}
	}
}

func TestConfirmWithoutReservationIsPermanent(t *testing.T) {
	f := newFixture(t)
	err := handle(t, f, confirmed(uuid.NewString()))
	if !eventbus.IsPermanent(err) || !errors.Is(err, stock.ErrNoReservation) {
		t.Fatalf("err = %v, want a permanent ErrNoReservation", err)
	}
}

func TestMalformedEventsArePermanent(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		run  func() error
	}{
		{"bad order id", func() error { return handle(t, f, created("order-1", line("SKU-1", 1))) }},
		{"no lines", func() error { return handle(t, f, created(uuid.NewString())) }},
		{"zero quantity", func() error { return handle(t, f, created(uuid.NewString(), line("SKU-1", 0))) }},
		{"bad product id", func() error { return handle(t, f, created(uuid.NewString(), line("SKU 1", 1))) }},
		{"cancel with bad order id", func() error { return handle(t, f, cancelled("")) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); !eventbus.IsPermanent(err) {
				t.Errorf("err = %v, want a permanent error", err)
			}
		})
	}
	diffEvents(t, nil, f.pool)
}

// TestDuplicatesThroughInbox delivers events through one inbox runner,
// repeatedly and concurrently (so copies share batches): each takes effect
// once.
func TestDuplicatesThroughInbox(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 10})
	runner := inbox.NewRunner(f.pool, app.Source, inbox.Metrics{})
	batches := inbox.NewBatchRunner(runner, f.app.Handle, 32, time.Minute)
	handleCreated := inbox.WrapBatch[*orderv1.OrderCreated](batches)
	handleCancelled := inbox.WrapBatch[*orderv1.OrderCancelled](batches)
	ctx := context.Background()
	id := uuid.NewString()
	createdMeta := eventbus.Meta{ID: uuid.NewString(), Type: "ordermesh.order.v1.OrderCreated", CorrelationID: id}
	cancelledMeta := eventbus.Meta{ID: uuid.NewString(), Type: "ordermesh.order.v1.OrderCancelled", CorrelationID: id}

	var g errgroup.Group
	for range 5 {
		g.Go(func() error { return handleCreated(ctx, created(id, line("SKU-1", 4)), createdMeta) })
	}
	if err := g.Wait(); err != nil {
		t.Fatalf("deliver order.created: %v", err)
	}
	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 6, Reserved: 4}})

	for range 3 {
		if err := handleCancelled(ctx, cancelled(id), cancelledMeta); err != nil {
			t.Fatalf("deliver order.cancelled: %v", err)
		}
	}
	// The same order.created again under its id after the cancel: still a
	// duplicate, nothing is reserved again.
	if err := handleCreated(ctx, created(id, line("SKU-1", 4)), createdMeta); err != nil {
		t.Fatalf("redeliver order.created: %v", err)
	}
	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 10}})
	diffEvents(t, []proto.Message{
		&inventoryv1.StockReserved{OrderId: id, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 4)}},
		&inventoryv1.StockReleased{OrderId: id, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 4)}},
	}, f.pool)
	if got, want := runner.Counts(), (inbox.Counts{Processed: 2, Duplicates: 7}); got != want {
		t.Errorf("runner counts = %+v, want %+v", got, want)
	}
	var corr []string
	rows, err := f.pool.Query(ctx, `SELECT correlation_id || ' ' || source FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	corr, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	if want := fmt.Sprint([]string{id + " inventory", id + " inventory"}); fmt.Sprint(corr) != want {
		t.Errorf("outbox correlation and source = %v, want %v", corr, want)
	}
}

// TestOneBatchAppliesEventsInOrder hands one batch to the handler, the way
// the inbox runner does: events of one order apply in the order they came,
// each sees what the events before it did, and an event that cannot be
// applied fails alone.
func TestOneBatchAppliesEventsInOrder(t *testing.T) {
	f := newFixture(t)
	f.setStock(t, map[string]int64{"SKU-1": 10})
	o1, o2, o3, o4 := uuid.NewString(), uuid.NewString(), uuid.NewString(), uuid.NewString()
	batch := []proto.Message{
		created(o1, line("SKU-1", 2)),
		cancelled(o1),
		created(o2, line("SKU-1", 1)),
		confirmed(o2),
		created("order-5", line("SKU-1", 1)),
		confirmed(o3),
		cancelled(o4),
		created(o4, line("SKU-1", 1)),
		created(o3, line("SKU-1", 8)),
	}
	ctx := context.Background()
	var results []inbox.Result
	err := postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
		ds := make([]inbox.Delivery, len(batch))
		for i, ev := range batch {
			ds[i] = inbox.Delivery{Event: ev, Meta: metaFor(ev)}
		}
		var err error
		results, err = f.app.Handle(ctx, tx, ds)
		return err
	})
	if err != nil {
		t.Fatalf("handle batch: %v", err)
	}
	held := []*inventoryv1.StockLine{stockLine("SKU-1", 2)}
	// failed marks an event that fails alone with a permanent error
	// (wrapping is, when set).
	type outcome struct {
		events []proto.Message
		failed bool
		is     error
	}
	want := []outcome{
		{events: []proto.Message{&inventoryv1.StockReserved{OrderId: o1, Items: held}}},
		{events: []proto.Message{&inventoryv1.StockReleased{OrderId: o1, Items: held}}},
		{events: []proto.Message{&inventoryv1.StockReserved{OrderId: o2, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 1)}}}},
		{},
		{failed: true},
		{failed: true, is: stock.ErrNoReservation},
		{},
		{},
		// o1's units are back, so o3 finds 9 available.
		{events: []proto.Message{&inventoryv1.StockReserved{OrderId: o3, Items: []*inventoryv1.StockLine{stockLine("SKU-1", 8)}}}},
	}
	if len(results) != len(want) {
		t.Fatalf("%d results, want %d", len(results), len(want))
	}
	for i, r := range results {
		if diff := cmp.Diff(want[i].events, r.Events, protocmp.Transform()); diff != "" {
			t.Errorf("event %d (%T): events (-want +got):\n%s", i, batch[i], diff)
		}
		switch w := want[i]; {
		case !w.failed && r.Err != nil:
			t.Errorf("event %d (%T): %v", i, batch[i], r.Err)
		case w.failed && (!eventbus.IsPermanent(r.Err) || w.is != nil && !errors.Is(r.Err, w.is)):
			t.Errorf("event %d (%T): err = %v, want a permanent error (wrapping %v)", i, batch[i], r.Err, w.is)
		}
	}
	diffLevels(t, f, map[string]stock.Level{"SKU-1": {ProductID: "SKU-1", Available: 1, Reserved: 8}})
	for id, want := range map[string]stock.Status{o1: stock.StatusReleased, o2: stock.StatusCommitted, o3: stock.StatusReserved, o4: stock.StatusBlocked} {
		if got := f.status(t, id); got != want {
			t.Errorf("order %s: reservation %v, want %v", id, got, want)
		}
	}
}

func TestSetStockKeepsReserved(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	if _, err := f.app.GetStock(ctx, "SKU-1"); !errors.Is(err, stock.ErrNotFound) {
		t.Fatalf("GetStock of a new product: err = %v, want ErrNotFound", err)
	}
	f.setStock(t, map[string]int64{"SKU-1": 5})
	mustHandle(t, f, created(uuid.NewString(), line("SKU-1", 2)))
	l, err := f.app.SetStock(ctx, "SKU-1", 10, nil)
	if err != nil {
		t.Fatalf("SetStock: %v", err)
	}
	if want := (stock.Level{ProductID: "SKU-1", Available: 10, Reserved: 2}); l != want {
		t.Errorf("SetStock = %+v, want %+v", l, want)
	}
	if got, err := f.app.GetStock(ctx, "SKU-1"); err != nil || got != l {
		t.Errorf("GetStock = %+v, %v; want %+v", got, err, l)
	}
	for _, bad := range []struct {
		id string
		n  int64
	}{{"", 1}, {"SKU 1", 1}, {"SKU-1", -1}, {"SKU-1", stock.MaxAvailable + 1}} {
		if _, err := f.app.SetStock(ctx, bad.id, bad.n, nil); !errors.Is(err, stock.ErrInvalid) {
			t.Errorf("SetStock(%q, %d): err = %v, want ErrInvalid", bad.id, bad.n, err)
		}
	}
}

// TestSetStockIfStillAsRead: an admin reads 5 available and means to add
// 5 by setting 10 on the condition that 5 are still available; an order
// reserves 2 in between, so the set fails, changes nothing and says the
// level now, and the admin's second try, from the new level, goes through.
func TestSetStockIfStillAsRead(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	expect := func(n int64) *int64 { return &n }

	// A new product's level is 0.
	if _, err := f.app.SetStock(ctx, "SKU-1", 5, expect(1)); !errors.Is(err, stock.ErrLevelChanged) {
		t.Fatalf("SetStock of a new product expecting 1: %v, want ErrLevelChanged", err)
	}
	if _, err := f.app.SetStock(ctx, "SKU-1", 5, expect(0)); err != nil {
		t.Fatalf("SetStock of a new product expecting 0: %v", err)
	}
	read, err := f.app.GetStock(ctx, "SKU-1")
	if err != nil {
		t.Fatal(err)
	}
	mustHandle(t, f, created(uuid.NewString(), line("SKU-1", 2))) // in between
	_, err = f.app.SetStock(ctx, "SKU-1", read.Available+5, &read.Available)
	if !errors.Is(err, stock.ErrLevelChanged) || !strings.Contains(err.Error(), "(3 now, 2 reserved)") {
		t.Fatalf("SetStock from a stale read: %v, want ErrLevelChanged saying 3 now, 2 reserved", err)
	}
	if got, err := f.app.GetStock(ctx, "SKU-1"); err != nil || got.Available != 3 || got.Reserved != 2 {
		t.Fatalf("stock after the refused set: %+v, %v; want 3 available, 2 reserved", got, err)
	}
	l, err := f.app.SetStock(ctx, "SKU-1", 3+5, expect(3))
	if err != nil {
		t.Fatalf("SetStock from the new level: %v", err)
	}
	if want := (stock.Level{ProductID: "SKU-1", Available: 8, Reserved: 2}); l != want {
		t.Errorf("SetStock = %+v, want %+v", l, want)
	}
}
