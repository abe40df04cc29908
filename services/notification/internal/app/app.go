// Package app is the notification service's application layer: it turns
// order events into emails to the customer (order received, confirmed,
// rejected, cancelled), sends each at most once per order and kind through
// a Sender, and publishes NotificationSent for every email sent.
//
// # Delivery
//
// An order may be cancelled once confirmed, never confirmed once
// cancelled; when its order.confirmed is handled after its order.cancelled (a retried or
// redelivered confirmation, or both in one batch), the confirmation is not
// emailed (see supersededBy), so that the customer's last email says what
// became of the order.
//
// Handle is an inbox.BatchHandler: it runs inside the batch runner's
// transaction, which records the batch's events in the inbox and commits
// them together. For a batch, Handle, in this order:
//
//  1. checks and renders each delivery's email. An event that can never be
//     sent (not an order event, no recipient, an order id that is not a
//     UUID) fails alone, permanently. A delivery of the same order and
//     kind as an earlier one of the batch (the notice published twice)
//     sends nothing: it succeeds if that one's email went out or had
//     before, and fails as that one did if its send failed. A
//     confirmation whose order's cancellation is in the batch too sends
//     nothing either, and succeeds or fails as the cancellation does
//     (retryably, if the cancellation failed for good);
//  2. claims every (order id, kind) of the batch in the notifications
//     table and writes NotificationSent for each to the outbox, in one
//     round trip (store.Claim). A claim that exists already means the
//     email was sent: that delivery does nothing. A concurrent transaction
//     (another instance's) holding one of the claims, or the cancellation
//     a confirmation's claim gives way to, makes the claim wait until it
//     ends; locks and claims are taken in (order id, kind) order, so two
//     such transactions cannot deadlock;
//  3. hands the claimed emails to the SMTP server, several at once, each
//     bounded by the Sender's own timeout and all ending a little before
//     the transaction's deadline, so that an email that hangs fails alone;
//  4. only when a claim was held already or a send failed: drops their
//     outbox rows, and the claims of the failed sends, in one statement
//     (store.Release), so that a delivery that fails leaves nothing;
//  5. returns, and the runner drops the failed deliveries' inbox rows and
//     commits the rest: inbox rows, claims and outbox rows together.
//
// A failed send fails its delivery alone: its claim is gone, the bus
// retries the event (or parks it in the dead-letter queue when the server
// refused the email for good, ErrRejected), and the next attempt sends the
// email; the batch's other emails commit. Nothing is lost while the SMTP
// server is unreachable, or defers the email (for up to MaxDeferrals):
// those retries count no attempt (ErrUnreachable, ErrDeferred).
//
// # The at-least-once window
//
// The one gap left is between 3 and the commit: an SMTP server cannot take
// part in a PostgreSQL transaction, so if the transaction fails after the
// server accepted the emails (the database or the process goes away in
// that instant, or a statement after the sends fails), the batch's events
// are redelivered and its emails are sent again: every email the batch
// sent, since they commit together (unless this process handles them
// again, as below). That is the remaining at-least-once window. It is kept as small as it can be: when every claimed email went
// out and no claim was held already, every database write happens before
// the sends, so after them only COMMIT remains, as it did when each
// delivery had a transaction of its own (otherwise step 4 comes first,
// and, when a delivery failed, the runner's removal of its inbox row: one
// round trip each); the mail client counts a message as sent as soon as
// the server accepted its data, even if closing the connection fails
// afterwards, and one whose data went out whole but whose reply was lost
// as sent (ErrMaybeSent); within one process, an App remembers the last emails it sent
// (recentSendsKept of them), and does not send one again whose
// transaction failed when the same process handles its event again, in
// halves at once or after a retry delay, so only a redelivery to another
// instance, or after a restart, or once the email is forgotten, repeats
// it; and a repeated email carries the same Message-ID as the first (see
// MessageID), so mail systems can recognize the duplicate.
//
// This is why Handle writes NotificationSent to the outbox itself, with
// the claims, and returns no events, instead of returning them for the
// runner to write after the sends, or writing the rows of the emails that
// went out after the sends: either would put a statement after the sends
// of every batch. The price is an outbox row written and dropped for a
// notice whose email was sent before, which is rare.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
	"google.golang.org/protobuf/proto"

	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

