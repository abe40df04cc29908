// Package provider is the payment service's port to a payment provider
// (Provider) and its built-in deterministic implementation (Deterministic),
// which lets tests and demos drive every branch of the payment flow from
// the payment token alone.
package provider

import (
	"context"
	"errors"
	"fmt"
)

var (
	// ErrDeclined is returned, wrapped with the provider's reason, when the
	// provider refuses a charge for good: the payment fails and retrying
	// will not help.
	ErrDeclined = errors.New("payment declined")
	// ErrUnavailable is returned when the provider could not be reached or
	// answered with a transient failure: nothing was charged or refunded,
	// and the caller should retry with the same idempotency key.
	ErrUnavailable = errors.New("payment provider unavailable")
	// ErrInvalidRequest is returned for a request the provider cannot
	// accept as given (missing idempotency key, malformed or negative
	// amount, unknown charge). It is permanent.
	ErrInvalidRequest = errors.New("invalid payment request")
	// ErrIdempotencyConflict is returned when an idempotency key is reused
	// with different parameters. It is permanent.
	ErrIdempotencyConflict = errors.New("idempotency key reused with different parameters")
)

// Money is an exact amount in one currency, shaped like google.type.Money:
// Units + Nanos/10^9, with a three-letter upper-case ISO 4217 CurrencyCode,
// Nanos within ±999,999,999, and Units and Nanos of the same sign.
type Money struct {
	CurrencyCode string
	Units        int64
	Nanos        int32
}

// String formats m like "EUR 12.500000000".
func (m Money) String() string {
	sign, units, nanos := "", m.Units, int64(m.Nanos)
	if units < 0 || nanos < 0 {
		sign = "-"
		units, nanos = -units, -nanos
	}
	if units < 0 { // the most negative int64 has no positive counterpart
		return fmt.Sprintf("%s -9223372036854775808.%09d", m.CurrencyCode, nanos)
	}
	return fmt.Sprintf("%s %s%d.%09d", m.CurrencyCode, sign, units, nanos)
}

// validate returns an error wrapping ErrInvalidRequest unless m is a valid
// amount that is not negative.
func (m Money) validate() error {
	code := m.CurrencyCode
	if len(code) != 3 || !isUpper(code[0]) || !isUpper(code[1]) || !isUpper(code[2]) {
		return fmt.Errorf("%w: currency code %q is not three upper-case letters", ErrInvalidRequest, code)
	}
	if m.Nanos <= -1_000_000_000 || m.Nanos >= 1_000_000_000 {
		return fmt.Errorf("%w: nanos %d out of range", ErrInvalidRequest, m.Nanos)
	}
	if m.Units < 0 || m.Nanos < 0 {
		return fmt.Errorf("%w: amount %v is negative", ErrInvalidRequest, m)
	}
	return nil
}

// less reports whether m is below o; both must be of one currency.
func (m Money) less(o Money) bool {
	return m.Units < o.Units || (m.Units == o.Units && m.Nanos < o.Nanos)
}

func isUpper(c byte) bool { return c >= 'A' && c <= 'Z' }

// ChargeRequest asks to charge an amount to a payment token.
type ChargeRequest struct {
	// IdempotencyKey identifies the charge: the order id. Charging the same
	// key again returns the first charge instead of charging twice.
	IdempotencyKey string
	// Amount is what to charge; not negative.
	Amount Money
	// Token is the opaque payment token the customer supplied.
	Token string
}

// Charge is a charge the provider made.
type Charge struct {
	// ID is the provider's id for the charge.
	ID string
	// Amount is what was charged.
	Amount Money
}

// RefundRequest asks to refund (part of) a charge.
type RefundRequest struct {
	// IdempotencyKey identifies the refund (the order id); refunding the
	// same key again returns the first refund.
	IdempotencyKey string
	// ChargeID is the charge to refund.
	ChargeID string
	// Amount is what to refund; not negative and not above the charge.
	Amount Money
}

// Refund is a refund the provider made.
type Refund struct {
	// ID is the provider's id for the refund.
	ID string
}

// Provider charges and refunds payments. Implementations are safe for
// concurrent use, honour ctx cancellation, and are idempotent on the
// request's IdempotencyKey: a retried call returns the first call's result
// and never moves money twice. Charge keys and refund keys are separate
// spaces (the payment service uses the order id for both): an adapter to
// a provider whose keys span operations qualifies them, "charge:" or
// "refund:" followed by the key, say.
//
// Errors wrap ErrDeclined (permanent: the payment fails), ErrUnavailable
// (transient: retry with the same key), ErrInvalidRequest or
// ErrIdempotencyConflict (permanent), or are ctx's error. The service
// waits out ErrUnavailable (an outage: retried without counting attempts,
// however long it lasts), while ctx's deadline counts an attempt, and
// after the retry ladder the event is dead-lettered: an adapter reports a
// provider that does not answer, its own call timeouts included, as
// ErrUnavailable.
type Provider interface {
	// Charge charges req.Amount to req.Token.
	Charge(ctx context.Context, req ChargeRequest) (Charge, error)
	// Refund refunds req.Amount of the charge req.ChargeID.
	Refund(ctx context.Context, req RefundRequest) (Refund, error)
	// FindCharge returns the charge made under idempotencyKey, and false
	// when there is none (nothing charged, or only declined attempts). The
	// payment service asks before it settles an order it has no record
	// of: a charge whose record did not commit must still be refunded.
	// It moves no money. The service asks once, when the order ends and
	// again when a blocked order's order.created comes back, so an
	// adapter must not answer false for a charge that may still complete
	// (an attempt whose Charge call failed with ErrUnavailable or timed
	// out but which the provider may yet carry out): it returns
	// ErrUnavailable until that attempt's outcome is known, so the
	// service asks again through its retries.
	FindCharge(ctx context.Context, idempotencyKey string) (c Charge, found bool, err error)
}
