package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"testing"
	"time"

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
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

// fakeSender stands in for the mail server: it records the emails it
// accepts, fails those to a recipient given an error, holds those to a
// hanging recipient until their context ends, and takes delay over each.
// It counts the sends in flight at once.
type fakeSender struct {
	delay time.Duration

	mu                    sync.Mutex
	fail                  map[string]error
	hang                  map[string]bool
	sent                  []app.Email
	attempts              int
	inFlight, maxInFlight int
}

var _ app.Sender = (*fakeSender)(nil)

func newFakeSender() *fakeSender {
	return &fakeSender{fail: map[string]error{}, hang: map[string]bool{}}
}

func (s *fakeSender) Send(ctx context.Context, e app.Email) error {
	s.mu.Lock()
	s.attempts++
	s.inFlight++
	s.maxInFlight = max(s.maxInFlight, s.inFlight)
	err, hang := s.fail[e.To], s.hang[e.To]
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.inFlight--
		s.mu.Unlock()
	}()
	if hang {
		<-ctx.Done()
		return fmt.Errorf("send to %s: %w", e.To, ctx.Err())
	}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return fmt.Errorf("send to %s: %w", e.To, ctx.Err())
	}
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.sent = append(s.sent, e)
	s.mu.Unlock()
	return nil
}

// setFail makes sends to recipient fail with err, or succeed when err is
// nil.
func (s *fakeSender) setFail(recipient string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.fail[recipient] = err
}

// sentFor returns how many emails of kind k for order orderID were sent.
func (s *fakeSender) sentFor(orderID string, k app.Kind) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, e := range s.sent {
		if e.MessageID == app.MessageID(orderID, k) {
			n++
		}
	}
	return n
}

// newFakeApp gives a test its own migrated schema and an app sending
// through a fakeSender.
func newFakeApp(t *testing.T, opts ...app.Option) (*pgxpool.Pool, *fakeSender, *app.App) {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, inbox.Migrations, outbox.Migrations)
	sender := newFakeSender()
	a, err := app.New(sender, quiet, opts...)
	if err != nil {
		t.Fatalf("new app: %v", err)
	}
	return pool, sender, a
}

func confirmed(orderID, email string) *orderv1.OrderConfirmed {
	return &orderv1.OrderConfirmed{OrderId: orderID, CustomerEmail: email, Total: &moneyv1.Money{CurrencyCode: "EUR", Units: 20}}
}

// notified returns the kinds recorded in the notifications table for
// orderID, and how many NotificationSent the outbox holds for it.
func notified(t *testing.T, pool *pgxpool.Pool, orderID string) (kinds []string, outboxRows int) {
	t.Helper()
	ns, err := store.List(context.Background(), pool, orderID)
	if err != nil {
		t.Fatalf("list notifications: %v", err)
	}
	for _, n := range ns {
		kinds = append(kinds, n.Kind)
	}
	for _, s := range outboxSent(t, pool) {
		if s.Event.GetOrderId() == orderID {
			outboxRows++
		}
	}
	return kinds, outboxRows
}

func TestBatchWithTheSameNoticeTwiceSendsOnce(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	orderID := uuid.NewString()
	// The order service published order.created twice, under two ids, and
	// both copies are in the batch with order.confirmed between them.
	results := handle(t, pool, a,
		delivery(created(orderID, "ada@example.com"), newEventID(t)),
		delivery(confirmed(orderID, "ada@example.com"), newEventID(t)),
		delivery(created(orderID, "ada@example.com"), newEventID(t)),
	)
	for i, r := range results {
		if r.Err != nil {
			t.Errorf("delivery %d: %v", i, r.Err)
		}
	}
	if n := sender.sentFor(orderID, app.KindReceived); n != 1 {
		t.Errorf("%d received emails sent, want 1", n)
	}
	if n := sender.sentFor(orderID, app.KindConfirmed); n != 1 {
		t.Errorf("%d confirmed emails sent, want 1", n)
	}
	if kinds, rows := notified(t, pool, orderID); len(kinds) != 2 || rows != 2 {
		t.Errorf("notifications %v and %d NotificationSent, want 2 of each", kinds, rows)
	}
}