// Source is the app_id of every event the notification service publishes.
const Source = "notification"

// ErrMaybeSent is wrapped by a Sender's error when the email's data went
// out whole but the server's reply to it did not come (the connection was
// reset, or the reply took longer than the time left): the server has
// most likely taken the email. Handle counts it as sent, with a warning:
// sending it again on each retry could give the customer a copy per
// attempt, and, were the replies to keep going missing, still park the
// event in the dead-letter queue.
var ErrMaybeSent = errors.New("email sent, the server's acceptance unknown")

// ErrRejected is wrapped by a Sender's error when the mail server
// permanently refused the email (an SMTP 5xx reply to a recipient or to the
// message, but 530, authentication required): retrying cannot help.
var ErrRejected = errors.New("email permanently rejected")

// ErrUnreachable is wrapped by a Sender's error when the mail server can
// take no email as things stand: no session could be opened (no
// connection, no greeting, a failed STARTTLS or AUTH), or the server
// refuses the configured sender or wants authentication (530). The email
// was not sent and says nothing
// about it, so the event is retried without counting an attempt
// (eventbus.Unavailable) until the server is back or its configuration
// fixed.
var ErrUnreachable = errors.New("mail server unreachable")

// ErrDeferred is wrapped by a Sender's error when the mail server refused
// the email for now (an SMTP 4xx reply: greylisting, a rate limit, a full
// mailbox), or stopped answering before the message went out. Like ErrUnreachable it says nothing against the email, so the
// event is retried without counting an attempt, as a mail server retries a
// deferred message, for up to MaxDeferrals retries in a row; after that
// its attempts count, and it ends in the dead-letter queue.
var ErrDeferred = errors.New("email deferred by the mail server")

// MaxDeferrals is how many retries in a row an email the mail server keeps
// deferring (ErrDeferred) makes without counting attempts.
const MaxDeferrals = eventbus.OutageRetryLimit

// Email is one email to send.
type Email struct {
	// To is the recipient's address.
	To      string
	Subject string
	// Text and HTML are the same content as plain text and as HTML; the
	// email carries both as alternatives.
	Text string
	HTML string
	// MessageID is the Message-ID header's value without angle brackets.
	MessageID string
}

// Sender hands emails to a mail server.
type Sender interface {
	// Send delivers e to the mail server. It returns nil only once the
	// server accepted the message. An error wrapping ErrRejected means the
	// server permanently refused it, one wrapping ErrUnreachable that no
	// session could be opened or the server refuses the sender; any other
	// error (temporary 4xx reply,
	// timeout, ctx ended) is presumed transient. Send
	// must honour ctx and bound its own duration, and be safe for
	// concurrent use.
	Send(ctx context.Context, e Email) error
}

// App handles order events by emailing the customer. It is safe for
// concurrent use.
type App struct {
	sender   Sender
	renderer *Renderer
	log      *slog.Logger
	sends    int
	// recent is the emails this App sent last, whatever became of their
	// transactions.
	recent *recentSends
}

// recentSendsKept is how many of the emails it sent last an App
// remembers: about 600 KB, seconds of the heaviest load and minutes of a
// light one.
const recentSendsKept = 4096

// recentSends remembers the last emails sent, by order and kind, so that
// a delivery whose transaction did not commit after its email went out
// (see "The at-least-once window") does not send it again when this
// process handles it again: at once in halves, or after a retry delay.
// It is safe for concurrent use.
type recentSends struct {
	mu   sync.Mutex
	set  map[pair]struct{}
	ring []pair // the pairs in set, oldest at next once full
	next int
}

func newRecentSends(n int) *recentSends {
	return &recentSends{set: make(map[pair]struct{}, n), ring: make([]pair, 0, n)}
}

// add remembers p, forgetting the oldest pair when full.
func (r *recentSends) add(p pair) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.set[p]; ok {
		return
	}
	if len(r.ring) < cap(r.ring) {
		r.ring = append(r.ring, p)
	} else {
		delete(r.set, r.ring[r.next])
		r.ring[r.next] = p
		r.next = (r.next + 1) % len(r.ring)
	}
	r.set[p] = struct{}{}
}

