package app_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// Handle must fit the batch runner.
var _ inbox.BatchHandler = (*app.App)(nil).Handle

type fixture struct {
	pool   *pgxpool.Pool
	sink   *smtpsink.Sink
	mailer *mailer.Mailer
	app    *app.App
	runner *inbox.Runner
	batch  *inbox.BatchRunner
}

// newFixture gives a test its own migrated schema, its own SMTP sink as the
// mail server, and the app wired to both the way the service wires them:
// Handle run by a batch runner.
func newFixture(t *testing.T) *fixture {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, inbox.Migrations, outbox.Migrations)
	f := &fixture{pool: pool, runner: inbox.NewRunner(pool, app.Source, inbox.Metrics{})}
	f.sink = startSink(t, "127.0.0.1:0")
	m, err := mailer.New(mailer.Config{
		Addr: f.sink.Addr(), TLS: mailer.TLSNone, From: mailer.DefaultFrom, Timeout: 5 * time.Second,
	}, quiet, mailer.WithIdleSessions(batchSize))
	if err != nil {
		t.Fatalf("new mailer: %v", err)
	}
	t.Cleanup(m.Close)
	f.mailer = m
	f.app, f.batch = f.newApp(t)
	return f
}

// newApp returns another App on the fixture's mail server and its batch
// runner on the fixture's inbox: another instance of the service.
func (f *fixture) newApp(t *testing.T) (*app.App, *inbox.BatchRunner) {
	t.Helper()
	a, err := app.New(f.mailer, quiet, app.WithSends(batchSize))
	if err != nil {
		t.Fatalf("new app: %v", err)
	}
	return a, inbox.NewBatchRunner(f.runner, a.Handle, batchSize, 10*time.Second)
}

// batchSize is the batch runner's batch size in the tests, and the most
// emails the app sends at once.
const batchSize = 8

func startSink(t *testing.T, addr string) *smtpsink.Sink {
	t.Helper()
	s, err := smtpsink.Start(context.Background(), addr)
	if err != nil {
		t.Fatalf("start smtp sink on %s: %v", addr, err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// traceParent is the trace every test delivery continues.
const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

// delivery returns ev as the bus delivers it, with event id eventID.
func delivery(ev proto.Message, eventID string) inbox.Delivery {
	return inbox.Delivery{Event: ev, Meta: eventbus.Meta{
		ID: eventID, Type: string(ev.ProtoReflect().Descriptor().FullName()), Source: "order",
		CorrelationID: orderIDOf(ev), Attempt: 1, TraceParent: traceParent,
	}}
}

// deliver processes ev through the fixture's batch runner as the bus
// would deliver it, with event id eventID.
func deliver(t *testing.T, f *fixture, ev proto.Message, eventID string) (inbox.Outcome, error) {
	t.Helper()
	d := delivery(ev, eventID)
	return f.batch.Process(context.Background(), d.Event, d.Meta)
}

// handle runs a.Handle on batch in a transaction of its own, as the batch
// runner does but without the inbox, and commits it unless Handle
// returned an error. Deliveries that failed must have left nothing.
func handle(t *testing.T, pool *pgxpool.Pool, a *app.App, batch ...inbox.Delivery) []inbox.Result {
	t.Helper()
	results, err := handleTx(context.Background(), pool, a, batch)
	if err != nil {
		t.Fatalf("handle a batch of %d: %v", len(batch), err)
	}
	if len(results) != len(batch) {
		t.Fatalf("handle a batch of %d: %d results", len(batch), len(results))
	}
	for i, r := range results {
		if len(r.Events) != 0 {
			t.Errorf("delivery %d returned %d events, want none (the app writes NotificationSent itself)", i, len(r.Events))
		}
	}
	return results
}

// handleTx is handle for use off the test's goroutine, or with a
// context of the caller's.
func handleTx(ctx context.Context, pool *pgxpool.Pool, a *app.App, batch []inbox.Delivery) ([]inbox.Result, error) {
	var results []inbox.Result
	err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		var err error
		results, err = a.Handle(ctx, tx, batch)
		return err
	})
	return results, err
}

func orderIDOf(ev proto.Message) string {
	if o, ok := ev.(interface{ GetOrderId() string }); ok {
		return o.GetOrderId()
	}
	return ""
}

func newEventID(t *testing.T) string {
	t.Helper()
	id, err := uuid.NewV7()
	if err != nil {
		t.Fatalf("new event id: %v", err)
	}
	return id.String()
}

func created(orderID, email string) *orderv1.OrderCreated {
	return &orderv1.OrderCreated{
		OrderId: orderID, CustomerEmail: email,
		Items: []*orderv1.LineItem{
			{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500000000}},
			{ProductId: "SKU-2", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}},
		},
		Total:        &moneyv1.Money{CurrencyCode: "EUR", Units: 20},
		PaymentToken: "tok_visa",
		CreateTime:   timestamppb.Now(),
	}
}