// TestBatchWithTheSameNoticeTwiceWhoseSendFails: the copy of a notice
// whose send failed fails too, retryably, so that its own retry can send
// the email should the first one's never come.
func TestBatchWithTheSameNoticeTwiceWhoseSendFails(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	orderID := uuid.NewString()
	sender.setFail("flaky@example.com", errors.New("connection refused"))
	ev := &orderv1.OrderRejected{OrderId: orderID, CustomerEmail: "flaky@example.com", Reason: "out of stock"}
	first, second := delivery(ev, newEventID(t)), delivery(ev, newEventID(t))
	for i, r := range handle(t, pool, a, first, second) {
		if r.Err == nil || eventbus.IsPermanent(r.Err) {
			t.Errorf("delivery %d: err = %v, want a retryable error", i, r.Err)
		}
	}
	if kinds, rows := notified(t, pool, orderID); len(kinds) != 0 || rows != 0 {
		t.Fatalf("notifications %v and %d NotificationSent after failed sends, want none", kinds, rows)
	}

	sender.setFail("flaky@example.com", nil)
	for _, d := range []inbox.Delivery{second, first} {
		if r := handle(t, pool, a, d); r[0].Err != nil {
			t.Fatalf("retry of %s: %v", d.Meta.ID, r[0].Err)
		}
	}
	if n := sender.sentFor(orderID, app.KindRejected); n != 1 {
		t.Errorf("%d emails sent, want 1", n)
	}
	if kinds, rows := notified(t, pool, orderID); len(kinds) != 1 || rows != 1 {
		t.Errorf("notifications %v and %d NotificationSent, want 1 of each", kinds, rows)
	}
}

// The copy of a notice fails as the first delivery did: an outage as an
// outage (no attempt counted), a rejection as a rejection.
func TestBatchWithTheSameNoticeTwiceFailsAsTheFirst(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.fail["down@example.com"] = fmt.Errorf("connect: %w: %w", app.ErrUnreachable, errors.New("connection refused"))
	sender.fail["gone@example.com"] = fmt.Errorf("rcpt: %w", app.ErrRejected)
	for _, tt := range []struct {
		to                     string
		unavailable, permanent bool
	}{{"down@example.com", true, false}, {"gone@example.com", false, true}} {
		ev := confirmed(uuid.NewString(), tt.to)
		for i, r := range handle(t, pool, a, delivery(ev, newEventID(t)), delivery(ev, newEventID(t))) {
			if r.Err == nil || eventbus.IsUnavailable(r.Err) != tt.unavailable || eventbus.IsPermanent(r.Err) != tt.permanent {
				t.Errorf("%s, delivery %d: %v; want an error, unavailable %v, permanent %v", tt.to, i, r.Err, tt.unavailable, tt.permanent)
			}
		}
	}
}

func TestBatchSendFailuresFailAlone(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.setFail("flaky@example.com", errors.New("451 try again later"))
	sender.setFail("nobody@example.com", fmt.Errorf("550 no such mailbox: %w", app.ErrRejected))
	orders := make([]string, 5)
	for i := range orders {
		orders[i] = uuid.NewString()
	}
	// The last order's email was sent in an earlier batch.
	if r := handle(t, pool, a, delivery(confirmed(orders[4], "ada@example.com"), newEventID(t))); r[0].Err != nil {
		t.Fatalf("earlier batch: %v", r[0].Err)
	}

	flaky := delivery(confirmed(orders[1], "flaky@example.com"), newEventID(t))
	results := handle(t, pool, a,
		delivery(confirmed(orders[0], "ada@example.com"), newEventID(t)),
		flaky,
		delivery(confirmed(orders[2], "nobody@example.com"), newEventID(t)),
		delivery(confirmed(orders[3], "grace@example.com"), newEventID(t)),
		delivery(confirmed(orders[4], "ada@example.com"), newEventID(t)),
	)
	tests := []struct {
		name          string
		wantErr       bool
		wantPermanent bool
		wantSent      int
		wantNotified  int // rows in notifications, and NotificationSent in the outbox
	}{
		{name: "sent", wantSent: 1, wantNotified: 1},
		{name: "transient failure", wantErr: true},
		{name: "rejected", wantErr: true, wantPermanent: true},
		{name: "sent too", wantSent: 1, wantNotified: 1},
		{name: "sent before", wantSent: 1, wantNotified: 1},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := results[i].Err
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, want an error: %v", err, tt.wantErr)
			}
			if got := eventbus.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("IsPermanent(%v) = %v, want %v", err, got, tt.wantPermanent)
			}
			if got := errors.Is(err, app.ErrRejected); got != tt.wantPermanent {
				t.Errorf("errors.Is(%v, ErrRejected) = %v, want %v", err, got, tt.wantPermanent)
			}
			if n := sender.sentFor(orders[i], app.KindConfirmed); n != tt.wantSent {
				t.Errorf("%d emails sent, want %d", n, tt.wantSent)
			}
			if kinds, rows := notified(t, pool, orders[i]); len(kinds) != tt.wantNotified || rows != tt.wantNotified {
				t.Errorf("notifications %v and %d NotificationSent, want %d of each", kinds, rows, tt.wantNotified)
			}
		})
	}

	// Redelivered once the server takes it, the transient failure sends.
	sender.setFail("flaky@example.com", nil)
	if r := handle(t, pool, a, flaky); r[0].Err != nil {
		t.Fatalf("redelivery: %v", r[0].Err)
	}
	if n := sender.sentFor(orders[1], app.KindConfirmed); n != 1 {
		t.Errorf("%d emails sent after the redelivery, want 1", n)
	}
	if kinds, rows := notified(t, pool, orders[1]); len(kinds) != 1 || rows != 1 {
		t.Errorf("after the redelivery: notifications %v and %d NotificationSent, want 1 of each", kinds, rows)
	}
}