// has reports whether p was sent lately.
func (r *recentSends) has(p pair) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.set[p]
	return ok
}

// DefaultSends is how many emails Handle sends at once unless WithSends
// says otherwise.
const DefaultSends = 8

// Option adjusts an App made by New.
type Option func(*App)

// WithSends makes Handle send at most n (at least 1) of a batch's emails
// at once (DefaultSends otherwise). The service passes its batch size, so
// that a batch's emails all go out together, over as many SMTP sessions.
func WithSends(n int) Option {
	return func(a *App) { a.sends = max(n, 1) }
}

// WithMessageIDDomain ends the emails' Message-IDs with @domain, the
// domain of the address they come from (mailer.Mailer.Domain), rather
// than @DefaultMessageIDDomain, which is no domain: some mail filters
// count that against an email.
func WithMessageIDDomain(domain string) Option {
	return func(a *App) {
		if domain != "" {
			a.renderer.domain = domain
		}
	}
}

// New returns an App sending its emails with sender.
func New(sender Sender, log *slog.Logger, opts ...Option) (*App, error) {
	r, err := NewRenderer()
	if err != nil {
		return nil, err
	}
	a := &App{sender: sender, renderer: r, log: log, sends: DefaultSends, recent: newRecentSends(recentSendsKept)}
	for _, opt := range opts {
		opt(a)
	}
	return a, nil
}

// email is a notice of a batch to send: the first delivery of its order
// and kind in the batch.
type email struct {
	// delivery is the index of the delivery in the batch.
	delivery int
	notice   Notice
	email    Email
	// sent is NotificationSent for the notice, as the outbox row to write.
	sent eventbus.Message
	// supersededBy is the kind whose email, once recorded for the order,
	// makes this one moot (store.Notification.SupersededBy), or "".
	supersededBy Kind
}

// pair is what the notifications table keeps one email of: an order and a
// kind.
type pair struct {
	orderID string
	kind    Kind
}

// errUnexpectedEvent marks an event Handle does not handle.
var errUnexpectedEvent = errors.New("not an order event the notification service handles")

