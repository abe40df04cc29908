package order

import (
	"errors"
	"math"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func validRequest() Request {
	return Request{
		RequestID:     "0190f3c8-0000-7000-8000-000000000001",
		CustomerEmail: "ada@example.com",
		Items: []LineItem{
			{ProductID: "SKU-1", Quantity: 2, UnitPrice: eur(9, 990_000_000)},
			{ProductID: "SKU-2", Quantity: 3, UnitPrice: eur(0, 350_000_000)},
		},
		PaymentToken: "tok_visa",
	}
}

func TestNew(t *testing.T) {
	req := validRequest()
	got, err := New("order-1", req, t0)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	want := Order{
		ID:            "order-1",
		RequestID:     req.RequestID,
		CustomerEmail: req.CustomerEmail,
		Items:         req.Items,
		Total:         eur(21, 30_000_000),
		Status:        StatusPending,
		PaymentToken:  req.PaymentToken,
		CreateTime:    t0,
		UpdateTime:    t0,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("New mismatch (-want +got):\n%s", diff)
	}
	req.Items[0].Quantity = 99
	if got.Items[0].Quantity != 2 {
		t.Error("New shares its Items with the request; want a copy")
	}
}

func TestNewRejects(t *testing.T) {
	tests := []struct {
		name     string
		emptyID  bool
		mutate   func(*Request)
		wantErrs []error
		// wantField is the path of the FieldError the error wraps, or
		// empty for none.
		wantField string
	}{
		{name: "empty id", emptyID: true, mutate: func(*Request) {}, wantErrs: []error{ErrInvalid}},
		{name: "empty request id", mutate: func(r *Request) { r.RequestID = "" }, wantErrs: []error{ErrInvalid}, wantField: "request_id"},
		{name: "empty email", mutate: func(r *Request) { r.CustomerEmail = "" }, wantErrs: []error{ErrInvalid}, wantField: "customer_email"},
		{name: "empty token", mutate: func(r *Request) { r.PaymentToken = "" }, wantErrs: []error{ErrInvalid}, wantField: "payment_token"},
		{name: "no items", mutate: func(r *Request) { r.Items = nil }, wantErrs: []error{ErrInvalid}, wantField: "items"},
		{name: "empty product id", mutate: func(r *Request) { r.Items[1].ProductID = "" }, wantErrs: []error{ErrInvalid}, wantField: "items[1].product_id"},
		{name: "product id .", mutate: func(r *Request) { r.Items[1].ProductID = "." }, wantErrs: []error{ErrInvalid}, wantField: "items[1].product_id"},
		{name: "product id ..", mutate: func(r *Request) { r.Items[0].ProductID = ".." }, wantErrs: []error{ErrInvalid}, wantField: "items[0].product_id"},
		{name: "zero quantity", mutate: func(r *Request) { r.Items[0].Quantity = 0 }, wantErrs: []error{ErrInvalid}, wantField: "items[0].quantity"},
		{name: "negative quantity", mutate: func(r *Request) { r.Items[0].Quantity = -1 }, wantErrs: []error{ErrInvalid}, wantField: "items[0].quantity"},
		{
			name:      "mixed currency",
			mutate:    func(r *Request) { r.Items[1].UnitPrice.CurrencyCode = "USD" },
			wantErrs:  []error{ErrInvalid, ErrMixedCurrency},
			wantField: "items[1].unit_price.currency_code",
		},
		{
			name:      "invalid price",
			mutate:    func(r *Request) { r.Items[0].UnitPrice = eur(1, -1) },
			wantErrs:  []error{ErrInvalid, ErrInvalidMoney},
			wantField: "items[0].unit_price",
		},
		{
			name:      "negative price",
			mutate:    func(r *Request) { r.Items[0].UnitPrice = eur(-1, 0) },
			wantErrs:  []error{ErrInvalid},
			wantField: "items[0].unit_price",
		},
		{
			name: "line overflow",
			mutate: func(r *Request) {
				r.Items[0].UnitPrice = eur(math.MaxInt64/2, 0)
				r.Items[0].Quantity = 3
			},
			wantErrs:  []error{ErrInvalid, ErrMoneyOverflow},
			wantField: "items[0]",
		},
		{
			name: "total overflow",
			mutate: func(r *Request) {
				r.Items[0].UnitPrice = eur(math.MaxInt64, 0)
				r.Items[0].Quantity = 1
			},
			wantErrs:  []error{ErrInvalid, ErrMoneyOverflow},
			wantField: "items",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := validRequest()
			tt.mutate(&req)
			id := "order-1"
			if tt.emptyID {
				id = ""
			}
			_, err := New(id, req, t0)
			if err == nil {
				t.Fatal("New succeeded, want an error")
			}
			for _, want := range tt.wantErrs {
				if !errors.Is(err, want) {
					t.Errorf("New error = %v, want it to wrap %v", err, want)
				}
			}
			fe, ok := errors.AsType[*FieldError](err)
			switch {
			case tt.wantField == "" && ok:
				t.Errorf("New error = %v names field %s, want none", err, fe.Path)
			case tt.wantField != "" && (!ok || fe.Path != tt.wantField):
				t.Errorf("New error = %v, want a FieldError of %s", err, tt.wantField)
			case ok && !errors.Is(fe, ErrInvalid):
				t.Errorf("FieldError %v does not wrap ErrInvalid", fe)
			}
			if tt.name != "mixed currency" && errors.Is(err, ErrMixedCurrency) {
				t.Errorf("New error = %v wraps ErrMixedCurrency", err)
			}
		})
	}
}

