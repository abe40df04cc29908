// Package order holds the rules of an order: how one is placed (its
// invariants and its total), how a repeated request is recognised, and the
// order saga's state machine that folds stock and payment outcomes and a
// customer's cancel into the order's status and the events to publish.
//
// The package is pure: it imports no gRPC, SQL, AMQP or generated code, does
// no I/O and keeps no state of its own. Adapters convert to and from these
// types at the boundary and map the sentinel errors to API codes.
package order

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"time"
)

var (
	// ErrNotFound is returned (by stores) when no order has the id asked for.
	ErrNotFound = errors.New("order not found")
	// ErrInvalid is returned when an order, a request or a saga input breaks
	// a domain invariant; the wrapping error says which. Errors wrapping
	// ErrMixedCurrency, ErrInvalidMoney and ErrMoneyOverflow returned by New
	// wrap ErrInvalid too.
	ErrInvalid = errors.New("invalid order")
	// ErrMixedCurrency is returned when an order's line items are priced in
	// more than one currency.
	ErrMixedCurrency = errors.New("line items must share one currency")
	// ErrRequestConflict is returned when a request id is reused with a
	// different payload.
	ErrRequestConflict = errors.New("request id already used with a different payload")
	// ErrNotCancellable is returned when a customer cancels an order that is
	// rejected or already cancelled.
	ErrNotCancellable = errors.New("order cannot be cancelled")
)

// FieldError is an ErrInvalid error about one field of the request that
// placed an order, so that the API can name the field to the client.
type FieldError struct {
	// Path is the field's path in the request as the API spells it, e.g.
	// "items[1].unit_price.currency_code".
	Path string
	// Err says what is wrong with it; it wraps ErrInvalid.
	Err error
}

func (e *FieldError) Error() string { return e.Path + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Field is the field's path.
func (e *FieldError) Field() string { return e.Path }

// Description says what is wrong with the field.
func (e *FieldError) Description() string { return e.Err.Error() }

// fieldError returns a FieldError about path whose text is what format
// and args say, wrapping ErrInvalid and any error args wrap with %w.
func fieldError(path, format string, args ...any) error {
	return &FieldError{Path: path, Err: fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)}
}

// LineItem is one product line of an order.
type LineItem struct {
	// ProductID is the product's SKU.
	ProductID string
	// Quantity is the number of units, at least 1.
	Quantity int32
	// UnitPrice is the price of one unit, valid and not negative.
	UnitPrice Money
}

// Request is what a client sends to place an order. RequestID makes
// placing idempotent: the store keeps the order it created for a request
// id, and a repeated request is checked against it with Order.CheckRepeat.
type Request struct {
	RequestID     string
	CustomerEmail string
	Items         []LineItem
	PaymentToken  string
}

// Order is a customer's order and its progress through the order saga.
//
// Order is a value: New and Apply return new values and never modify the
// Items of the order they were given, so a caller may keep the old value.
type Order struct {
	// ID is the order's id, chosen by the service.
	ID string
	// RequestID is the client's id for the request that placed the order.
	RequestID     string
	CustomerEmail string
	Items         []LineItem
	// Total is the sum of Quantity × UnitPrice over Items.
	Total Money
	// Status is where the order stands; StatusReason says why it is
	// rejected or cancelled and is empty otherwise.
	Status       Status
	StatusReason string
	// PaymentToken is what the payment provider charges.
	PaymentToken string
	CreateTime   time.Time
	// UpdateTime is when any field last changed, saga progress included.
	UpdateTime time.Time

	// StockReserved records that inventory reserved the order's stock
	// while the order was pending.
	StockReserved bool
	// PaymentSucceeded records that payment charged the order while it was
	// pending; PaymentID is the provider's id for that charge.
	PaymentSucceeded bool
	PaymentID        string
}

// New places an order: it checks req's invariants, computes the total and
// returns a Pending order with the given id, created and updated at now.
//
// Errors wrap ErrInvalid: for an empty id, request id, customer email or
// payment token, no items, an item without product id, with the product id
// "." or ".." (no stock can be set for those), or with a quantity below 1,
// a unit price that is invalid (ErrInvalidMoney) or negative,
// items priced in several currencies (ErrMixedCurrency), or a total too
// large for Money (ErrMoneyOverflow). Format rules (UUIDs, email syntax,
// lengths) are the API's validation and are not repeated here.
func New(id string, req Request, now time.Time) (Order, error) {
	switch {
	case id == "":
		return Order{}, fmt.Errorf("new order: %w: empty id", ErrInvalid)
	case req.RequestID == "":
		return Order{}, fmt.Errorf("new order: %w", fieldError("request_id", "empty"))
	case req.CustomerEmail == "":
		return Order{}, fmt.Errorf("new order: %w", fieldError("customer_email", "empty"))
	case req.PaymentToken == "":
		return Order{}, fmt.Errorf("new order: %w", fieldError("payment_token", "empty"))
	}
	total, err := Total(req.Items)
	if err != nil {
		return Order{}, fmt.Errorf("new order: %w", err)
	}
	return Order{
		ID:            id,
		RequestID:     req.RequestID,
		CustomerEmail: req.CustomerEmail,
		Items:         append([]LineItem(nil), req.Items...),
		Total:         total,
		Status:        StatusPending,
		PaymentToken:  req.PaymentToken,
		CreateTime:    now,
		UpdateTime:    now,
	}, nil
}

