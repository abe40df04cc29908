package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"sync"
)

// Test tokens the deterministic provider recognises. Any other token is
// charged successfully.
const (
	// TokenDecline is always declined with the reason "card declined".
	TokenDecline = "tok_decline"
	// TokenUnavailable fails with ErrUnavailable on the first
	// UnavailableAttempts charge attempts for an idempotency key, then
	// succeeds.
	TokenUnavailable = "tok_unavailable"
	// UnavailableAttempts is how many attempts TokenUnavailable fails.
	UnavailableAttempts = 2
)

// Prefixes of the ids the deterministic provider issues; the rest of an id
// is idHexLen hex digits of a SHA-256 of the idempotency key.
const (
	chargeIDPrefix = "ch_"
	refundIDPrefix = "re_"
	idHexLen       = 24
)

// Deterministic is the built-in Provider. Its behaviour depends only on the
// request, so tests and demos can drive every branch through the payment
// token (see TokenDecline and TokenUnavailable).
//
// Ids are derived from the idempotency key ("ch_" or "re_" followed by a
// hash prefix), so the same key yields the same id in every process, also
// after a restart. The record of charges, refunds and attempts lives in
// memory only: a restarted provider has forgotten them, so it starts
// counting TokenUnavailable attempts again — a charge whose retries span a
// restart fails up to UnavailableAttempts more times, which can use up the
// bus's retry ladder and park the order.created in the dead-letter queue —
// and it accepts a refund of a well-formed charge id it no longer
// remembers. No money moves, so that is harmless.
//
// Deterministic is safe for concurrent use; the zero value is ready to use.
type Deterministic struct {
	mu       sync.Mutex
	attempts map[string]int           // charge attempts by idempotency key
	charges  map[string]*chargeRecord // successful charges by idempotency key
	byID     map[string]*chargeRecord // the same records by charge id
	refunds  map[string]refundRecord  // refunds by idempotency key
}

type chargeRecord struct {
	charge   Charge
	token    string
	refunded *big.Int // nanos refunded so far
}

type refundRecord struct {
	refund   Refund
	chargeID string
	amount   Money
}

var _ Provider = (*Deterministic)(nil)

// NewDeterministic returns a Deterministic provider with no charges.
func NewDeterministic() *Deterministic { return &Deterministic{} }

