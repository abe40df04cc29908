package app

import (
	"fmt"
	"math/big"
	"strconv"
	"strings"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// Kind is what an email tells the customer. Its value names it in the
// notifications table and in Message-IDs.
type Kind string

// The kinds of email, one per order event the service handles.
const (
	KindReceived  Kind = "received"
	KindConfirmed Kind = "confirmed"
	KindRejected  Kind = "rejected"
	KindCancelled Kind = "cancelled"
)

// Kinds lists every kind.
var Kinds = []Kind{KindReceived, KindConfirmed, KindRejected, KindCancelled}

// kindToProto converts a kind to the NotificationSent enum.
func kindToProto(k Kind) notificationv1.NotificationKind {
	switch k {
	case KindReceived:
		return notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_RECEIVED
	case KindConfirmed:
		return notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CONFIRMED
	case KindRejected:
		return notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_REJECTED
	case KindCancelled:
		return notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CANCELLED
	default:
		return notificationv1.NotificationKind_NOTIFICATION_KIND_UNSPECIFIED
	}
}

// Notice is what an email is about: the data its text renders.
// Fields an event does not carry stay empty and are left out of the email.
type Notice struct {
	Kind      Kind
	OrderID   string
	Recipient string
	// Items are the order's lines (order.created only).
	Items []Item
	// Total is the formatted order total, e.g. "EUR 19.00".
	Total string
	// Reason is why the order was rejected or cancelled.
	Reason string
}

// Item is one order line as an email shows it.
type Item struct {
	ProductID string
	Quantity  int32
	// UnitPrice is the formatted price of one unit.
	UnitPrice string
}

// Renderer turns notices into emails. It is safe for concurrent use.
//
// The emails are written in code rather than with text/template and
// html/template: those look a field or method up by name at run time, so
// the linker must keep every exported method of every type in the binary
// (10,000 functions, 5 MB of the service's code, most of it resident),
// and a worker's memory is budgeted. The templates the service used
// before (testdata/templates) still say what the emails look like, and
// TestRenderMatchesTemplates holds Render to them: a change of wording is
// made in both.
type Renderer struct {
	// domain ends the Message-IDs.
	domain string
}

// NewRenderer returns a Renderer.
func NewRenderer() (*Renderer, error) { return &Renderer{domain: DefaultMessageIDDomain}, nil }

// Render returns the email for n: its subject, text and HTML bodies, and a
// Message-ID derived from the order and kind, so that an email sent again
// (see App) carries the same Message-ID as the first. The HTML body
// escapes every value as html/template does in element content.
func (r *Renderer) Render(n Notice) (Email, error) {
	var subject, text, html strings.Builder
	// Room for the usual email from the start, rather than the builders'
	// growing through every size up to it.
	text.Grow(512)
	html.Grow(1024)
	switch n.Kind {
	case KindReceived:
		subject.WriteString("Order " + n.OrderID + " received")
		text.WriteString("Hello,\n\nwe have received your order " + n.OrderID + ".\n")
		writeTextItems(&text, n)
		text.WriteString("\nWe will write again as soon as your order is confirmed.\n")
	case KindConfirmed:
		subject.WriteString("Order " + n.OrderID + " confirmed")
		text.WriteString("Hello,\n\nyour order " + n.OrderID + " is confirmed: the items are reserved for you and")
		if n.Total != "" {
			text.WriteString(" " + n.Total + " has been charged.\n")
		} else {
			text.WriteString(" the payment has been taken.\n")
		}
	case KindRejected:
		subject.WriteString("Order " + n.OrderID + " rejected")
		text.WriteString("Hello,\n\nwe are sorry: we could not accept your order " + n.OrderID + ".\n\nReason: " + n.Reason +
			"\n\nNothing has been charged, or any charge is refunded.\n")
	case KindCancelled:
		subject.WriteString("Order " + n.OrderID + " cancelled")
		text.WriteString("Hello,\n\nyour order " + n.OrderID + " has been cancelled.")
		if n.Reason != "" {
			text.WriteString("\n\nReason: " + n.Reason)
		}
		text.WriteString("\n\nAny charge for it is refunded.\n")
	default:
		return Email{}, fmt.Errorf("render email: unknown kind %q", n.Kind)
	}
	text.WriteString("\n-- \nordermesh\n")
	// A header is one line: nothing in the data may break it.
	subj := strings.Join(strings.Fields(subject.String()), " ")

	writeBetween(&html, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>",
		subj, "</title>\n</head>\n<body>\n<p>Hello,</p>\n")
	switch n.Kind {
	case KindReceived:
		writeBetween(&html, "<p>We have received your order <strong>", n.OrderID, "</strong>.</p>\n")
		writeHTMLItems(&html, n)
		html.WriteString("\n<p>We will write again as soon as your order is confirmed.</p>\n")
	case KindConfirmed:
		writeBetween(&html, "<p>Your order <strong>", n.OrderID, "</strong> is confirmed: the items are reserved for you and\n")
		if n.Total != "" {
			writeBetween(&html, "<strong>", n.Total, "</strong> has been charged")
		} else {
			html.WriteString("the payment has been taken")
		}
		html.WriteString(".</p>\n")
	case KindRejected:
		writeBetween(&html, "<p>We are sorry: we could not accept your order <strong>", n.OrderID, "</strong>.</p>\n")
		writeBetween(&html, "<p>Reason: <em>", n.Reason, "</em></p>\n<p>Nothing has been charged, or any charge is refunded.</p>\n")
	case KindCancelled:
		writeBetween(&html, "<p>Your order <strong>", n.OrderID, "</strong> has been cancelled.</p>\n")
		if n.Reason != "" {
			writeBetween(&html, "<p>Reason: <em>", n.Reason, "</em></p>\n")
		}
		html.WriteString("<p>Any charge for it is refunded.</p>\n")
	}
	html.WriteString("<p>&mdash;<br>ordermesh</p>\n</body>\n</html>")
	return Email{
		To:        n.Recipient,
		Subject:   subj,
		Text:      text.String(),
		HTML:      html.String(),
		MessageID: messageIDAt(n.OrderID, n.Kind, r.domain),
	}, nil
}

// writeTextItems writes the order's lines and total, each part only when
// the notice has it.
func writeTextItems(b *strings.Builder, n Notice) {
	if len(n.Items) > 0 {
		b.WriteString("\n")
		for _, it := range n.Items {
			b.WriteString("  " + strconv.Itoa(int(it.Quantity)) + " × " + it.ProductID + " at " + it.UnitPrice + "\n")
		}
	}
	if n.Total != "" {
		b.WriteString("\nTotal: " + n.Total + "\n")
	}
}

// writeHTMLItems writes the order's lines as a table, with the total as
// its footer, or the total alone.
func writeHTMLItems(b *strings.Builder, n Notice) {
	switch {
	case len(n.Items) > 0:
		b.WriteString("<table>\n<thead><tr><th align=\"left\">Product</th><th align=\"right\">Quantity</th>" +
			"<th align=\"right\">Unit price</th></tr></thead>\n<tbody>\n")
		for _, it := range n.Items {
			writeBetween(b, "<tr><td>", it.ProductID, "</td><td align=\"right\">")
			b.WriteString(strconv.Itoa(int(it.Quantity)))
			writeBetween(b, "</td><td align=\"right\">", it.UnitPrice, "</td></tr>\n")
		}
		b.WriteString("</tbody>\n")
		if n.Total != "" {
			writeBetween(b, "<tfoot><tr><th align=\"left\" colspan=\"2\">Total</th><th align=\"right\">", n.Total, "</th></tr></tfoot>\n")
		}
		b.WriteString("</table>\n")
	case n.Total != "":
		writeBetween(b, "<p>Total: <strong>", n.Total, "</strong></p>\n")
	}
}

// htmlReplacements are html/template's replacements in element content:
// NUL becomes U+FFFD, the others character references.
var htmlReplacements = [...]string{
	0:    "\uFFFD",
	'"':  "&#34;",
	'&':  "&amp;",
	'\'': "&#39;",
	'+':  "&#43;",
	'<':  "&lt;",
	'>':  "&gt;",
}

// writeBetween writes before, v escaped for HTML element content, and
// after.
func writeBetween(b *strings.Builder, before, v, after string) {
	b.WriteString(before)
	writeEscaped(b, v)
	b.WriteString(after)
}

// writeEscaped writes s to b escaped for HTML element content, as
// html/template escapes a value there.
func writeEscaped(b *strings.Builder, s string) {
	written := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if int(c) >= len(htmlReplacements) || htmlReplacements[c] == "" {
			continue
		}
		b.WriteString(s[written:i])
		b.WriteString(htmlReplacements[c])
		written = i + 1
	}
	b.WriteString(s[written:])
}