// Handle is the notification service's handler of order events, an
// inbox.BatchHandler: register it for order.created, order.confirmed,
// order.rejected and order.cancelled through one inbox.BatchRunner. It
// emails the customer once per order and kind, as the package
// documentation describes, and returns no events: it writes
// NotificationSent to the outbox itself.
//
// A delivery fails alone, and leaves no writes in tx: permanently for an
// event that can never be sent (no recipient, an order id that is not a
// UUID, an event type Handle does not handle) and for an email the server
// refused for good (wrapping ErrRejected), without counting an attempt
// when the mail server could take no email (ErrUnreachable) or deferred
// this one (ErrDeferred, up to MaxDeferrals retries in a row), retryably for
// a send that failed otherwise; a delivery of the same order and kind as
// an earlier delivery of the batch, or a confirmation the batch's
// cancellation replaces, fails as that delivery did. A confirmation
// handled after its order's cancellation was emailed succeeds without an
// email (see supersededBy). Database errors fail the whole batch as they
// are (inbox.BatchHandler says what comes next).
func (a *App) Handle(ctx context.Context, tx pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
	results := make([]inbox.Result, len(batch))
	notices := make([]Notice, len(batch))
	// delivered[p] is the index of the batch's first delivery of order and
	// kind p.
	delivered := make(map[pair]int, len(batch))
	for i, d := range batch {
		notices[i], results[i].Err = noticeOf(d.Event)
		p := pair{notices[i].OrderID, notices[i].Kind}
		if _, ok := delivered[p]; !ok && results[i].Err == nil {
			delivered[p] = i
		}
	}
	// mootBy[i] is the index of the delivery whose email replaces delivery
	// i's (see supersededBy): the order's cancellation in the same batch;
	// or -1.
	mootBy := make([]int, len(batch))
	// copyOf[i] is the index in emails of the email that delivery i
	// repeats, or -1.
	copyOf := make([]int, len(batch))
	emails := make([]email, 0, len(batch))
	first := make(map[pair]int, len(batch))
	for i, d := range batch {
		copyOf[i], mootBy[i] = -1, -1
		if results[i].Err != nil {
			continue
		}
		n := notices[i]
		// What this process sent lately is sent, whatever came after it
		// (see recentSends): its claim is committed as any other.
		by := supersededBy(n.Kind)
		if by != "" && a.recent.has(pair{n.OrderID, n.Kind}) {
			by = ""
		}
		if j, ok := delivered[pair{n.OrderID, by}]; by != "" && ok {
			mootBy[i] = j
			continue
		}
		if by != "" && a.recent.has(pair{n.OrderID, by}) {
			// Sent by this process, its transaction may not have
			// committed yet.
			a.logNotice(ctx, slog.LevelInfo, "order's "+string(by)+" email sent; this one is not", n, d.Meta)
			continue
		}
		if k, ok := first[pair{n.OrderID, n.Kind}]; ok {
			copyOf[i] = k
			continue
		}
		e, err := a.prepare(n, d.Meta)
		if err != nil {
			results[i].Err = err
			continue
		}
		e.delivery, e.supersededBy = i, by
		first[pair{n.OrderID, n.Kind}] = len(emails)
		emails = append(emails, e)
	}
	// A delivery whose email another of the batch replaces succeeds as
	// that one does, once it has.
	settleMoot := func() {
		for i, j := range mootBy {
			if j < 0 {
				continue
			}
			if err := results[j].Err; err != nil {
				format := "%s email for order %s: replaced by the %s email of event %s of the same batch, whose delivery failed: %w"
				if eventbus.IsPermanent(err) {
					// The replacing email will never go out; this one,
					// never tried, may: it is retried, not dead-lettered.
					format = "%s email for order %s: replaced by the %s email of event %s of the same batch, which failed for good: %v"
				}
				results[i].Err = fmt.Errorf(format, notices[i].Kind, notices[i].OrderID, notices[j].Kind, batch[j].Meta.ID, err)
				continue
			}
			a.logNotice(ctx, slog.LevelInfo, "order's "+string(notices[j].Kind)+" email sent; this one is not", notices[i], batch[i].Meta)
		}
	}
	if len(emails) == 0 {
		settleMoot()
		return results, nil
	}

	ns := make([]store.Notification, len(emails))
	sent := make([]eventbus.Message, len(emails))
	for k, e := range emails {
		ns[k] = store.Notification{
			OrderID: e.notice.OrderID, Kind: string(e.notice.Kind), Recipient: e.notice.Recipient,
			MessageID: e.email.MessageID, EventID: batch[e.delivery].Meta.ID,
			SupersededBy: string(e.supersededBy),
		}
		sent[k] = e.sent
	}
	// The outbox rows go with the claims, in their round trip; those of
	// claims held already are dropped below.
	claimed, err := store.Claim(ctx, tx, ns, func(b *pgx.Batch) error { return outbox.Queue(b, sent...) })
	if err != nil {
		return nil, err
	}
	sendErrs, resent := a.sendAll(ctx, emails, claimed)

	var release []store.Notification
	var drop []string
	for k, e := range emails {
		meta := batch[e.delivery].Meta
		switch err := sendErrs[k]; {
		case errors.Is(err, ErrMaybeSent):
			a.logNotice(ctx, slog.LevelWarn, "email sent but the server's reply to it was lost; counted as sent", e.notice, meta,
				slog.String("message_id", e.email.MessageID), slog.Any("error", err))
		case !claimed[k]:
			drop = append(drop, e.sent.ID)
			msg := "email already sent; skipping"
			if e.supersededBy != "" {
				msg = "email already sent, or the order's " + string(e.supersededBy) + " email; skipping"
			}
			a.logNotice(ctx, slog.LevelInfo, msg, e.notice, meta)
		case err != nil:
			release = append(release, ns[k])
			drop = append(drop, e.sent.ID)
			err = fmt.Errorf("send %s email for order %s: %w", e.notice.Kind, e.notice.OrderID, err)
			switch {
			case errors.Is(err, ErrRejected):
				a.logNotice(ctx, slog.LevelWarn, "email rejected by the mail server", e.notice, meta, slog.Any("error", err))
				err = eventbus.Permanent(err)
			case errors.Is(err, ErrUnreachable), errors.Is(err, errNotStarted):
				err = eventbus.Unavailable(err)
			case errors.Is(err, ErrDeferred) && meta.OutageRetries < MaxDeferrals:
				a.logNotice(ctx, slog.LevelWarn, "email deferred by the mail server; retried", e.notice, meta, slog.Any("error", err))
				err = eventbus.Unavailable(err)
			}
			results[e.delivery].Err = err
		case resent[k]:
			a.logNotice(ctx, slog.LevelInfo, "email sent by this process before its transaction failed; not sent again", e.notice, meta,
				slog.String("message_id", e.email.MessageID))
		default:
			a.logNotice(ctx, slog.LevelInfo, "email sent", e.notice, meta,
				slog.String("recipient", e.notice.Recipient), slog.String("message_id", e.email.MessageID))
		}
	}
	if err := store.Release(ctx, tx, release, drop); err != nil {
		return nil, err
	}

	for i, k := range copyOf {
		if k < 0 {
			continue
		}
		e := emails[k]
		if results[e.delivery].Err != nil {
			// Its email is not sent yet: retried, this delivery claims and
			// sends it unless the first one's retry did. It fails as the
			// first did (an outage, a rejection: the same email).
			results[i].Err = fmt.Errorf("%s email for order %s: not sent by event %s of the same batch: %w",
				e.notice.Kind, e.notice.OrderID, batch[e.delivery].Meta.ID, results[e.delivery].Err)
			continue
		}
		a.logNotice(ctx, slog.LevelInfo, "email already sent; skipping", e.notice, batch[i].Meta)
	}
	settleMoot()
	return results, nil
}

