// Package app is the notification service's application layer: it turns
// order events into emails to the customer (order received, confirmed,
// rejected, cancelled), sends each at most once per order and kind through
// a Sender, and publishes NotificationSent for every email sent.
//
// # Delivery
//
// The handlers run inside the inbox runner's transaction (inbox.Process,
// one transaction per delivery). For each event a handler, in this order:
//
//  1. renders the email;
//  2. claims (order id, kind) in the notifications table; if the claim
//     exists, the email was sent already and the handler does nothing. A
//     concurrent delivery holding the claim makes it wait until that
//     delivery's transaction ends;
//  3. writes NotificationSent to the outbox (sent with the claim, in one
//     round trip, and undone if the claim existed);
//  4. hands the email to the SMTP server;
//  5. returns, and the runner commits the inbox row, the claim and the
//     outbox row together.
//
// A failed send rolls everything back: the claim is gone, the bus retries
// the event, and the next attempt sends the email. Nothing is lost while
// the SMTP server is unreachable.
//
// The one gap left is between 4 and 5: an SMTP server cannot take part in
// a PostgreSQL transaction, so if the commit fails after the server
// accepted the email (the database or the process goes away in that
// instant), the event is redelivered and the email is sent again. That is
// the remaining at-least-once window. It is kept as small as it can be:
// every database write happens before the send, so after it only COMMIT
// remains; the mail client counts a message as sent as soon as the server
// accepted its data, even if closing the connection fails afterwards; and
// a repeated email carries the same Message-ID as the first (see
// MessageID), so mail systems can recognize the duplicate.
//
// This is why the handlers write NotificationSent to the outbox themselves
// and return no events, instead of returning them for the runner to write
// after the send.
package app

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

// Source is the app_id of every event the notification service publishes.
const Source = "notification"

// ErrRejected is wrapped by a Sender's error when the mail server
// permanently refused the email (an SMTP 5xx reply to a recipient or to the
// message): retrying cannot help.
var ErrRejected = errors.New("email permanently rejected")

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
	// server permanently refused it; any other error (server unreachable,
	// temporary 4xx reply, timeout, ctx ended) is presumed transient. Send
	// must honour ctx and bound its own duration, and be safe for
	// concurrent use.
	Send(ctx context.Context, e Email) error
}

// App handles order events by emailing the customer.
type App struct {
	sender   Sender
	renderer *Renderer
	log      *slog.Logger
}

// New returns an App sending its emails with sender.
func New(sender Sender, log *slog.Logger) (*App, error) {
	r, err := NewRenderer()
	if err != nil {
		return nil, err
	}
	return &App{sender: sender, renderer: r, log: log}, nil
}

// The handlers below have the inbox.Handler signature: register them with
// eventbus.Handle(sub, inbox.Wrap(runner, app.OrderCreated)) and so on.
// They return no events; see the package documentation for why.

// OrderCreated handles order.created: the "order received" email, with the
// order's lines and total.
func (a *App) OrderCreated(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCreated, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.notify(ctx, tx, meta, Notice{
		Kind: KindReceived, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
		Items: itemsFromProto(ev.GetItems()), Total: formatMoney(ev.GetTotal()),
	})
}

// OrderConfirmed handles order.confirmed: the "order confirmed" email, with
// the amount charged.
func (a *App) OrderConfirmed(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderConfirmed, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.notify(ctx, tx, meta, Notice{
		Kind: KindConfirmed, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
		Total: formatMoney(ev.GetTotal()),
	})
}

// OrderRejected handles order.rejected: the "order rejected" email, with
// the reason.
func (a *App) OrderRejected(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderRejected, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.notify(ctx, tx, meta, Notice{
		Kind: KindRejected, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
		Reason: ev.GetReason(),
	})
}

// OrderCancelled handles order.cancelled: the "order cancelled" email, with
// the reason when there is one.
func (a *App) OrderCancelled(ctx context.Context, tx pgx.Tx, ev *orderv1.OrderCancelled, meta eventbus.Meta) ([]proto.Message, error) {
	return nil, a.notify(ctx, tx, meta, Notice{
		Kind: KindCancelled, OrderID: ev.GetOrderId(), Recipient: ev.GetCustomerEmail(),
		Reason: ev.GetReason(),
	})
}

// notify sends n's email unless it was sent before, in the order the
// package documentation gives.
func (a *App) notify(ctx context.Context, tx pgx.Tx, meta eventbus.Meta, n Notice) error {
	if n.Recipient == "" {
		return eventbus.Permanent(fmt.Errorf("notify %s of order %s: event has no customer email", n.Kind, n.OrderID))
	}
	// The order id goes into headers (Subject, Message-ID): anything but a
	// UUID, as the event's schema demands, is refused rather than sent.
	if _, err := uuid.Parse(n.OrderID); err != nil {
		return eventbus.Permanent(fmt.Errorf("notify %s: order id %q: %w", n.Kind, n.OrderID, err))
	}
	email, err := a.renderer.Render(n)
	if err != nil {
		// The templates are fixed at build time: another attempt renders
		// the same way.
		return eventbus.Permanent(err)
	}
	sent, err := sentMessages(meta, n)
	if err != nil {
		return err
	}
	// The outbox row goes with the claim, in its round trip, and stays
	// only if the claim was won.
	claimed, err := store.Claim(ctx, tx, store.Notification{
		OrderID: n.OrderID, Kind: string(n.Kind), Recipient: n.Recipient,
		MessageID: email.MessageID, EventID: meta.ID,
	}, func(b *pgx.Batch) error { return outbox.Queue(b, sent...) })
	if err != nil {
		return err
	}
	if !claimed {
		a.logNotice(ctx, slog.LevelInfo, "email already sent; skipping", n, meta)
		return nil
	}
	if err := a.sender.Send(ctx, email); err != nil {
		err = fmt.Errorf("send %s email for order %s: %w", n.Kind, n.OrderID, err)
		if errors.Is(err, ErrRejected) {
			a.logNotice(ctx, slog.LevelWarn, "email rejected by the mail server", n, meta, slog.Any("error", err))
			return eventbus.Permanent(err)
		}
		return err
	}
	a.logNotice(ctx, slog.LevelInfo, "email sent", n, meta, slog.String("recipient", n.Recipient), slog.String("message_id", email.MessageID))
	return nil
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

// sentMessages returns NotificationSent for n as the outbox message to
// write, continuing the trace of the event that caused it, as the inbox
// runner does for the events handlers return.
func sentMessages(meta eventbus.Meta, n Notice) ([]eventbus.Message, error) {
	msgs, err := outbox.Messages(Source, n.OrderID, &notificationv1.NotificationSent{
		OrderId: n.OrderID, Kind: kindToProto(n.Kind), Recipient: n.Recipient,
	})
	if err != nil {
		return nil, fmt.Errorf("publish %s notification of order %s: %w", n.Kind, n.OrderID, err)
	}
	for i := range msgs {
		msgs[i].TraceParent, msgs[i].TraceState = meta.TraceParent, meta.TraceState
	}
	return msgs, nil
}