// sentEvent is a NotificationSent read back from the outbox.
type sentEvent struct {
	Event         *notificationv1.NotificationSent
	RoutingKey    string
	Source        string
	CorrelationID string
	TraceParent   string
}

func outboxSent(t *testing.T, pool *pgxpool.Pool) []sentEvent {
	t.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT type, routing_key, source, correlation_id, trace_parent, body FROM outbox ORDER BY seq`)
	if err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	defer rows.Close()
	var out []sentEvent
	for rows.Next() {
		var typ string
		var body []byte
		var s sentEvent
		if err := rows.Scan(&typ, &s.RoutingKey, &s.Source, &s.CorrelationID, &s.TraceParent, &body); err != nil {
			t.Fatalf("read outbox: %v", err)
		}
		if typ != "ordermesh.notification.v1.NotificationSent" {
			t.Fatalf("outbox holds a %s, want only NotificationSent", typ)
		}
		s.Event = &notificationv1.NotificationSent{}
		if err := proto.Unmarshal(body, s.Event); err != nil {
			t.Fatalf("decode outbox body: %v", err)
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("read outbox: %v", err)
	}
	return out
}

func count(t *testing.T, pool *pgxpool.Pool, table string) int {
	t.Helper()
	var n int
	if err := pool.QueryRow(context.Background(), `SELECT count(*) FROM `+table).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", table, err)
	}
	return n
}

func toOrder(orderID string) func(smtpsink.Message) bool {
	return func(m smtpsink.Message) bool { return strings.Contains(m.Subject, orderID) }
}

func TestEachKindSendsOneEmail(t *testing.T) {
	tests := []struct {
		name      string
		deliver   func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error)
		kind      notificationv1.NotificationKind
		subject   string // with %s for the order id
		textHas   []string
		htmlHas   []string
		textLacks []string
	}{
		{
			name: "order.created",
			deliver: func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error) {
				return deliver(t, f, created(orderID, email), newEventID(t))
			},
			kind:    notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_RECEIVED,
			subject: "Order %s received",
			textHas: []string{"received your order", "2 × SKU-1 at EUR 9.50", "1 × SKU-2 at EUR 1.00", "Total: EUR 20.00"},
			htmlHas: []string{"<td>SKU-1</td>", "<td align=\"right\">EUR 9.50</td>", "EUR 20.00"},
		},
		{
			name: "order.confirmed",
			deliver: func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error) {
				return deliver(t, f, &orderv1.OrderConfirmed{
					OrderId: orderID, CustomerEmail: email, Total: &moneyv1.Money{CurrencyCode: "USD", Units: 12, Nanos: 340000000},
				}, newEventID(t))
			},
			kind:    notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CONFIRMED,
			subject: "Order %s confirmed",
			textHas: []string{"is confirmed", "USD 12.34 has been charged"},
			htmlHas: []string{"is confirmed", "<strong>USD 12.34</strong>"},
		},
		{
			name: "order.rejected",
			deliver: func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error) {
				return deliver(t, f, &orderv1.OrderRejected{
					OrderId: orderID, CustomerEmail: email, Reason: "out of stock: SKU-1 <limited>",
				}, newEventID(t))
			},
			kind:    notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_REJECTED,
			subject: "Order %s rejected",
			textHas: []string{"could not accept your order", "Reason: out of stock: SKU-1 <limited>"},
			htmlHas: []string{"Reason: <em>out of stock: SKU-1 &lt;limited&gt;</em>"},
		},
		{
			name: "order.cancelled with a reason",
			deliver: func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error) {
				return deliver(t, f, &orderv1.OrderCancelled{
					OrderId: orderID, CustomerEmail: email, Reason: "customer changed their mind",
				}, newEventID(t))
			},
			kind:    notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CANCELLED,
			subject: "Order %s cancelled",
			textHas: []string{"has been cancelled", "Reason: customer changed their mind"},
			htmlHas: []string{"has been cancelled", "<em>customer changed their mind</em>"},
		},
		{
			name: "order.cancelled without a reason",
			deliver: func(t *testing.T, f *fixture, orderID, email string) (inbox.Outcome, error) {
				return deliver(t, f, &orderv1.OrderCancelled{
					OrderId: orderID, CustomerEmail: email,
				}, newEventID(t))
			},
			kind:      notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CANCELLED,
			subject:   "Order %s cancelled",
			textHas:   []string{"has been cancelled"},
			htmlHas:   []string{"has been cancelled"},
			textLacks: []string{"Reason:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			orderID, email := uuid.NewString(), "ada@example.com"
			outcome, err := tt.deliver(t, f, orderID, email)
			if err != nil || outcome != inbox.Processed {
				t.Fatalf("deliver: outcome %v, err %v; want processed", outcome, err)
			}

			msgs := f.sink.Messages()
			if len(msgs) != 1 {
				t.Fatalf("sink received %d emails, want 1", len(msgs))
			}
			m := msgs[0]
			if diff := cmp.Diff([]string{email}, m.To); diff != "" {
				t.Errorf("envelope recipients (-want +got):\n%s", diff)
			}
			if got := m.Header.Get("To"); !strings.Contains(got, email) {
				t.Errorf("To header = %q, want %s", got, email)
			}
			if m.From != "orders@ordermesh.localhost" {
				t.Errorf("envelope sender = %q, want orders@ordermesh.localhost", m.From)
			}
			if want := strings.Replace(tt.subject, "%s", orderID, 1); m.Subject != want {
				t.Errorf("subject = %q, want %q", m.Subject, want)
			}
			if m.ParseError != "" {
				t.Errorf("sink could not parse the email: %s", m.ParseError)
			}
			if m.Text == "" || m.HTML == "" {
				t.Fatalf("email lacks a part: text %d bytes, html %d bytes\n%s", len(m.Text), len(m.HTML), m.Raw)
			}
			for _, want := range append([]string{orderID}, tt.textHas...) {
				if !strings.Contains(m.Text, want) {
					t.Errorf("text body lacks %q:\n%s", want, m.Text)
				}
			}
			for _, want := range append([]string{orderID, "<!DOCTYPE html>"}, tt.htmlHas...) {
				if !strings.Contains(m.HTML, want) {
					t.Errorf("html body lacks %q:\n%s", want, m.HTML)
				}
			}
			for _, lack := range tt.textLacks {
				if strings.Contains(m.Text, lack) {
					t.Errorf("text body has %q:\n%s", lack, m.Text)
				}
			}

			sent := outboxSent(t, f.pool)
			want := []sentEvent{{
				Event:         &notificationv1.NotificationSent{OrderId: orderID, Kind: tt.kind, Recipient: email},
				RoutingKey:    "notification.sent",
				Source:        app.Source,
				CorrelationID: orderID,
				TraceParent:   traceParent,
			}}
			if diff := cmp.Diff(want, sent, protocmp.Transform()); diff != "" {
				t.Errorf("outbox (-want +got):\n%s", diff)
			}
			ns, err := store.List(context.Background(), f.pool, orderID)
			if err != nil {
				t.Fatalf("list notifications: %v", err)
			}
			if len(ns) != 1 || ns[0].Recipient != email || "<"+ns[0].MessageID+">" != m.MessageID {
				t.Errorf("notifications = %+v, want one for %s with Message-ID %s", ns, email, m.MessageID)
			}
		})
	}
}

func TestDuplicateDeliverySendsOnce(t *testing.T) {
	f := newFixture(t)
	orderID := uuid.NewString()
	ev := created(orderID, "ada@example.com")
	eventID := newEventID(t)

	for i, want := range []inbox.Outcome{inbox.Processed, inbox.Duplicate, inbox.Duplicate} {
		got, err := deliver(t, f, ev, eventID)
		if err != nil || got != want {
			t.Fatalf("delivery %d: outcome %v, err %v; want %v", i+1, got, err, want)
		}
	}
	// The same notice again under another event id (the order service
	// published it twice) is absorbed by the notifications table.
	if got, err := deliver(t, f, ev, newEventID(t)); err != nil || got != inbox.Processed {
		t.Fatalf("republished event: outcome %v, err %v; want processed", got, err)
	}
	if r := handle(t, f.pool, f.app, delivery(ev, newEventID(t))); r[0].Err != nil {
		t.Fatalf("Handle outside the inbox: %v", r[0].Err)
	}
	// And so is a copy that spells the order id in upper case, which the
	// event's schema allows.
	upper := created(strings.ToUpper(orderID), "ada@example.com")
	if got, err := deliver(t, f, upper, newEventID(t)); err != nil || got != inbox.Processed {
		t.Fatalf("event with the order id in upper case: outcome %v, err %v; want processed", got, err)
	}

	// Whichever way the order id is spelled.
	if n := len(f.sink.Matching(func(m smtpsink.Message) bool { return strings.Contains(strings.ToLower(m.Subject), orderID) })); n != 1 {
		t.Errorf("sink received %d emails for the order, want 1", n)
	}
	if n := len(outboxSent(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d NotificationSent, want 1", n)
	}
	if c := f.runner.Counts(); c.Processed != 3 || c.Duplicates != 2 {
		t.Errorf("runner counts = %+v, want 3 processed and 2 duplicates", c)
	}
}

func TestConcurrentDeliveriesSendOnce(t *testing.T) {
	f := newFixture(t)
	orderID := uuid.NewString()
	ev := &orderv1.OrderRejected{OrderId: orderID, CustomerEmail: "ada@example.com", Reason: "payment declined"}
	sameID := newEventID(t)

	// Half the deliveries repeat one event id, half are distinct events of
	// the same kind: all race for the same notification. The ids are made
	// here, as newEventID may end the test, which only the test's
	// goroutine may do.
	const n = 8
	ids := make([]string, n)
	for i := range ids {
		ids[i] = sameID
		if i%2 == 1 {
			ids[i] = newEventID(t)
		}
	}
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i, id := range ids {
		wg.Go(func() {
			_, errs[i] = deliver(t, f, ev, id)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("delivery %d: %v", i, err)
		}
	}
	if got := len(f.sink.Matching(toOrder(orderID))); got != 1 {
		t.Errorf("sink received %d emails, want 1", got)
	}
	if got := len(outboxSent(t, f.pool)); got != 1 {
		t.Errorf("outbox has %d NotificationSent, want 1", got)
	}
}

func TestFourKindsOfOneOrderSendFourEmails(t *testing.T) {
	f := newFixture(t)
	orderID, email := uuid.NewString(), "grace@example.com"
	steps := []struct {
		name    string
		deliver func() (inbox.Outcome, error)
	}{
		{"created", func() (inbox.Outcome, error) {
			return deliver(t, f, created(orderID, email), newEventID(t))
		}},
		{"confirmed", func() (inbox.Outcome, error) {
			return deliver(t, f, &orderv1.OrderConfirmed{
				OrderId: orderID, CustomerEmail: email, Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 20},
			}, newEventID(t))
		}},
		{"rejected", func() (inbox.Outcome, error) {
			return deliver(t, f, &orderv1.OrderRejected{OrderId: orderID, CustomerEmail: email, Reason: "x"}, newEventID(t))
		}},
		{"cancelled", func() (inbox.Outcome, error) {
			return deliver(t, f, &orderv1.OrderCancelled{OrderId: orderID, CustomerEmail: email}, newEventID(t))
		}},
	}
	for _, s := range steps {
		if outcome, err := s.deliver(); err != nil || outcome != inbox.Processed {
			t.Fatalf("%s: outcome %v, err %v", s.name, outcome, err)
		}
	}
	var subjects []string
	for _, m := range f.sink.Matching(toOrder(orderID)) {
		subjects = append(subjects, m.Subject)
	}
	want := []string{
		"Order " + orderID + " received", "Order " + orderID + " confirmed",
		"Order " + orderID + " rejected", "Order " + orderID + " cancelled",
	}
	if diff := cmp.Diff(want, subjects); diff != "" {
		t.Errorf("subjects (-want +got):\n%s", diff)
	}
	var kinds []notificationv1.NotificationKind
	for _, s := range outboxSent(t, f.pool) {
		kinds = append(kinds, s.Event.GetKind())
	}
	wantKinds := []notificationv1.NotificationKind{
		notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_RECEIVED,
		notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CONFIRMED,
		notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_REJECTED,
		notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CANCELLED,
	}
	if diff := cmp.Diff(wantKinds, kinds); diff != "" {
		t.Errorf("NotificationSent kinds (-want +got):\n%s", diff)
	}
	if n := count(t, f.pool, "notifications"); n != 4 {
		t.Errorf("notifications has %d rows, want 4", n)
	}
}

func TestSMTPServerDownIsRetriedAndSendsOnce(t *testing.T) {
	f := newFixture(t)
	addr := f.sink.Addr()
	if err := f.sink.Close(); err != nil {
		t.Fatalf("stop sink: %v", err)
	}
	orderID := uuid.NewString()
	ev := &orderv1.OrderConfirmed{OrderId: orderID, CustomerEmail: "ada@example.com", Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 5}}
	eventID := newEventID(t)

	for attempt := 1; attempt <= 2; attempt++ {
		_, err := deliver(t, f, ev, eventID)
		if err == nil {
			t.Fatalf("attempt %d with the SMTP server down succeeded", attempt)
		}
		if eventbus.IsPermanent(err) || errors.Is(err, app.ErrRejected) || !eventbus.IsUnavailable(err) {
			t.Fatalf("attempt %d: err = %v, want an outage (eventbus.Unavailable), retried without counting an attempt", attempt, err)
		}
		for _, table := range []string{"notifications", "inbox", "outbox"} {
			if n := count(t, f.pool, table); n != 0 {
				t.Errorf("attempt %d: %s has %d rows after a failed send, want 0", attempt, table, n)
			}
		}
	}

	up := startSink(t, addr)
	if outcome, err := deliver(t, f, ev, eventID); err != nil || outcome != inbox.Processed {
		t.Fatalf("with the server up: outcome %v, err %v; want processed", outcome, err)
	}
	if outcome, err := deliver(t, f, ev, eventID); err != nil || outcome != inbox.Duplicate {
		t.Fatalf("redelivery after success: outcome %v, err %v; want duplicate", outcome, err)
	}
	if n := len(up.Matching(toOrder(orderID))); n != 1 {
		t.Errorf("sink received %d emails, want 1", n)
	}
	if n := len(outboxSent(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d NotificationSent, want 1", n)
	}
}

func TestRecipientRejection(t *testing.T) {
	tests := []struct {
		name                        string
		code                        int
		wantPermanent, wantDeferred bool
	}{
		{name: "permanent 550 goes to the dead-letter queue", code: 550, wantPermanent: true},
		// A deferral says nothing against the email: retried without
		// counting an attempt (up to MaxDeferrals times in a row).
		{name: "temporary 451 is retried", code: 451, wantDeferred: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			f.sink.Reject("nobody@example.com", tt.code, "no such mailbox")
			orderID := uuid.NewString()
			ev := &orderv1.OrderRejected{OrderId: orderID, CustomerEmail: "nobody@example.com", Reason: "payment declined"}
			_, err := deliver(t, f, ev, newEventID(t))
			if err == nil {
				t.Fatal("delivery to a rejected recipient succeeded")
			}
			if got := eventbus.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, got, tt.wantPermanent)
			}
			if got := eventbus.IsUnavailable(err); got != tt.wantDeferred {
				t.Errorf("IsUnavailable(%v) = %v, want %v", err, got, tt.wantDeferred)
			}
			if got := errors.Is(err, app.ErrDeferred); got != tt.wantDeferred {
				t.Errorf("errors.Is(%v, ErrDeferred) = %v, want %v", err, got, tt.wantDeferred)
			}
			if got := errors.Is(err, app.ErrRejected); got != tt.wantPermanent {
				t.Errorf("errors.Is(%v, ErrRejected) = %v, want %v", err, got, tt.wantPermanent)
			}
			for _, table := range []string{"notifications", "inbox", "outbox"} {
				if n := count(t, f.pool, table); n != 0 {
					t.Errorf("%s has %d rows after a rejection, want 0", table, n)
				}
			}
			if n := len(f.sink.Messages()); n != 0 {
				t.Errorf("sink kept %d emails", n)
			}
		})
	}
}

func TestInvalidEventIsPermanent(t *testing.T) {
	f := newFixture(t)
	tests := []struct {
		name string
		ev   proto.Message
	}{
		{"no recipient", &orderv1.OrderCancelled{OrderId: uuid.NewString()}},
		{"order id not a UUID", &orderv1.OrderCancelled{OrderId: "o-1\r\nBcc: x@example.com", CustomerEmail: "ada@example.com"}},
		{"not an order event", &notificationv1.NotificationSent{OrderId: uuid.NewString(), Recipient: "ada@example.com"}},
	}
	// One batch: the invalid events fail alone, the valid one is sent.
	valid := uuid.NewString()
	batch := []inbox.Delivery{delivery(&orderv1.OrderCancelled{OrderId: valid, CustomerEmail: "ada@example.com"}, newEventID(t))}
	for _, tt := range tests {
		batch = append(batch, delivery(tt.ev, newEventID(t)))
	}
	results := handle(t, f.pool, f.app, batch...)
	if results[0].Err != nil {
		t.Errorf("valid event: %v", results[0].Err)
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := results[i+1].Err; !eventbus.IsPermanent(err) {
				t.Fatalf("err = %v, want permanent", err)
			}
		})
	}
	if msgs := f.sink.Messages(); len(msgs) != 1 || !toOrder(valid)(msgs[0]) {
		t.Errorf("sink received %d emails, want the valid event's only", len(msgs))
	}
	if n := count(t, f.pool, "notifications"); n != 1 {
		t.Errorf("notifications has %d rows, want 1", n)
	}
	if n := len(outboxSent(t, f.pool)); n != 1 {
		t.Errorf("outbox has %d NotificationSent, want 1", n)
	}
}

// TestCommitFailureAfterSend pins down the documented at-least-once
// window: if the transaction does not commit after the SMTP server
// accepted the emails, the redelivered events send them again, every email
// of the batch, each with the same Message-ID so mail systems can tell it
// is a duplicate; but not when the process that sent them handles them
// again, which remembers what it sent.
func TestCommitFailureAfterSend(t *testing.T) {
	for _, tt := range []struct {
		name string
		// sameInstance: the events are redelivered to the App that sent
		// them, not to a new one.
		sameInstance bool
		want         int
	}{
		{"redelivered to another instance", false, 2},
		{"redelivered to the same instance", true, 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			f := newFixture(t)
			orderA, orderB := uuid.NewString(), uuid.NewString()
			batch := []inbox.Delivery{
				delivery(&orderv1.OrderCancelled{OrderId: orderA, CustomerEmail: "ada@example.com"}, newEventID(t)),
				delivery(created(orderB, "grace@example.com"), newEventID(t)),
			}
			errCommit := errors.New("commit lost")
			err := postgres.WithTx(context.Background(), f.pool, func(tx pgx.Tx) error {
				results, err := f.app.Handle(context.Background(), tx, batch)
				if err != nil {
					return err
				}
				for i, r := range results {
					if r.Err != nil {
						t.Errorf("delivery %d: %v", i, r.Err)
					}
				}
				return errCommit // as if COMMIT failed after the sends
			})
			if !errors.Is(err, errCommit) {
				t.Fatalf("err = %v, want the simulated commit failure", err)
			}
			if n := count(t, f.pool, "notifications"); n != 0 {
				t.Fatalf("notifications has %d rows after the rollback", n)
			}
			runner := f.batch
			if !tt.sameInstance {
				_, runner = f.newApp(t)
			}
			for _, d := range batch {
				if outcome, err := runner.Process(context.Background(), d.Event, d.Meta); err != nil || outcome != inbox.Processed {
					t.Fatalf("redelivery of %s: outcome %v, err %v", d.Meta.Type, outcome, err)
				}
			}
			for _, c := range []struct {
				orderID string
				kind    app.Kind
			}{{orderA, app.KindCancelled}, {orderB, app.KindReceived}} {
				msgs := f.sink.Matching(toOrder(c.orderID))
				if len(msgs) != tt.want {
					t.Fatalf("sink received %d emails for order %s, want %d", len(msgs), c.orderID, tt.want)
				}
				for _, m := range msgs {
					if want := "<" + app.MessageID(c.orderID, c.kind) + ">"; m.MessageID != want {
						t.Errorf("Message-ID %q, want %q", m.MessageID, want)
					}
				}
			}
			// Either way the notices commit, and their NotificationSent.
			if n := count(t, f.pool, "notifications"); n != 2 {
				t.Errorf("notifications has %d rows, want 2", n)
			}
			if n := len(outboxSent(t, f.pool)); n != 2 {
				t.Errorf("outbox has %d NotificationSent, want 2", n)
			}
		})
	}
}

// TestMessageIDsEndWithTheSendersDomain: with WithMessageIDDomain, as the
// service sets it to the domain of ORDERMESH_SMTP_FROM, the Message-ID
// ends with that domain, in the email and in the notification's record.
func TestMessageIDsEndWithTheSendersDomain(t *testing.T) {
	f := newFixture(t)
	a, err := app.New(f.mailer, quiet, app.WithMessageIDDomain(f.mailer.Domain()))
	if err != nil {
		t.Fatal(err)
	}
	f.batch = inbox.NewBatchRunner(f.runner, a.Handle, batchSize, 10*time.Second)
	orderID := uuid.NewString()
	if outcome, err := deliver(t, f, created(orderID, "ada@example.com"), newEventID(t)); err != nil || outcome != inbox.Processed {
		t.Fatalf("deliver: %v, %v", outcome, err)
	}
	want := orderID + ".received@ordermesh.localhost" // mailer.DefaultFrom's domain
	msgs := f.sink.Matching(toOrder(orderID))
	if len(msgs) != 1 || msgs[0].MessageID != "<"+want+">" {
		t.Fatalf("emails %+v, want one with Message-ID <%s>", msgs, want)
	}
	ns, err := store.List(context.Background(), f.pool, orderID)
	if err != nil || len(ns) != 1 || ns[0].MessageID != want {
		t.Errorf("notifications %+v, %v; want one recording Message-ID %s", ns, err, want)
	}
}
