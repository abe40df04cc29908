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
// The record is bounded, so a long-running provider's memory does not grow
// with every order: it is kept in two generations of at most
// DefaultMaxKeys idempotency keys each. When the current generation is
// full, the previous one is forgotten and the current one becomes the
// previous. A key charged, refunded or charged again, and a charge
// refunded, moves to the current generation, so the provider remembers at
// least the DefaultMaxKeys keys used last, and records still in use
// survive. A charge moves together with its attempts and its refunds, so a
// refund repeated while its charge is remembered is still recognised and
// the amount refunded so far stays right. Records that are forgotten are
// forgotten as after a restart, with the consequences above and no others.
//
// Deterministic is safe for concurrent use; the zero value is ready to use.
type Deterministic struct {
	mu sync.Mutex
	// maxKeys bounds the idempotency keys (charge and refund) in one
	// generation; 0 means DefaultMaxKeys.
	maxKeys int
	cur     *generation // where new and touched records go
	prev    *generation // the generation before cur, or nil; forgotten at the next rotation
}

// DefaultMaxKeys is how many idempotency keys (charge and refund keys) one
// generation of a Deterministic provider holds, so the provider remembers
// between DefaultMaxKeys and about twice as many keys. A charge key takes
// about 340 bytes of heap with its attempts and record, a refund key about
// 210, so the record stays under about 6 MiB however long the provider
// runs, while the last DefaultMaxKeys keys span about 40 s of orders at
// 200 orders/s, more than the 11 s in which the bus's retry ladder makes
// an order.created's first three attempts.
const DefaultMaxKeys = 8192

// generation is one generation of the provider's record. A charge's
// attempts, charge and byID entries and the refunds of a charge this
// provider remembers are always in the same generation.
type generation struct {
	attempts map[string]int           // charge attempts by idempotency key
	charges  map[string]*chargeRecord // successful charges by idempotency key
	byID     map[string]*chargeRecord // the same records by charge id
	refunds  map[string]refundRecord  // refunds by idempotency key
}

func newGeneration() *generation {
	return &generation{
		attempts: map[string]int{},
		charges:  map[string]*chargeRecord{},
		byID:     map[string]*chargeRecord{},
		refunds:  map[string]refundRecord{},
	}
}

// keys returns how many idempotency keys g holds; every charge key is also
// an attempts key.
func (g *generation) keys() int { return len(g.attempts) + len(g.refunds) }

// lenCharges returns how many charges g holds; g may be nil.
func (g *generation) lenCharges() int {
	if g == nil {
		return 0
	}
	return len(g.charges)
}

// lenRefunds returns how many refunds g holds; g may be nil.
func (g *generation) lenRefunds() int {
	if g == nil {
		return 0
	}
	return len(g.refunds)
}

type chargeRecord struct {
	key      string // the charge's idempotency key
	charge   Charge
	token    string
	refunded *big.Int // nanos refunded so far; nil before the first refund (most charges have none)
	refunds  []string // idempotency keys of the refunds of this charge
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
	defer d.rotateIfFull()
	d.touchChargeKey(req.IdempotencyKey)
	d.cur.attempts[req.IdempotencyKey]++
	if rec, ok := d.cur.charges[req.IdempotencyKey]; ok {
		if rec.charge.Amount != req.Amount || rec.token != req.Token {
			return Charge{}, fmt.Errorf("charge %s: %w: charged %v before", req.IdempotencyKey, ErrIdempotencyConflict, rec.charge.Amount)
		}
		return rec.charge, nil
	}
	switch req.Token {
	case TokenDecline:
		return Charge{}, fmt.Errorf("charge %s: %w: card declined", req.IdempotencyKey, ErrDeclined)
	case TokenUnavailable:
		if n := d.cur.attempts[req.IdempotencyKey]; n <= UnavailableAttempts {
			return Charge{}, fmt.Errorf("charge %s: %w: attempt %d of %d fails by design",
				req.IdempotencyKey, ErrUnavailable, n, UnavailableAttempts)
		}
	}
	c := Charge{ID: deriveID(chargeIDPrefix, req.IdempotencyKey), Amount: req.Amount}
	rec := &chargeRecord{key: req.IdempotencyKey, charge: c, token: req.Token}
	d.cur.charges[req.IdempotencyKey] = rec
	d.cur.byID[c.ID] = rec
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
// restart or have been forgotten) and is ErrInvalidRequest otherwise. An
// empty key or charge id, or an invalid or negative amount, is
// ErrInvalidRequest. Refunds never fail transiently. A done ctx returns ctx's error and refunds nothing.
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
	defer d.rotateIfFull()
	if rec, ok := d.touchRefundKey(req.IdempotencyKey); ok {
		if rec.chargeID != req.ChargeID || rec.amount != req.Amount {
			return Refund{}, fmt.Errorf("refund %s: %w: refunded %v of %s before",
				req.IdempotencyKey, ErrIdempotencyConflict, rec.amount, rec.chargeID)
		}
		return rec.refund, nil
	}
	if ch, ok := d.touchChargeID(req.ChargeID); ok {
		if req.Amount.CurrencyCode != ch.charge.Amount.CurrencyCode {
			return Refund{}, fmt.Errorf("refund %s: %w: charge %s is in %s, refund in %s",
				req.IdempotencyKey, ErrInvalidRequest, req.ChargeID, ch.charge.Amount.CurrencyCode, req.Amount.CurrencyCode)
		}
		after := nanos(req.Amount)
		if ch.refunded != nil {
			after.Add(after, ch.refunded)
		}
		if after.Cmp(nanos(ch.charge.Amount)) > 0 {
			return Refund{}, fmt.Errorf("refund %s: %w: %v would exceed charge %s of %v",
				req.IdempotencyKey, ErrInvalidRequest, req.Amount, req.ChargeID, ch.charge.Amount)
		}
		ch.refunded = after
		ch.refunds = append(ch.refunds, req.IdempotencyKey)
	} else if !wellFormedID(chargeIDPrefix, req.ChargeID) {
		return Refund{}, fmt.Errorf("refund %s: %w: unknown charge %q", req.IdempotencyKey, ErrInvalidRequest, req.ChargeID)
	}
	r := Refund{ID: deriveID(refundIDPrefix, req.IdempotencyKey)}
	d.cur.refunds[req.IdempotencyKey] = refundRecord{refund: r, chargeID: req.ChargeID, amount: req.Amount}
	return r, nil
}