// supersededBy returns the kind of email that, once sent for an order,
// makes an email of kind k moot, or "". An order may be cancelled once
// confirmed, never confirmed once cancelled: when the confirmation comes
// late (retried, or redelivered), the customer who was told of the
// cancellation is not told the order is confirmed.
func supersededBy(k Kind) Kind {
	if k == KindConfirmed {
		return KindCancelled
	}
	return ""
}

// oneLine returns reason with every run of white space, line breaks
// included, made one space. A cancellation's reason is whoever cancelled
// the order's free text, shown in an email that comes from the shop: on
// one line it cannot pass for a signature and a new paragraph of the
// shop's own.
func oneLine(reason string) string {
	return strings.Join(strings.Fields(reason), " ")
}

// noticeOf converts an order event to the notice it asks for, or returns
// a permanent error: an event Handle does not handle, or one lacking what
// an email needs, can never be sent.
func noticeOf(ev proto.Message) (Notice, error) {
	var n Notice
	switch ev := ev.(type) {
	case *orderv1.OrderCreated:
		// The "order received" email, with the order's lines and total.
		n = Notice{
			Kind: KindReceived, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
			Items: itemsFromProto(ev.GetItems()), Total: formatMoney(ev.GetTotal()),
		}
	case *orderv1.OrderConfirmed:
		// The "order confirmed" email, with the amount charged.
		n = Notice{
			Kind: KindConfirmed, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
			Total: formatMoney(ev.GetTotal()),
		}
	case *orderv1.OrderRejected:
		// The "order rejected" email, with the reason.
		n = Notice{Kind: KindRejected, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(), Reason: oneLine(ev.GetReason())}
	case *orderv1.OrderCancelled:
		// The "order cancelled" email, with the reason when there is one.
		n = Notice{Kind: KindCancelled, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(), Reason: oneLine(ev.GetReason())}
	default:
		return Notice{}, eventbus.Permanent(fmt.Errorf("handle %T: %w", ev, errUnexpectedEvent))
	}
	if n.Recipient == "" {
		return Notice{}, eventbus.Permanent(fmt.Errorf("notify %s of order %s: event has no customer email", n.Kind, n.OrderID))
	}
	// The order id goes into headers (Subject, Message-ID): anything but a
	// UUID, as the event's schema demands, is refused rather than sent. It
	// is kept in its canonical form, so that one order's notice is claimed
	// once whichever way an event spelled its id (upper case, say).
	id, err := eventbus.ParseOrderID(n.OrderID)
	if err != nil {
		return Notice{}, fmt.Errorf("notify %s: %w", n.Kind, err)
	}
	n.OrderID = id
	return n, nil
}

