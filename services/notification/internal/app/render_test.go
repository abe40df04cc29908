package app

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

func TestFormatMoney(t *testing.T) {
	tests := []struct {
		name string
		in   *moneyv1.Money
		want string
	}{
		{"nil", nil, ""},
		{"whole", &moneyv1.Money{CurrencyCode: "EUR", Units: 20}, "EUR 20.00"},
		{"cents", &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500_000_000}, "EUR 9.50"},
		{"sub-cent precision kept", &moneyv1.Money{CurrencyCode: "USD", Units: 0, Nanos: 1}, "USD 0.000000001"},
		{"negative", &moneyv1.Money{CurrencyCode: "USD", Units: -1, Nanos: -250_000_000}, "USD -1.25"},
		{"negative below one", &moneyv1.Money{CurrencyCode: "USD", Nanos: -10_000_000}, "USD -0.01"},
		{"smallest int64", &moneyv1.Money{CurrencyCode: "JPY", Units: -9223372036854775808}, "JPY -9223372036854775808.00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatMoney(tt.in); got != tt.want {
				t.Errorf("formatMoney = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRenderEveryKind(t *testing.T) {
	r, err := NewRenderer()
	if err != nil {
		t.Fatalf("new renderer: %v", err)
	}
	for _, k := range Kinds {
		t.Run(string(k), func(t *testing.T) {
			if kindToProto(k) == notificationv1.NotificationKind_NOTIFICATION_KIND_UNSPECIFIED {
				t.Errorf("kind %s has no NotificationKind", k)
			}
			e, err := r.Render(Notice{Kind: k, OrderID: "0192-id", Recipient: "ada@example.com", Reason: "why"})
			if err != nil {
				t.Fatalf("render: %v", err)
			}
			want := Email{To: "ada@example.com", Subject: "Order 0192-id " + string(k), MessageID: "0192-id." + string(k) + "@ordermesh"}
			got := Email{To: e.To, Subject: e.Subject, MessageID: e.MessageID}
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("email (-want +got):\n%s", diff)
			}
			for _, body := range []string{e.Text, e.HTML} {
				if !strings.Contains(body, "0192-id") {
					t.Errorf("body lacks the order id:\n%s", body)
				}
			}
			if !strings.Contains(e.HTML, "<title>Order 0192-id "+string(k)+"</title>") {
				t.Errorf("html lacks the subject as title:\n%s", e.HTML)
			}
		})
	}
}

func TestRenderEscapesHTMLButNotText(t *testing.T) {
	r, err := NewRenderer()
	if err != nil {
		t.Fatalf("new renderer: %v", err)
	}
	e, err := r.Render(Notice{Kind: KindRejected, OrderID: "o-1", Recipient: "a@example.com", Reason: `<script>alert("x")</script> & more`})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	if strings.Contains(e.HTML, "<script>") || !strings.Contains(e.HTML, "&lt;script&gt;") {
		t.Errorf("html does not escape the reason:\n%s", e.HTML)
	}
	if !strings.Contains(e.Text, `<script>alert("x")</script> & more`) {
		t.Errorf("text altered the reason:\n%s", e.Text)
	}
}

// TestReasonIsShownOnOneLine: a reason's line breaks do not reach the
// email, where they could end the shop's text and start text of their own.
func TestReasonIsShownOnOneLine(t *testing.T) {
	reason := "changed my mind\r\n\r\n-- \nordermesh\n\n\tPlease re-enter your card at http://example.com"
	for _, ev := range []proto.Message{
		&orderv1.OrderCancelled{OrderId: "0192f0e8-0000-7000-8000-000000000000", CustomerEmail: "a@example.com", Reason: reason},
		&orderv1.OrderRejected{OrderId: "0192f0e8-0000-7000-8000-000000000000", CustomerEmail: "a@example.com", Reason: reason},
	} {
		n, err := noticeOf(ev)
		if err != nil {
			t.Fatal(err)
		}
		if want := "changed my mind -- ordermesh Please re-enter your card at http://example.com"; n.Reason != want {
			t.Errorf("%T: reason %q, want %q", ev, n.Reason, want)
		}
	}
}

func TestRenderKeepsSubjectOnOneLine(t *testing.T) {
	r, err := NewRenderer()
	if err != nil {
		t.Fatalf("new renderer: %v", err)
	}
	e, err := r.Render(Notice{Kind: KindConfirmed, OrderID: "o-1\r\nBcc: victim@example.com", Recipient: "a@example.com"})
	if err != nil {
		t.Fatalf("render: %v", err)
	}
	if strings.ContainsAny(e.Subject, "\r\n") {
		t.Errorf("subject spans lines: %q", e.Subject)
	}
}

func TestRenderUnknownKind(t *testing.T) {
	r, err := NewRenderer()
	if err != nil {
		t.Fatalf("new renderer: %v", err)
	}
	if _, err := r.Render(Notice{Kind: "shipped", OrderID: "o-1", Recipient: "a@example.com"}); err == nil {
		t.Error("rendering an unknown kind succeeded")
	}
}
