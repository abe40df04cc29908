package app

import (
	"embed"
	"fmt"
	htmltemplate "html/template"
	"math/big"
	"strings"
	texttemplate "text/template"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

//go:embed templates/*.tmpl
var templateFS embed.FS

// Kind is what an email tells the customer. Its value names it in the
// notifications table and in the email templates.
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

// Notice is what an email is about: the data its templates render.
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

// view is what the templates see: the notice's fields and the rendered
// subject. It repeats Notice's fields rather than embedding it: the
// templates look each field up by name, and a promoted field is found
// only by a search through the embedded structs that costs more than
// the rest of the lookup.
type view struct {
	Kind      Kind
	OrderID   string
	Recipient string
	Items     []Item
	Total     string
	Reason    string
	Subject   string
}

// viewOf returns the view of n, without the subject.
func viewOf(n Notice) view {
	return view{Kind: n.Kind, OrderID: n.OrderID, Recipient: n.Recipient, Items: n.Items, Total: n.Total, Reason: n.Reason}
}

// Renderer turns notices into emails with the embedded templates. It is
// safe for concurrent use.
type Renderer struct {
	text *texttemplate.Template
	html *htmltemplate.Template
}

// NewRenderer parses the embedded templates and checks that every kind has
// its subject, text and HTML templates.
func NewRenderer() (*Renderer, error) {
	text, err := texttemplate.New("").Option("missingkey=error").ParseFS(templateFS, "templates/text.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse text templates: %w", err)
	}
	html, err := htmltemplate.New("").Option("missingkey=error").ParseFS(templateFS, "templates/html.tmpl")
	if err != nil {
		return nil, fmt.Errorf("parse html templates: %w", err)
	}
	for _, k := range Kinds {
		for _, name := range []string{string(k) + ".subject", string(k) + ".text"} {
			if text.Lookup(name) == nil {
				return nil, fmt.Errorf("parse text templates: no template %q", name)
			}
		}
		if html.Lookup(string(k)+".html") == nil {
			return nil, fmt.Errorf("parse html templates: no template %q", string(k)+".html")
		}
	}
	return &Renderer{text: text, html: html}, nil
}

// Render returns the email for n: its subject, text and HTML bodies, and a
// Message-ID derived from the order and kind, so that an email sent again
// (see App) carries the same Message-ID as the first.
func (r *Renderer) Render(n Notice) (Email, error) {
	if kindToProto(n.Kind) == notificationv1.NotificationKind_NOTIFICATION_KIND_UNSPECIFIED {
		return Email{}, fmt.Errorf("render email: unknown kind %q", n.Kind)
	}
	v := viewOf(n)
	// Room for the usual email from the start, rather than the builders'
	// growing through every size up to it.
	var subject, text, html strings.Builder
	subject.Grow(64)
	text.Grow(512)
	html.Grow(1024)
	if err := r.text.ExecuteTemplate(&subject, string(n.Kind)+".subject", v); err != nil {
		return Email{}, fmt.Errorf("render %s subject: %w", n.Kind, err)
	}
	// A header is one line: nothing in the data may break it.
	v.Subject = strings.Join(strings.Fields(subject.String()), " ")
	if err := r.text.ExecuteTemplate(&text, string(n.Kind)+".text", v); err != nil {
		return Email{}, fmt.Errorf("render %s text: %w", n.Kind, err)
	}
	if err := r.html.ExecuteTemplate(&html, string(n.Kind)+".html", v); err != nil {
		return Email{}, fmt.Errorf("render %s html: %w", n.Kind, err)
	}
	return Email{
		To:        n.Recipient,
		Subject:   v.Subject,
		Text:      text.String(),
		HTML:      html.String(),
		MessageID: MessageID(n.OrderID, n.Kind),
	}, nil
}

// MessageID returns the Message-ID (without angle brackets) of the email of
// kind k for order orderID.
func MessageID(orderID string, k Kind) string {
	return fmt.Sprintf("%s.%s@ordermesh", orderID, k)
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