func TestTotalMixedCurrencyAmongMany(t *testing.T) {
	items := []LineItem{
		{ProductID: "A", Quantity: 1, UnitPrice: eur(1, 0)},
		{ProductID: "B", Quantity: 1, UnitPrice: eur(1, 0)},
		{ProductID: "C", Quantity: 1, UnitPrice: Money{CurrencyCode: "GBP", Units: 1}},
	}
	if _, err := Total(items); !errors.Is(err, ErrMixedCurrency) {
		t.Errorf("Total error = %v, want ErrMixedCurrency", err)
	}
}

func TestCheckRepeat(t *testing.T) {
	o, err := New("order-1", validRequest(), t0)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	tests := []struct {
		name     string
		mutate   func(*Request)
		conflict bool
	}{
		{name: "same payload", mutate: func(*Request) {}},
		{name: "other request id", mutate: func(r *Request) { r.RequestID = "other" }, conflict: true},
		{name: "other email", mutate: func(r *Request) { r.CustomerEmail = "grace@example.com" }, conflict: true},
		{name: "email case differs", mutate: func(r *Request) { r.CustomerEmail = "Ada@example.com" }, conflict: true},
		{name: "other token", mutate: func(r *Request) { r.PaymentToken = "tok_decline" }, conflict: true},
		{name: "other quantity", mutate: func(r *Request) { r.Items[1].Quantity++ }, conflict: true},
		{name: "other product", mutate: func(r *Request) { r.Items[0].ProductID = "SKU-9" }, conflict: true},
		{name: "other price nanos", mutate: func(r *Request) { r.Items[0].UnitPrice.Nanos++ }, conflict: true},
		{name: "other currency", mutate: func(r *Request) { r.Items[0].UnitPrice.CurrencyCode = "USD" }, conflict: true},
		{name: "extra item", mutate: func(r *Request) { r.Items = append(r.Items, r.Items[0]) }, conflict: true},
		{name: "fewer items", mutate: func(r *Request) { r.Items = r.Items[:1] }, conflict: true},
		{name: "items reordered", mutate: func(r *Request) { r.Items[0], r.Items[1] = r.Items[1], r.Items[0] }, conflict: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := validRequest()
			tt.mutate(&req)
			err := o.CheckRepeat(req)
			if tt.conflict != errors.Is(err, ErrRequestConflict) || (!tt.conflict && err != nil) {
				t.Fatalf("CheckRepeat = %v, want conflict %v", err, tt.conflict)
			}
			// The fingerprint ignores the request id and must agree with
			// CheckRepeat on everything else.
			samePrint := req.Fingerprint() == validRequest().Fingerprint()
			wantSame := !tt.conflict || tt.name == "other request id"
			if samePrint != wantSame {
				t.Errorf("fingerprints equal = %v, want %v", samePrint, wantSame)
			}
		})
	}
}

func TestFingerprintIsUnambiguous(t *testing.T) {
	a := Request{CustomerEmail: "ab", PaymentToken: "c", Items: []LineItem{{ProductID: "x", Quantity: 1, UnitPrice: eur(1, 0)}}}
	b := Request{CustomerEmail: "a", PaymentToken: "bc", Items: []LineItem{{ProductID: "x", Quantity: 1, UnitPrice: eur(1, 0)}}}
	if a.Fingerprint() == b.Fingerprint() {
		t.Error("fingerprints of different field splits collide")
	}
	if got := len(a.Fingerprint()); got != 64 {
		t.Errorf("fingerprint has %d hex digits, want 64", got)
	}
	if a.Fingerprint() != a.Fingerprint() {
		t.Error("fingerprint is not deterministic")
	}
}

func TestStatus(t *testing.T) {
	tests := []struct {
		s           Status
		name        string
		terminal    bool
		cancellable bool
	}{
		{s: StatusPending, name: "PENDING", cancellable: true},
		{s: StatusConfirmed, name: "CONFIRMED", terminal: true, cancellable: true},
		{s: StatusRejected, name: "REJECTED", terminal: true},
		{s: StatusCancelled, name: "CANCELLED", terminal: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.s.String(); got != tt.name {
				t.Errorf("String() = %q, want %q", got, tt.name)
			}
			parsed, err := ParseStatus(tt.name)
			if err != nil || parsed != tt.s {
				t.Errorf("ParseStatus(%q) = %v, %v; want %v", tt.name, parsed, err, tt.s)
			}
			if !tt.s.Valid() {
				t.Error("Valid() = false")
			}
			if got := tt.s.Terminal(); got != tt.terminal {
				t.Errorf("Terminal() = %v, want %v", got, tt.terminal)
			}
			if got := tt.s.Cancellable(); got != tt.cancellable {
				t.Errorf("Cancellable() = %v, want %v", got, tt.cancellable)
			}
		})
	}
	for _, bad := range []string{"", "UNSPECIFIED", "pending", "SHIPPED"} {
		if _, err := ParseStatus(bad); !errors.Is(err, ErrInvalidStatus) {
			t.Errorf("ParseStatus(%q) error = %v, want ErrInvalidStatus", bad, err)
		}
	}
	if StatusUnspecified.Valid() || Status(9).Valid() {
		t.Error("Valid() = true for a status that is not one")
	}
	if got := Status(9).String(); got != "Status(9)" {
		t.Errorf("String() = %q", got)
	}
}
