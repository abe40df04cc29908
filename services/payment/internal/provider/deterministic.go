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
// remembers. No money moves, so that is harmless. Nor does FindCharge
// find a charge it no longer remembers: the payment service then has no
// charge to refund for an order that ended while the record of its charge
// had not committed (rare: the transaction failed after the charge, and
// the order ended before its order.created came again). Against a real
// provider, which keeps its charges, that charge is found and refunded.
// Instances of the service do not share the record either.
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
// about 135 bytes of heap with its record, a charge refunded in full and
// its refund key about 410 together (BenchmarkDeterministicMemory), so the
// record stays under about 2.2 MB however long the provider runs while few
// charges are refunded (3.3 MB if every one is), and the last
// DefaultMaxKeys keys span about 40 s of orders at 200 orders/s, more than
// the 11 s in which the bus's retry ladder makes an order.created's first
// three attempts.
const DefaultMaxKeys = 8192

// idBytes is how many bytes of an idempotency key's SHA-256 an id shows,
// as idHexLen hex digits.
const idBytes = idHexLen / 2

// idSum is the first idBytes bytes of the SHA-256 of an id prefix and an
// idempotency key: the id the provider issues for the key, in binary. The
// record keeps keys by it rather than as strings, so a charge key costs
// neither the key's string nor a second map for looking its charge up by
// id. Two keys with one idSum (96 bits of a hash: for practical purposes
// never) would be taken for one key, as they would share an id anyway.
type idSum [idBytes]byte

// sumOf returns the idSum of key under prefix.
func sumOf(prefix, key string) idSum {
	h := sha256.New()
	h.Write([]byte(prefix))
	h.Write([]byte(key))
	var sum [sha256.Size]byte
	return idSum(h.Sum(sum[:0]))
}

// id returns the id the provider issues for s: prefix and s in hex.
func (s idSum) id(prefix string) string {
	return prefix + hex.EncodeToString(s[:])
}

// parseID returns the idSum of id, which must be prefix followed by
// idHexLen lower-case hex digits, as the provider issues them.
func parseID(prefix, id string) (idSum, bool) {
	rest, ok := strings.CutPrefix(id, prefix)
	// hex.Decode takes upper-case digits too; the provider issues none.
	if !ok || len(rest) != idHexLen || strings.ToLower(rest) != rest {
		return idSum{}, false
	}
	var s idSum
	if _, err := hex.Decode(s[:], []byte(rest)); err != nil {
		return idSum{}, false
	}
	return s, true
}

// generation is one generation of the provider's record. A charge key's
// record and the refunds of its charge are always in the same generation.
type generation struct {
	charges map[idSum]*chargeRecord // charge keys by charge id
	refunds map[idSum]refundRecord  // refund keys by refund id
}

func newGeneration() *generation {
	return &generation{charges: map[idSum]*chargeRecord{}, refunds: map[idSum]refundRecord{}}
}

// keys returns how many idempotency keys g holds.
func (g *generation) keys() int { return len(g.charges) + len(g.refunds) }

// lenCharges returns how many charge keys g holds; g may be nil.
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

// chargeRecord is what the provider remembers of a charge key: its
// attempts and, once one succeeded, the charge.
type chargeRecord struct {
	attempts int32
	charged  bool
	amount   Money          // what was charged, once charged
	token    string         // what was charged to, once charged
	refunds  *chargeRefunds // nil before the first refund (most charges have none)
}

// chargeRefunds are the refunds of a charge.
type chargeRefunds struct {
	total *big.Int // in nanos
	ids   []idSum
}

type refundRecord struct {
	chargeID idSum
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
	sum := sumOf(chargeIDPrefix, req.IdempotencyKey)

	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	defer d.rotateIfFull()
	rec := d.touchCharge(sum)
	if rec == nil {
		rec = &chargeRecord{}
		d.cur.charges[sum] = rec
	}
	rec.attempts++
	if rec.charged {
		if rec.amount != req.Amount || rec.token != req.Token {
			return Charge{}, fmt.Errorf("charge %s: %w: charged %v before", req.IdempotencyKey, ErrIdempotencyConflict, rec.amount)
		}
		return Charge{ID: sum.id(chargeIDPrefix), Amount: rec.amount}, nil
	}
	switch req.Token {
	case TokenDecline:
		return Charge{}, fmt.Errorf("charge %s: %w: card declined", req.IdempotencyKey, ErrDeclined)
	case TokenUnavailable:
		if n := rec.attempts; n <= UnavailableAttempts {
			return Charge{}, fmt.Errorf("charge %s: %w: attempt %d of %d fails by design",
				req.IdempotencyKey, ErrUnavailable, n, UnavailableAttempts)
		}
	}
	rec.charged, rec.amount, rec.token = true, req.Amount, req.Token
	return Charge{ID: sum.id(chargeIDPrefix), Amount: req.Amount}, nil
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
	sum := sumOf(refundIDPrefix, req.IdempotencyKey)
	chargeSum, wellFormed := parseID(chargeIDPrefix, req.ChargeID)

	d.mu.Lock()
	defer d.mu.Unlock()
	d.init()
	defer d.rotateIfFull()
	if rec, ok := d.touchRefund(sum); ok {
		if !wellFormed || rec.chargeID != chargeSum || rec.amount != req.Amount {
			return Refund{}, fmt.Errorf("refund %s: %w: refunded %v of %s before",
				req.IdempotencyKey, ErrIdempotencyConflict, rec.amount, rec.chargeID.id(chargeIDPrefix))
		}
		return Refund{ID: sum.id(refundIDPrefix)}, nil
	}
	if !wellFormed {
		return Refund{}, fmt.Errorf("refund %s: %w: unknown charge %q", req.IdempotencyKey, ErrInvalidRequest, req.ChargeID)
	}
	if ch := d.lookupCharge(chargeSum); ch != nil && ch.charged {
		ch = d.touchCharge(chargeSum)
		if req.Amount.CurrencyCode != ch.amount.CurrencyCode {
			return Refund{}, fmt.Errorf("refund %s: %w: charge %s is in %s, refund in %s",
				req.IdempotencyKey, ErrInvalidRequest, req.ChargeID, ch.amount.CurrencyCode, req.Amount.CurrencyCode)
		}
		after := nanos(req.Amount)
		if ch.refunds != nil {
			after.Add(after, ch.refunds.total)
		}
		if after.Cmp(nanos(ch.amount)) > 0 {
			return Refund{}, fmt.Errorf("refund %s: %w: %v would exceed charge %s of %v",
				req.IdempotencyKey, ErrInvalidRequest, req.Amount, req.ChargeID, ch.amount)
		}
		if ch.refunds == nil {
			ch.refunds = &chargeRefunds{}
		}
		ch.refunds.total = after
		ch.refunds.ids = append(ch.refunds.ids, sum)
	}
	d.cur.refunds[sum] = refundRecord{chargeID: chargeSum, amount: req.Amount}
	return Refund{ID: sum.id(refundIDPrefix)}, nil
}