// TestConcurrentBatchesOnOverlappingNotices runs two batches at once, in
// transactions of their own, on notices that overlap and come in opposite
// orders: neither deadlocks, and every email is sent once.
func TestConcurrentBatchesOnOverlappingNotices(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.delay = 10 * time.Millisecond
	const rounds = 10
	for round := range rounds {
		orders := make([]string, 6)
		for i := range orders {
			orders[i] = uuid.NewString()
		}
		var one, other []inbox.Delivery
		for _, id := range orders[:4] {
			one = append(one, delivery(confirmed(id, "ada@example.com"), newEventID(t)))
		}
		for i := len(orders) - 1; i >= 2; i-- {
			other = append(other, delivery(confirmed(orders[i], "ada@example.com"), newEventID(t)))
		}

		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		var wg sync.WaitGroup
		start := make(chan struct{})
		errs := make([]error, 2)
		for k, batch := range [][]inbox.Delivery{one, other} {
			wg.Go(func() {
				<-start
				results, err := handleTx(ctx, pool, a, batch)
				for _, r := range results {
					err = errors.Join(err, r.Err)
				}
				errs[k] = err
			})
		}
		close(start)
		wg.Wait()
		cancel()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("round %d: %v", round, err)
		}
		for _, id := range orders {
			if n := sender.sentFor(id, app.KindConfirmed); n != 1 {
				t.Errorf("round %d: order %s: %d emails sent, want 1", round, id, n)
			}
			if kinds, rows := notified(t, pool, id); len(kinds) != 1 || rows != 1 {
				t.Errorf("round %d: order %s: notifications %v and %d NotificationSent, want 1 of each", round, id, kinds, rows)
			}
		}
	}
}

func TestBatchSendsItsEmailsAtOnce(t *testing.T) {
	const sends = 4
	pool, sender, a := newFakeApp(t, app.WithSends(sends))
	sender.delay = 100 * time.Millisecond
	var batch []inbox.Delivery
	for range 2 * sends {
		batch = append(batch, delivery(confirmed(uuid.NewString(), "ada@example.com"), newEventID(t)))
	}
	for i, r := range handle(t, pool, a, batch...) {
		if r.Err != nil {
			t.Errorf("delivery %d: %v", i, r.Err)
		}
	}
	if sender.maxInFlight < 2 || sender.maxInFlight > sends {
		t.Errorf("%d emails were sent at once, want from 2 to %d", sender.maxInFlight, sends)
	}
}

// TestHangingSendFailsAlone: an email that hangs fails before the
// transaction's deadline, leaving time for the batch's other emails to
// commit.
func TestHangingSendFailsAlone(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.hang["stuck@example.com"] = true
	stuck, fine := uuid.NewString(), uuid.NewString()
	// As the batch runner bounds each transaction.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	results, err := handleTx(ctx, pool, a, []inbox.Delivery{
		delivery(confirmed(stuck, "stuck@example.com"), newEventID(t)),
		delivery(confirmed(fine, "ada@example.com"), newEventID(t)),
	})
	if err != nil {
		t.Fatalf("batch failed as a whole: %v", err)
	}
	if err := results[0].Err; err == nil || eventbus.IsPermanent(err) {
		t.Errorf("hanging send: err = %v, want a retryable error", err)
	}
	if err := results[1].Err; err != nil {
		t.Errorf("the other send: %v", err)
	}
	if kinds, rows := notified(t, pool, stuck); len(kinds) != 0 || rows != 0 {
		t.Errorf("hanging send left notifications %v and %d NotificationSent", kinds, rows)
	}
	if kinds, rows := notified(t, pool, fine); len(kinds) != 1 || rows != 1 {
		t.Errorf("the other send: notifications %v and %d NotificationSent, want 1 of each", kinds, rows)
	}
}