// prepare renders n's email and its NotificationSent, for the delivery
// meta.
func (a *App) prepare(n Notice, meta eventbus.Meta) (email, error) {
	e, err := a.renderer.Render(n)
	if err != nil {
		// The emails are fixed at build time: another attempt renders the
		// same way.
		return email{}, eventbus.Permanent(err)
	}
	sent, err := sentMessage(meta, n)
	if err != nil {
		return email{}, err
	}
	return email{notice: n, email: e, sent: sent}, nil
}

// errNotStarted marks the error of an email whose send never started:
// the batch's time for sending had run out waiting for a free send slot.
// It is no attempt of the delivery's own, which is retried without
// counting one.
var errNotStarted = errors.New("no time left in the batch to send the email")

// commitReserve is how long before the deadline of Handle's context (the
// batch's transaction) its sends end, at most: a quarter of the time left
// when they start, up to this. What follows them (one or two statements
// and COMMIT) then still fits, so an email that hangs fails alone, instead
// of failing its whole batch after the server took the others.
const commitReserve = 2 * time.Second

// sendAll sends the emails that were claimed, at most a.sends at once, and
// returns each one's error (nil for one not claimed) and which it did not
// send again because this App sent them lately (see recentSends).
func (a *App) sendAll(ctx context.Context, emails []email, claimed []bool) (errs []error, resent []bool) {
	if deadline, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithDeadline(ctx, deadline.Add(-min(time.Until(deadline)/4, commitReserve)))
		defer cancel()
	}
	errs, resent = make([]error, len(emails)), make([]bool, len(emails))
	var g errgroup.Group
	g.SetLimit(a.sends)
	for k := range emails {
		if !claimed[k] {
			continue
		}
		p := pair{emails[k].notice.OrderID, emails[k].notice.Kind}
		if a.recent.has(p) {
			// Sent, and its claim rolled back with its transaction.
			resent[k] = true
			continue
		}
		g.Go(func() error {
			if err := ctx.Err(); err != nil {
				// The sends before it, hanging, took the batch's time.
				errs[k] = fmt.Errorf("%w: %w", errNotStarted, err)
				return nil
			}
			if errs[k] = a.sender.Send(ctx, emails[k].email); errs[k] == nil || errors.Is(errs[k], ErrMaybeSent) {
				a.recent.add(p)
			}
			return nil
		})
	}
	_ = g.Wait() // Each email's error is in errs.
	return errs, resent
}

// logNotice logs msg about n's email and the delivery meta, with attrs.
// It passes every attribute with the record rather than deriving a logger
// with the notice's attributes (Logger.With) for each email, which costs
// more than the record itself, even when nothing is logged.
func (a *App) logNotice(ctx context.Context, level slog.Level, msg string, n Notice, meta eventbus.Meta, attrs ...slog.Attr) {
	if !a.log.Enabled(ctx, level) {
		return
	}
	all := make([]slog.Attr, 0, 5) // On the stack: no call passes more than 2 attrs.
	all = append(all, slog.String("order_id", n.OrderID), slog.String("kind", string(n.Kind)), slog.String("event_id", meta.ID))
	a.log.LogAttrs(ctx, level, msg, append(all, attrs...)...)
}

// sentMessage returns NotificationSent for n as the outbox message to
// write, continuing the trace of the event that caused it, as the inbox
// runner does for the events handlers return.
func sentMessage(meta eventbus.Meta, n Notice) (eventbus.Message, error) {
	msgs, err := outbox.Messages(Source, n.OrderID, &notificationv1.NotificationSent{
		OrderId: n.OrderID, Kind: kindToProto(n.Kind), Recipient: n.Recipient,
	})
	if err != nil {
		return eventbus.Message{}, fmt.Errorf("publish %s notification of order %s: %w", n.Kind, n.OrderID, err)
	}
	m := msgs[0]
	m.TraceParent, m.TraceState = meta.TraceParent, meta.TraceState
	return m, nil
}