// Total checks items and returns the sum of Quantity × UnitPrice over them,
// with the errors New documents for items (all wrapping ErrInvalid).
func Total(items []LineItem) (Money, error) {
	if len(items) == 0 {
		return Money{}, fmt.Errorf("total items: %w", fieldError("items", "no items"))
	}
	var total Money
	for i, it := range items {
		item := fmt.Sprintf("items[%d]", i)
		if it.ProductID == "" {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".product_id", "empty"))
		}
		if it.ProductID == "." || it.ProductID == ".." {
			// SetStock refuses them (a URL path cannot carry them to it):
			// the order could only be rejected.
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".product_id", "%q: no stock can be set for it", it.ProductID))
		}
		if it.Quantity < 1 {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".quantity", "%d is below 1", it.Quantity))
		}
		if err := it.UnitPrice.Validate(); err != nil {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".unit_price", "%w", err))
		}
		if it.UnitPrice.IsNegative() {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".unit_price", "negative"))
		}
		if i == 0 {
			total = Money{CurrencyCode: it.UnitPrice.CurrencyCode}
		} else if it.UnitPrice.CurrencyCode != total.CurrencyCode {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item+".unit_price.currency_code",
				"%w: %s, where items[0] is in %s", ErrMixedCurrency, it.UnitPrice.CurrencyCode, total.CurrencyCode))
		}
		line, err := it.UnitPrice.Mul(int64(it.Quantity))
		if err != nil {
			return Money{}, fmt.Errorf("total items: %w", fieldError(item, "%w", err))
		}
		if total, err = total.Add(line); err != nil {
			return Money{}, fmt.Errorf("total items: %w", fieldError("items", "%w", err))
		}
	}
	return total, nil
}

// Request returns the request that placed o.
func (o Order) Request() Request {
	return Request{
		RequestID:     o.RequestID,
		CustomerEmail: o.CustomerEmail,
		Items:         append([]LineItem(nil), o.Items...),
		PaymentToken:  o.PaymentToken,
	}
}

// CheckRepeat decides whether req repeats the request that placed o. It
// returns nil when req carries o's request id and the same payload (the
// caller then answers with o and emits nothing), or an error wrapping
// ErrRequestConflict naming the first field that differs.
//
// Payloads are compared exactly: the customer email byte for byte, the
// items in their order with equal product ids, quantities and prices, and
// the payment token. A request for another request id is a conflict too.
func (o Order) CheckRepeat(req Request) error {
	if field := diffRequest(o.Request(), req); field != "" {
		return fmt.Errorf("check repeated request %s: %w: %s differs", req.RequestID, ErrRequestConflict, field)
	}
	return nil
}

// diffRequest returns the name of the first field in which a and b differ,
// or "" when they are equal.
func diffRequest(a, b Request) string {
	switch {
	case a.RequestID != b.RequestID:
		return "request_id"
	case a.CustomerEmail != b.CustomerEmail:
		return "customer_email"
	case len(a.Items) != len(b.Items):
		return "items"
	case a.PaymentToken != b.PaymentToken:
		return "payment_token"
	}
	for i := range a.Items {
		if a.Items[i] != b.Items[i] {
			return fmt.Sprintf("items[%d]", i)
		}
	}
	return ""
}

// Fingerprint returns a canonical digest of req's payload — customer email,
// items in order and payment token, but not the request id — as 64 hex
// digits. Two requests have the same fingerprint exactly when CheckRepeat
// would accept one as a repeat of the other (given the same request id), so
// a store can keep the fingerprint next to the request id and compare that.
// The encoding is versioned and stable across releases.
func (req Request) Fingerprint() string {
	h := sha256.New()
	var buf [8]byte
	writeString := func(s string) {
		binary.BigEndian.PutUint64(buf[:], uint64(len(s)))
		h.Write(buf[:])
		h.Write([]byte(s))
	}
	writeInt := func(n int64) {
		binary.BigEndian.PutUint64(buf[:], uint64(n))
		h.Write(buf[:])
	}
	writeString("ordermesh.order.request.v1")
	writeString(req.CustomerEmail)
	writeString(req.PaymentToken)
	writeInt(int64(len(req.Items)))
	for _, it := range req.Items {
		writeString(it.ProductID)
		writeInt(int64(it.Quantity))
		writeString(it.UnitPrice.CurrencyCode)
		writeInt(it.UnitPrice.Units)
		writeInt(int64(it.UnitPrice.Nanos))
	}
	return hex.EncodeToString(h.Sum(nil))
}