// TestAnEmailWhoseReplyWasLostCountsAsSent: an email whose data went out
// but whose acceptance reply was lost (ErrMaybeSent) is counted as sent:
// its claim and NotificationSent commit, and it is not sent again when
// its event comes again.
func TestAnEmailWhoseReplyWasLostCountsAsSent(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.fail["lost@example.com"] = fmt.Errorf("send: reply lost: %w", app.ErrMaybeSent)
	id := uuid.NewString()
	for i, r := range handle(t, pool, a, delivery(confirmed(id, "lost@example.com"), newEventID(t))) {
		if r.Err != nil {
			t.Errorf("delivery %d: %v, want it counted as sent", i, r.Err)
		}
	}
	if kinds, rows := notified(t, pool, id); len(kinds) != 1 || rows != 1 {
		t.Errorf("notifications %v and %d NotificationSent, want 1 of each", kinds, rows)
	}
	delete(sender.fail, "lost@example.com")
	for i, r := range handle(t, pool, a, delivery(confirmed(id, "lost@example.com"), newEventID(t))) {
		if r.Err != nil {
			t.Errorf("the event again, delivery %d: %v", i, r.Err)
		}
	}
	if sender.attempts != 1 {
		t.Errorf("%d send attempts, want 1", sender.attempts)
	}
}

// TestSendsThatNeverStartedAreNoAttempt: with one send at a time, an
// email queued behind one that hangs never starts before the batch's time
// for sending runs out; its delivery is retried without counting an
// attempt (eventbus.Unavailable), while the hanging one's counts.
func TestSendsThatNeverStartedAreNoAttempt(t *testing.T) {
	pool, sender, a := newFakeApp(t, app.WithSends(1))
	sender.hang["stuck@example.com"] = true
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	results, err := handleTx(ctx, pool, a, []inbox.Delivery{
		delivery(confirmed(uuid.NewString(), "stuck@example.com"), newEventID(t)),
		delivery(confirmed(uuid.NewString(), "ada@example.com"), newEventID(t)),
	})
	if err != nil {
		t.Fatalf("batch failed as a whole: %v", err)
	}
	if err := results[0].Err; err == nil || eventbus.IsPermanent(err) || eventbus.IsUnavailable(err) {
		t.Errorf("hanging send: %v, want a retryable error, its attempt counted", err)
	}
	if err := results[1].Err; !eventbus.IsUnavailable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("the send queued behind it: %v, want the deadline marked eventbus.Unavailable", err)
	}
}