// ChargeAttempts returns how many well-formed Charge calls the provider
// remembers for key, successful or not: all since it started, unless key
// has been forgotten (see Deterministic).
func (d *Deterministic) ChargeAttempts(key string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, g := range d.generations() {
		if n, ok := g.attempts[key]; ok {
			return n
		}
	}
	return 0
}

// Charges returns the charges the provider remembers (see Deterministic),
// ordered by id: all it has made since it started until the first
// generation is forgotten. Each idempotency key appears at most once.
func (d *Deterministic) Charges() []Charge {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Charge, 0, d.cur.lenCharges()+d.prev.lenCharges())
	for _, g := range d.generations() {
		for _, rec := range g.charges {
			out = append(out, rec.charge)
		}
	}
	slices.SortFunc(out, func(a, b Charge) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Refunds returns the refunds the provider remembers (see Deterministic),
// ordered by id: all it has made since it started until the first
// generation is forgotten.
func (d *Deterministic) Refunds() []Refund {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]Refund, 0, d.cur.lenRefunds()+d.prev.lenRefunds())
	for _, g := range d.generations() {
		for _, rec := range g.refunds {
			out = append(out, rec.refund)
		}
	}
	slices.SortFunc(out, func(a, b Refund) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// init makes the zero value usable; d.mu must be held.
func (d *Deterministic) init() {
	if d.cur == nil {
		d.cur = newGeneration()
	}
}

// generations returns the remembered generations, current first; d.mu
// must be held.
func (d *Deterministic) generations() []*generation {
	gs := make([]*generation, 0, 2)
	for _, g := range []*generation{d.cur, d.prev} {
		if g != nil {
			gs = append(gs, g)
		}
	}
	return gs
}

// rotateIfFull forgets the previous generation and starts a new current one
// when the current one holds maxKeys keys. It runs at the end of a call,
// never between moving a charge and adding its refund, so a charge and its
// refunds stay in one generation. d.mu must be held and d.init called.
func (d *Deterministic) rotateIfFull() {
	limit := d.maxKeys
	if limit <= 0 {
		limit = DefaultMaxKeys
	}
	if d.cur.keys() >= limit {
		d.prev, d.cur = d.cur, newGeneration()
	}
}

// touchChargeKey moves charge key's attempts, and its charge with its
// refunds, from the previous generation to the current one, if they are
// there; d.mu must be held and d.init called.
func (d *Deterministic) touchChargeKey(key string) {
	if d.prev == nil {
		return
	}
	n, ok := d.prev.attempts[key]
	if !ok {
		return
	}
	if rec, ok := d.prev.charges[key]; ok {
		d.promote(rec)
		return
	}
	delete(d.prev.attempts, key)
	d.cur.attempts[key] = n
}

// touchChargeID returns the charge with id the provider remembers, moved to
// the current generation with its attempts and refunds; d.mu must be held
// and d.init called.
func (d *Deterministic) touchChargeID(id string) (*chargeRecord, bool) {
	if rec, ok := d.cur.byID[id]; ok {
		return rec, true
	}
	if d.prev == nil {
		return nil, false
	}
	rec, ok := d.prev.byID[id]
	if !ok {
		return nil, false
	}
	d.promote(rec)
	return rec, true
}

// touchRefundKey returns the refund with key the provider remembers, moved
// to the current generation together with its charge, if the provider
// remembers that; d.mu must be held and d.init called.
func (d *Deterministic) touchRefundKey(key string) (refundRecord, bool) {
	if rec, ok := d.cur.refunds[key]; ok {
		return rec, true
	}
	if d.prev == nil {
		return refundRecord{}, false
	}
	rec, ok := d.prev.refunds[key]
	if !ok {
		return refundRecord{}, false
	}
	if ch, ok := d.prev.byID[rec.chargeID]; ok {
		d.promote(ch) // moves this refund too if it was made against ch
	}
	if _, ok := d.prev.refunds[key]; ok {
		delete(d.prev.refunds, key)
		d.cur.refunds[key] = rec
	}
	return rec, true
}

// promote moves rec, which is in the previous generation, to the current
// one with its attempts and its refunds; d.mu must be held.
func (d *Deterministic) promote(rec *chargeRecord) {
	if n, ok := d.prev.attempts[rec.key]; ok {
		delete(d.prev.attempts, rec.key)
		d.cur.attempts[rec.key] = n
	}
	delete(d.prev.charges, rec.key)
	delete(d.prev.byID, rec.charge.ID)
	d.cur.charges[rec.key] = rec
	d.cur.byID[rec.charge.ID] = rec
	for _, key := range rec.refunds {
		if r, ok := d.prev.refunds[key]; ok {
			delete(d.prev.refunds, key)
			d.cur.refunds[key] = r
		}
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