// FindCharge returns the charge made under idempotencyKey if the provider
// remembers one (a key it has forgotten, see Deterministic, is not found,
// as after a restart). It counts as no attempt. An empty key is
// ErrInvalidRequest; a done ctx returns ctx's error.
func (d *Deterministic) FindCharge(ctx context.Context, idempotencyKey string) (Charge, bool, error) {
	if err := ctx.Err(); err != nil {
		return Charge{}, false, fmt.Errorf("find charge %s: %w", idempotencyKey, err)
	}
	if idempotencyKey == "" {
		return Charge{}, false, fmt.Errorf("find charge: %w: empty idempotency key", ErrInvalidRequest)
	}
	sum := sumOf(chargeIDPrefix, idempotencyKey)
	d.mu.Lock()
	defer d.mu.Unlock()
	if rec := d.lookupCharge(sum); rec != nil && rec.charged {
		return Charge{ID: sum.id(chargeIDPrefix), Amount: rec.amount}, true, nil
	}
	return Charge{}, false, nil
}

// ChargeAttempts returns how many well-formed Charge calls the provider
// remembers for key, successful or not: all since it started, unless key
// has been forgotten (see Deterministic).
func (d *Deterministic) ChargeAttempts(key string) int {
	sum := sumOf(chargeIDPrefix, key)
	d.mu.Lock()
	defer d.mu.Unlock()
	if rec := d.lookupCharge(sum); rec != nil {
		return int(rec.attempts)
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
		for sum, rec := range g.charges {
			if rec.charged {
				out = append(out, Charge{ID: sum.id(chargeIDPrefix), Amount: rec.amount})
			}
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
		for sum := range g.refunds {
			out = append(out, Refund{ID: sum.id(refundIDPrefix)})
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

// lookupCharge returns the record of the charge key whose charge id is
// sum, wherever it is, or nil; d.mu must be held.
func (d *Deterministic) lookupCharge(sum idSum) *chargeRecord {
	for _, g := range d.generations() {
		if rec, ok := g.charges[sum]; ok {
			return rec
		}
	}
	return nil
}

// touchCharge returns the record of the charge key whose charge id is sum,
// moved with the refunds of its charge to the current generation if it was
// in the previous one, or nil if the provider does not remember the key;
// d.mu must be held and d.init called.
func (d *Deterministic) touchCharge(sum idSum) *chargeRecord {
	if rec, ok := d.cur.charges[sum]; ok {
		return rec
	}
	if d.prev == nil {
		return nil
	}
	rec, ok := d.prev.charges[sum]
	if !ok {
		return nil
	}
	d.promote(sum, rec)
	return rec
}

// touchRefund returns the refund whose refund id is sum, moved to the
// current generation together with its charge, if the provider remembers
// that; d.mu must be held and d.init called.
func (d *Deterministic) touchRefund(sum idSum) (refundRecord, bool) {
	if rec, ok := d.cur.refunds[sum]; ok {
		return rec, true
	}
	if d.prev == nil {
		return refundRecord{}, false
	}
	rec, ok := d.prev.refunds[sum]
	if !ok {
		return refundRecord{}, false
	}
	if ch, ok := d.prev.charges[rec.chargeID]; ok && ch.charged {
		d.promote(rec.chargeID, ch) // moves this refund too if it was made against ch
	}
	if _, ok := d.prev.refunds[sum]; ok {
		delete(d.prev.refunds, sum)
		d.cur.refunds[sum] = rec
	}
	return rec, true
}

// promote moves rec, the record under sum in the previous generation, to
// the current one with the refunds of its charge; d.mu must be held.
func (d *Deterministic) promote(sum idSum, rec *chargeRecord) {
	delete(d.prev.charges, sum)
	d.cur.charges[sum] = rec
	if rec.refunds == nil {
		return
	}
	for _, r := range rec.refunds.ids {
		if refund, ok := d.prev.refunds[r]; ok {
			delete(d.prev.refunds, r)
			d.cur.refunds[r] = refund
		}
	}
}

// nanos returns m's amount in nanos.
func nanos(m Money) *big.Int {
	n := new(big.Int).Mul(big.NewInt(m.Units), big.NewInt(1_000_000_000))
	return n.Add(n, big.NewInt(int64(m.Nanos)))
}