// Charge charges req.Amount to req.Token, idempotently on
// req.IdempotencyKey:
//
//   - TokenDecline: an error wrapping ErrDeclined ("card declined"), every
//     time; nothing is recorded.
//   - TokenUnavailable: an error wrapping ErrUnavailable on the first
//     UnavailableAttempts attempts for the key, then success.
//   - any other token: success.
//
// A successful charge is recorded; charging the key again returns the same
// Charge (no second charge), or ErrIdempotencyConflict when the amount or
// token differ. An empty key or token, or an invalid or negative amount,
// is ErrInvalidRequest. A done ctx returns ctx's error and charges nothing.
func (d *Deterministic) Charge(ctx context.Context, req ChargeRequest) (Charge, error) {
	if err := ctx.Err(); err != nil {
		return Charge{}, fmt.Errorf("charge %s: %w", req.IdempotencyKey, err)
	}
	if req.IdempotencyKey == "" {
		return Charge{}, fmt.Errorf("charge: %w: empty idempotency key", ErrInvalidRequest)
	}
	if req.Token == "" {
		return Charge{}, fmt.Errorf("charge %s: %w: empty token", req.IdempotencyKey, ErrInvalidRequest)
	}
	if err := req.Amount.validate(); err != nil {
		return Charge{}, fmt.Errorf("charge %s: %w", req.IdempotencyKey, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	d.attempts[req.IdempotencyKey]++
	if rec, ok := d.charges[req.IdempotencyKey]; ok {
		if rec.charge.Amount != req.Amount || rec.token != req.Token {
			return Charge{}, fmt.Errorf("charge %s: %w: charged %v before", req.IdempotencyKey, ErrIdempotencyConflict, rec.charge.Amount)
		}
		return rec.charge, nil
	}
	switch req.Token {
	case TokenDecline:
		return Charge{}, fmt.Errorf("charge %s: %w: card declined", req.IdempotencyKey, ErrDeclined)
	case TokenUnavailable:
		if n := d.attempts[req.IdempotencyKey]; n <= UnavailableAttempts {
			return Charge{}, fmt.Errorf("charge %s: %w: attempt %d of %d fails by design",
				req.IdempotencyKey, ErrUnavailable, n, UnavailableAttempts)
		}
	}
	c := Charge{ID: deriveID(chargeIDPrefix, req.IdempotencyKey), Amount: req.Amount}
	rec := &chargeRecord{charge: c, token: req.Token, refunded: new(big.Int)}
	d.charges[req.IdempotencyKey] = rec
	d.byID[c.ID] = rec
	return c, nil
}

// Refund refunds req.Amount of charge req.ChargeID, idempotently on
// req.IdempotencyKey: refunding the key again returns the same Refund, or
// ErrIdempotencyConflict when the charge id or amount differ.
//
// For a charge this provider remembers, the amount must be in the charge's
// currency and, with earlier refunds of the charge, not exceed it
// (ErrInvalidRequest otherwise). A charge id it does not remember is
// accepted if it has the form this provider issues (it may predate a
// restart) and is ErrInvalidRequest otherwise. An empty key or charge id,
// or an invalid or negative amount, is ErrInvalidRequest. Refunds never
// fail transiently. A done ctx returns ctx's error and refunds nothing.
func (d *Deterministic) Refund(ctx context.Context, req RefundRequest) (Refund, error) {
	if err := ctx.Err(); err != nil {
		return Refund{}, fmt.Errorf("refund %s: %w", req.IdempotencyKey, err)
	}
	if req.IdempotencyKey == "" {
		return Refund{}, fmt.Errorf("refund: %w: empty idempotency key", ErrInvalidRequest)
	}
	if req.ChargeID == "" {
		return Refund{}, fmt.Errorf("refund %s: %w: empty charge id", req.IdempotencyKey, ErrInvalidRequest)
	}
	if err := req.Amount.validate(); err != nil {
		return Refund{}, fmt.Errorf("refund %s: %w", req.IdempotencyKey, err)
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	if rec, ok := d.refunds[req.IdempotencyKey]; ok {
		if rec.chargeID != req.ChargeID || rec.amount != req.Amount {
			return Refund{}, fmt.Errorf("refund %s: %w: refunded %v of %s before",
				req.IdempotencyKey, ErrIdempotencyConflict, rec.amount, rec.chargeID)
		}
		return rec.refund, nil
	}
	if ch, ok := d.byID[req.ChargeID]; ok {
		if req.Amount.CurrencyCode != ch.charge.Amount.CurrencyCode {
			return Refund{}, fmt.Errorf("refund %s: %w: charge %s is in %s, refund in %s",
				req.IdempotencyKey, ErrInvalidRequest, req.ChargeID, ch.charge.Amount.CurrencyCode, req.Amount.CurrencyCode)
		}
		after := new(big.Int).Add(ch.refunded, nanos(req.Amount))
		if after.Cmp(nanos(ch.charge.Amount)) > 0 {
			return Refund{}, fmt.Errorf("refund %s: %w: %v would exceed charge %s of %v",
				req.IdempotencyKey, ErrInvalidRequest, req.Amount, req.ChargeID, ch.charge.Amount)
		}
		ch.refunded = after
	} else if !wellFormedID(chargeIDPrefix, req.ChargeID) {
		return Refund{}, fmt.Errorf("refund %s: %w: unknown charge %q", req.IdempotencyKey, ErrInvalidRequest, req.ChargeID)
	}
	r := Refund{ID: deriveID(refundIDPrefix, req.IdempotencyKey)}
	d.refunds[req.IdempotencyKey] = refundRecord{refund: r, chargeID: req.ChargeID, amount: req.Amount}
	return r, nil
}

// ChargeAttempts returns how many well-formed Charge calls the provider has
// seen for key, successful or not, since it started.
func (d *Deterministic) ChargeAttempts(key string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.attempts[key]
}

// Charges returns the charges the provider has made since it started,
// ordered by id. Each idempotency key appears at most once.
func (d *Deterministic) Charges() []Charge {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Charge, 0, len(d.charges))
	for _, rec := range d.charges {
		out = append(out, rec.charge)
	}
	slices.SortFunc(out, func(a, b Charge) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Refunds returns the refunds the provider has made since it started,
// ordered by id.
func (d *Deterministic) Refunds() []Refund {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Refund, 0, len(d.refunds))
	for _, rec := range d.refunds {
		out = append(out, rec.refund)
	}
	slices.SortFunc(out, func(a, b Refund) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// init makes the zero value usable; d.mu must be held.
func (d *Deterministic) init() {
	if d.charges == nil {
		d.attempts = map[string]int{}
		d.charges = map[string]*chargeRecord{}
		d.byID = map[string]*chargeRecord{}
		d.refunds = map[string]refundRecord{}
	}
}

// deriveID returns prefix followed by the first idHexLen hex digits of the
// SHA-256 of prefix and key, so charge and refund ids for one key differ.
func deriveID(prefix, key string) string {
	sum := sha256.Sum256([]byte(prefix + key))
	return prefix + hex.EncodeToString(sum[:])[:idHexLen]
}

// wellFormedID reports whether id is prefix followed by idHexLen lower-case
// hex digits.
func wellFormedID(prefix, id string) bool {
	rest, ok := strings.CutPrefix(id, prefix)
	if !ok || len(rest) != idHexLen {
		return false
	}
	for i := range len(rest) {
		c := rest[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// nanos returns m's amount in nanos.
func nanos(m Money) *big.Int {
	n := new(big.Int).Mul(big.NewInt(m.Units), big.NewInt(1_000_000_000))
	return n.Add(n, big.NewInt(int64(m.Nanos)))
}