// TestBatchRunnerSharesTransactions delivers many events at once through
// the batch runner, with the SMTP sink as the mail server: they share
// transactions, and each email is sent once.
func TestBatchRunnerSharesTransactions(t *testing.T) {
	f := newFixture(t)
	const n = 24
	orders := make([]string, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make([]error, n)
	for i := range n {
		orders[i] = uuid.NewString()
		d := delivery(confirmed(orders[i], "ada@example.com"), newEventID(t))
		wg.Go(func() {
			<-start
			var outcome inbox.Outcome
			outcome, errs[i] = f.batch.Process(context.Background(), d.Event, d.Meta)
			if errs[i] == nil && outcome != inbox.Processed {
				errs[i] = fmt.Errorf("outcome %v", outcome)
			}
		})
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("deliveries: %v", err)
	}
	for _, id := range orders {
		if got := len(f.sink.Matching(toOrder(id))); got != 1 {
			t.Errorf("order %s: sink received %d emails, want 1", id, got)
		}
	}
	if got := len(outboxSent(t, f.pool)); got != n {
		t.Errorf("outbox has %d NotificationSent, want %d", got, n)
	}
	if got := count(t, f.pool, "inbox"); got != n {
		t.Errorf("inbox has %d rows, want %d", got, n)
	}
	if txs, deliveries := f.batch.Stats(); deliveries != n || txs >= n {
		t.Errorf("%d deliveries in %d transactions, want %d in fewer", deliveries, txs, n)
	}
}

// TestUnreachableMailServerIsAnOutage: a send that found no mail server
// to talk to (ErrUnreachable), or that the server deferred (ErrDeferred:
// a 4xx reply, greylisting say), fails its delivery as an outage, retried
// without counting an attempt, but a deferral only up to MaxDeferrals
// retries in a row; one that failed once the session was open (the connection
// dropped mid-message) counts, as does a refusal.
func TestUnreachableMailServerIsAnOutage(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	sender.fail["down@example.com"] = fmt.Errorf("connect: %w: %w", app.ErrUnreachable, errors.New("greeting: 421 try later"))
	sender.fail["dropped@example.com"] = fmt.Errorf("smtp DATA: %w", io.EOF)
	sender.fail["gone@example.com"] = fmt.Errorf("rcpt: %w", app.ErrRejected)
	greylisted := fmt.Errorf("rcpt: %w: %w", app.ErrDeferred, errors.New("451 greylisted, try again later"))
	sender.fail["greylisted@example.com"] = greylisted
	sender.fail["deferred-for-days@example.com"] = greylisted
	var batch []inbox.Delivery
	for _, to := range []string{"down@example.com", "dropped@example.com", "gone@example.com", "greylisted@example.com", "deferred-for-days@example.com"} {
		d := delivery(confirmed(uuid.NewString(), to), newEventID(t))
		if to == "deferred-for-days@example.com" {
			d.Meta.OutageRetries = app.MaxDeferrals
		}
		batch = append(batch, d)
	}
	results := handle(t, pool, a, batch...)
	for i, want := range []struct{ unavailable, permanent bool }{{true, false}, {false, false}, {false, true}, {true, false}, {false, false}} {
		err := results[i].Err
		if err == nil || eventbus.IsUnavailable(err) != want.unavailable || eventbus.IsPermanent(err) != want.permanent {
			t.Errorf("delivery %d: %v; want an error, unavailable %v, permanent %v", i, err, want.unavailable, want.permanent)
		}
	}
}

// An order's cancellation, once emailed, makes its confirmation moot: a
// confirmation handled later, or in the same batch, is not emailed (the
// customer's last email says what became of the order); one handled
// before it was.
func TestCancellationSupersedesALateConfirmation(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	const to = "ada@example.com"
	cancelled := func(id string) *orderv1.OrderCancelled {
		return &orderv1.OrderCancelled{OrderId: id, CustomerEmail: to}
	}
	late, together, inOrder := uuid.NewString(), uuid.NewString(), uuid.NewString()
	for _, batch := range [][]proto.Message{
		{cancelled(late)}, {confirmed(late, to)},
		{confirmed(together, to), cancelled(together)},
		{confirmed(inOrder, to)}, {cancelled(inOrder)},
	} {
		ds := make([]inbox.Delivery, len(batch))
		for i, ev := range batch {
			ds[i] = delivery(ev, newEventID(t))
		}
		for i, r := range handle(t, pool, a, ds...) {
			if r.Err != nil {
				t.Fatalf("%T of order %s: %v", batch[i], orderIDOf(batch[i]), r.Err)
			}
		}
	}
	for _, tt := range []struct {
		name, id  string
		confirmed int
	}{{"confirmed after the cancellation", late, 0}, {"both in one batch", together, 0}, {"confirmed first", inOrder, 1}} {
		if n := sender.sentFor(tt.id, app.KindConfirmed); n != tt.confirmed {
			t.Errorf("%s: %d confirmation emails, want %d", tt.name, n, tt.confirmed)
		}
		if n := sender.sentFor(tt.id, app.KindCancelled); n != 1 {
			t.Errorf("%s: %d cancellation emails, want 1", tt.name, n)
		}
		if kinds, rows := notified(t, pool, tt.id); len(kinds) != 1+tt.confirmed || rows != 1+tt.confirmed {
			t.Errorf("%s: notifications %v and %d NotificationSent, want %d of each", tt.name, kinds, rows, 1+tt.confirmed)
		}
	}
}

// handleRolledBack hands batch to the App in a transaction that then
// fails to commit, as if COMMIT were lost after the sends; each delivery
// must have succeeded.
func handleRolledBack(t *testing.T, pool *pgxpool.Pool, a *app.App, batch ...inbox.Delivery) {
	t.Helper()
	errCommit := errors.New("commit lost")
	err := postgres.WithTx(context.Background(), pool, func(tx pgx.Tx) error {
		results, err := a.Handle(context.Background(), tx, batch)
		if err != nil {
			return err
		}
		for i, r := range results {
			if r.Err != nil {
				t.Errorf("delivery %d: %v", i, r.Err)
			}
		}
		return errCommit
	})
	if !errors.Is(err, errCommit) {
		t.Fatalf("handle = %v, want the simulated commit failure", err)
	}
}

// What this process emailed counts, committed or not: a confirmation it
// sent before the order's cancellation is recorded and announced when it
// comes again, though the cancellation was recorded meanwhile; and a
// confirmation that comes after a cancellation it sent is not emailed,
// though that cancellation's transaction failed.
func TestSupersedingFollowsWhatThisProcessSent(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	const to = "ada@example.com"
	cancelled := func(id string) *orderv1.OrderCancelled {
		return &orderv1.OrderCancelled{OrderId: id, CustomerEmail: to}
	}

	sentFirst := uuid.NewString()
	confirmation := delivery(confirmed(sentFirst, to), newEventID(t))
	handleRolledBack(t, pool, a, confirmation)
	if r := handle(t, pool, a, delivery(cancelled(sentFirst), newEventID(t))); r[0].Err != nil {
		t.Fatalf("cancellation: %v", r[0].Err)
	}
	if r := handle(t, pool, a, confirmation); r[0].Err != nil {
		t.Fatalf("confirmation again: %v", r[0].Err)
	}
	if n := sender.sentFor(sentFirst, app.KindConfirmed); n != 1 {
		t.Errorf("confirmation sent first: %d emails, want 1 (not sent again)", n)
	}
	if kinds, rows := notified(t, pool, sentFirst); len(kinds) != 2 || rows != 2 {
		t.Errorf("confirmation sent first: notifications %v and %d NotificationSent, want 2 of each", kinds, rows)
	}

	cancelledFirst := uuid.NewString()
	handleRolledBack(t, pool, a, delivery(cancelled(cancelledFirst), newEventID(t)))
	if r := handle(t, pool, a, delivery(confirmed(cancelledFirst, to), newEventID(t))); r[0].Err != nil {
		t.Fatalf("confirmation after the cancellation: %v", r[0].Err)
	}
	if n := sender.sentFor(cancelledFirst, app.KindConfirmed); n != 0 {
		t.Errorf("confirmation after a cancellation sent: %d emails, want none", n)
	}
}

// A confirmation the batch's cancellation replaces fails when that
// cancellation's delivery does, as it does, so that it is not lost with a
// cancellation that never goes out.
func TestConfirmationFailsWithTheCancellationReplacingIt(t *testing.T) {
	pool, sender, a := newFakeApp(t)
	const to = "flaky@example.com"
	id := uuid.NewString()
	sender.fail[to] = fmt.Errorf("connect: %w: %w", app.ErrUnreachable, errors.New("connection refused"))
	results := handle(t, pool, a, delivery(confirmed(id, to), newEventID(t)), delivery(&orderv1.OrderCancelled{OrderId: id, CustomerEmail: to}, newEventID(t)))
	for i, r := range results {
		if r.Err == nil || !eventbus.IsUnavailable(r.Err) {
			t.Errorf("delivery %d: %v; want the cancellation's outage", i, r.Err)
		}
	}
	if sender.attempts != 1 {
		t.Errorf("%d sends tried, want 1: the cancellation's alone", sender.attempts)
	}

	// A cancellation refused for good is dead-lettered; the confirmation,
	// never tried, is retried (and then, with no cancellation recorded,
	// sent) rather than dead-lettered with it.
	rejected := uuid.NewString()
	sender.fail[to] = fmt.Errorf("data: %w", app.ErrRejected)
	results = handle(t, pool, a, delivery(confirmed(rejected, to), newEventID(t)), delivery(&orderv1.OrderCancelled{OrderId: rejected, CustomerEmail: to}, newEventID(t)))
	if err := results[1].Err; !eventbus.IsPermanent(err) {
		t.Errorf("cancellation: %v; want permanent", err)
	}
	if err := results[0].Err; err == nil || eventbus.IsPermanent(err) {
		t.Errorf("confirmation: %v; want a retryable error", err)
	}
	if kinds, rows := notified(t, pool, id); len(kinds) != 0 || rows != 0 {
		t.Errorf("notifications %v and %d NotificationSent, want none", kinds, rows)
	}
}