// DefaultMessageIDDomain ends Message-IDs unless WithMessageIDDomain gives
// the domain the emails come from.
const DefaultMessageIDDomain = "ordermesh"

// MessageID returns the Message-ID (without angle brackets) of the email of
// kind k for order orderID, under DefaultMessageIDDomain.
func MessageID(orderID string, k Kind) string {
	return messageIDAt(orderID, k, DefaultMessageIDDomain)
}

func messageIDAt(orderID string, k Kind, domain string) string {
	return fmt.Sprintf("%s.%s@%s", orderID, k, domain)
}

// itemsFromProto converts order lines to what an email shows.
func itemsFromProto(items []*orderv1.LineItem) []Item {
	out := make([]Item, len(items))
	for i, it := range items {
		out[i] = Item{ProductID: it.GetProductId(), Quantity: it.GetQuantity(), UnitPrice: formatMoney(it.GetUnitPrice())}
	}
	return out
}

// formatMoney renders an amount as "EUR 19.00": the currency code, then
// the exact decimal amount with at least two fraction digits. nil is "".
func formatMoney(m *moneyv1.Money) string {
	if m == nil {
		return ""
	}
	units, nanos := m.GetUnits(), m.GetNanos()
	sign := ""
	if units < 0 || nanos < 0 {
		sign = "-"
	}
	if nanos < 0 {
		nanos = -nanos
	}
	// big.Int because the absolute value of the smallest int64 does not fit.
	abs := new(big.Int).Abs(big.NewInt(units))
	frac := strings.TrimRight(fmt.Sprintf("%09d", nanos), "0")
	for len(frac) < 2 {
		frac += "0"
	}
	return fmt.Sprintf("%s %s%s.%s", m.GetCurrencyCode(), sign, abs, frac)
}
