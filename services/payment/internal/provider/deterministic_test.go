package provider

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func eur(units int64, nanos int32) Money {
	return Money{CurrencyCode: "EUR", Units: units, Nanos: nanos}
}

const orderID = "0190f3c8-0000-7000-8000-000000000001"

var chargeIDPattern = regexp.MustCompile(`^ch_[0-9a-f]{24}$`)

// call is one Charge call and what it must return.
type call struct {
	req     ChargeRequest
	wantErr error // nil for success
}

func TestDeterministicCharge(t *testing.T) {
	amount := eur(21, 30_000_000)
	req := func(key, token string) ChargeRequest {
		return ChargeRequest{IdempotencyKey: key, Amount: amount, Token: token}
	}
	tests := []struct {
		name        string
		calls       []call
		wantCharges int
	}{
		{
			name:        "any other token succeeds",
			calls:       []call{{req: req(orderID, "tok_visa")}},
			wantCharges: 1,
		},
		{
			name:        "zero amount succeeds",
			calls:       []call{{req: ChargeRequest{IdempotencyKey: orderID, Amount: eur(0, 0), Token: "tok_visa"}}},
			wantCharges: 1,
		},
		{
			name:  "decline is permanent",
			calls: []call{{req: req(orderID, TokenDecline), wantErr: ErrDeclined}, {req: req(orderID, TokenDecline), wantErr: ErrDeclined}},
		},
		{
			name: "unavailable twice then success",
			calls: []call{
				{req: req(orderID, TokenUnavailable), wantErr: ErrUnavailable},
				{req: req(orderID, TokenUnavailable), wantErr: ErrUnavailable},
				{req: req(orderID, TokenUnavailable)},
				{req: req(orderID, TokenUnavailable)},
			},
			wantCharges: 1,
		},
		{
			name: "unavailable attempts count per key",
			calls: []call{
				{req: req("order-a", TokenUnavailable), wantErr: ErrUnavailable},
				{req: req("order-b", TokenUnavailable), wantErr: ErrUnavailable},
				{req: req("order-a", TokenUnavailable), wantErr: ErrUnavailable},
				{req: req("order-a", TokenUnavailable)},
				{req: req("order-b", TokenUnavailable), wantErr: ErrUnavailable},
				{req: req("order-b", TokenUnavailable)},
			},
			wantCharges: 2,
		},
		{
			name:        "repeat returns the first charge",
			calls:       []call{{req: req(orderID, "tok_visa")}, {req: req(orderID, "tok_visa")}, {req: req(orderID, "tok_visa")}},
			wantCharges: 1,
		},
		{
			name:        "repeat with another amount conflicts",
			calls:       []call{{req: req(orderID, "tok_visa")}, {req: ChargeRequest{IdempotencyKey: orderID, Amount: eur(1, 0), Token: "tok_visa"}, wantErr: ErrIdempotencyConflict}},
			wantCharges: 1,
		},
		{
			name:        "repeat with another token conflicts",
			calls:       []call{{req: req(orderID, "tok_visa")}, {req: req(orderID, TokenDecline), wantErr: ErrIdempotencyConflict}},
			wantCharges: 1,
		},
		{
			name:        "declined key can succeed with another token",
			calls:       []call{{req: req(orderID, TokenDecline), wantErr: ErrDeclined}, {req: req(orderID, "tok_visa")}},
			wantCharges: 1,
		},
		{name: "empty key", calls: []call{{req: req("", "tok_visa"), wantErr: ErrInvalidRequest}}},
		{name: "empty token", calls: []call{{req: req(orderID, ""), wantErr: ErrInvalidRequest}}},
		{
			name:  "negative amount",
			calls: []call{{req: ChargeRequest{IdempotencyKey: orderID, Amount: eur(-1, 0), Token: "tok_visa"}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "negative nanos",
			calls: []call{{req: ChargeRequest{IdempotencyKey: orderID, Amount: eur(0, -1), Token: "tok_visa"}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "nanos out of range",
			calls: []call{{req: ChargeRequest{IdempotencyKey: orderID, Amount: eur(0, 1_000_000_000), Token: "tok_visa"}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "bad currency",
			calls: []call{{req: ChargeRequest{IdempotencyKey: orderID, Amount: Money{CurrencyCode: "eur", Units: 1}, Token: "tok_visa"}, wantErr: ErrInvalidRequest}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewDeterministic()
			firstByKey := map[string]Charge{}
			for i, c := range tt.calls {
				got, err := p.Charge(t.Context(), c.req)
				if c.wantErr != nil {
					if !errors.Is(err, c.wantErr) {
						t.Fatalf("call %d: Charge error = %v, want %v", i, err, c.wantErr)
					}
					if got != (Charge{}) {
						t.Errorf("call %d: failed Charge returned %+v", i, got)
					}
					continue
				}
				if err != nil {
					t.Fatalf("call %d: Charge: %v", i, err)
				}
				want := Charge{ID: deriveID("ch_", c.req.IdempotencyKey), Amount: c.req.Amount}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("call %d: charge mismatch (-want +got):\n%s", i, diff)
				}
				if !chargeIDPattern.MatchString(got.ID) {
					t.Errorf("call %d: charge id %q is not ch_ and 24 hex digits", i, got.ID)
				}
				if first, ok := firstByKey[c.req.IdempotencyKey]; ok && first != got {
					t.Errorf("call %d: repeat returned %+v, first was %+v", i, got, first)
				}
				firstByKey[c.req.IdempotencyKey] = got
			}
			if got := len(p.Charges()); got != tt.wantCharges {
				t.Errorf("provider made %d charges, want %d", got, tt.wantCharges)
			}
		})
	}
}

func TestDeterministicErrorClasses(t *testing.T) {
	p := NewDeterministic()
	_, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: orderID, Amount: eur(1, 0), Token: TokenDecline})
	if !errors.Is(err, ErrDeclined) || errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "card declined") {
		t.Errorf("decline error = %v, want ErrDeclined saying card declined, not ErrUnavailable", err)
	}
	_, err = p.Charge(t.Context(), ChargeRequest{IdempotencyKey: orderID + "x", Amount: eur(1, 0), Token: TokenUnavailable})
	if !errors.Is(err, ErrUnavailable) || errors.Is(err, ErrDeclined) {
		t.Errorf("unavailable error = %v, want ErrUnavailable only", err)
	}
}

func TestDeterministicIDsSurviveRestart(t *testing.T) {
	req := ChargeRequest{IdempotencyKey: orderID, Amount: eur(5, 0), Token: TokenUnavailable}
	var ids []string
	for range 2 {
		p := NewDeterministic() // a restarted process: nothing remembered
		for attempt := 1; ; attempt++ {
			c, err := p.Charge(t.Context(), req)
			if errors.Is(err, ErrUnavailable) {
				continue
			}
			if err != nil {
				t.Fatalf("Charge: %v", err)
			}
			if attempt != UnavailableAttempts+1 {
				t.Errorf("succeeded on attempt %d, want %d", attempt, UnavailableAttempts+1)
			}
			if got := p.ChargeAttempts(orderID); got != attempt {
				t.Errorf("ChargeAttempts = %d, want %d", got, attempt)
			}
			ids = append(ids, c.ID)
			break
		}
	}
	if ids[0] != ids[1] {
		t.Errorf("charge ids differ across restarts: %q, %q", ids[0], ids[1])
	}
	if deriveID("ch_", "order-a") == deriveID("ch_", "order-b") {
		t.Error("different keys give the same charge id")
	}
}

func TestDeterministicContextDone(t *testing.T) {
	p := NewDeterministic()
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Charge(ctx, ChargeRequest{IdempotencyKey: orderID, Amount: eur(1, 0), Token: "tok_visa"}); !errors.Is(err, context.Canceled) {
		t.Errorf("Charge error = %v, want context.Canceled", err)
	}
	if _, err := p.Refund(ctx, RefundRequest{IdempotencyKey: orderID, ChargeID: deriveID("ch_", orderID), Amount: eur(1, 0)}); !errors.Is(err, context.Canceled) {
		t.Errorf("Refund error = %v, want context.Canceled", err)
	}
	if n := p.ChargeAttempts(orderID); n != 0 {
		t.Errorf("cancelled Charge counted as %d attempts", n)
	}
	if len(p.Charges()) != 0 || len(p.Refunds()) != 0 {
		t.Error("cancelled calls moved money")
	}
}

func TestDeterministicRefund(t *testing.T) {
	charged := eur(10, 500_000_000)
	// refundCall is one Refund call and what it must return.
	type refundCall struct {
		req     RefundRequest
		wantErr error
	}
	chargeID := deriveID("ch_", orderID)
	refund := func(key string, amount Money) RefundRequest {
		return RefundRequest{IdempotencyKey: key, ChargeID: chargeID, Amount: amount}
	}
	tests := []struct {
		name        string
		calls       []refundCall
		wantRefunds int
	}{
		{name: "full refund", calls: []refundCall{{req: refund(orderID, charged)}}, wantRefunds: 1},
		{
			name:        "repeat returns the first refund",
			calls:       []refundCall{{req: refund(orderID, charged)}, {req: refund(orderID, charged)}},
			wantRefunds: 1,
		},
		{
			name:        "repeat with another amount conflicts",
			calls:       []refundCall{{req: refund(orderID, charged)}, {req: refund(orderID, eur(1, 0)), wantErr: ErrIdempotencyConflict}},
			wantRefunds: 1,
		},
		{
			name: "repeat with another charge conflicts",
			calls: []refundCall{
				{req: refund(orderID, eur(1, 0))},
				{req: RefundRequest{IdempotencyKey: orderID, ChargeID: deriveID("ch_", "other"), Amount: eur(1, 0)}, wantErr: ErrIdempotencyConflict},
			},
			wantRefunds: 1,
		},
		{
			name: "partial refunds up to the charge",
			calls: []refundCall{
				{req: refund("r1", eur(5, 250_000_000))},
				{req: refund("r2", eur(5, 250_000_000))},
				{req: refund("r3", eur(0, 1)), wantErr: ErrInvalidRequest},
			},
			wantRefunds: 2,
		},
		{name: "more than charged", calls: []refundCall{{req: refund(orderID, eur(10, 500_000_001)), wantErr: ErrInvalidRequest}}},
		{name: "other currency", calls: []refundCall{{req: refund(orderID, Money{CurrencyCode: "USD", Units: 1}), wantErr: ErrInvalidRequest}}},
		{name: "negative amount", calls: []refundCall{{req: refund(orderID, eur(-1, 0)), wantErr: ErrInvalidRequest}}},
		{name: "empty key", calls: []refundCall{{req: refund("", charged), wantErr: ErrInvalidRequest}}},
		{
			name:  "empty charge id",
			calls: []refundCall{{req: RefundRequest{IdempotencyKey: orderID, Amount: charged}, wantErr: ErrInvalidRequest}},
		},
		{
			name:        "forgotten but well-formed charge id",
			calls:       []refundCall{{req: RefundRequest{IdempotencyKey: orderID, ChargeID: deriveID("ch_", "before-restart"), Amount: eur(99, 0)}}},
			wantRefunds: 1,
		},
		{
			name:  "malformed charge id",
			calls: []refundCall{{req: RefundRequest{IdempotencyKey: orderID, ChargeID: "ch_nothex", Amount: charged}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "charge id of the right length, not hex",
			calls: []refundCall{{req: RefundRequest{IdempotencyKey: orderID, ChargeID: "ch_" + strings.Repeat("g", 24), Amount: charged}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "charge id in upper case",
			calls: []refundCall{{req: RefundRequest{IdempotencyKey: orderID, ChargeID: "ch_" + strings.ToUpper(strings.TrimPrefix(chargeID, "ch_")), Amount: charged}, wantErr: ErrInvalidRequest}},
		},
		{
			name:  "refund id is not a charge id",
			calls: []refundCall{{req: RefundRequest{IdempotencyKey: orderID, ChargeID: deriveID("re_", orderID), Amount: charged}, wantErr: ErrInvalidRequest}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewDeterministic()
			c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: orderID, Amount: charged, Token: "tok_visa"})
			if err != nil {
				t.Fatalf("Charge: %v", err)
			}
			if c.ID != chargeID {
				t.Fatalf("charge id = %q, want %q", c.ID, chargeID)
			}
			for i, rc := range tt.calls {
				got, err := p.Refund(t.Context(), rc.req)
				if rc.wantErr != nil {
					if !errors.Is(err, rc.wantErr) {
						t.Fatalf("call %d: Refund error = %v, want %v", i, err, rc.wantErr)
					}
					continue
				}
				if err != nil {
					t.Fatalf("call %d: Refund: %v", i, err)
				}
				if want := deriveID("re_", rc.req.IdempotencyKey); got.ID != want {
					t.Errorf("call %d: refund id = %q, want %q", i, got.ID, want)
				}
			}
			if got := len(p.Refunds()); got != tt.wantRefunds {
				t.Errorf("provider made %d refunds, want %d", got, tt.wantRefunds)
			}
		})
	}
}

// A charge key that was never charged (declined here) has a record, for its
// attempts, under the charge id it would have had; refunding that id is
// refunding a charge the provider does not remember, and repeating the
// refund leaves the key's record where it is.
func TestDeterministicRefundOfUnchargedKey(t *testing.T) {
	const maxKeys = 4
	p := &Deterministic{maxKeys: maxKeys}
	if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "declined", Amount: eur(5, 0), Token: TokenDecline}); !errors.Is(err, ErrDeclined) {
		t.Fatalf("Charge with %s: %v, want ErrDeclined", TokenDecline, err)
	}
	req := RefundRequest{IdempotencyKey: "refund-declined", ChargeID: deriveID(chargeIDPrefix, "declined"), Amount: eur(99, 0)}
	first, err := p.Refund(t.Context(), req)
	if err != nil {
		t.Fatalf("Refund of a never-charged key's id: %v", err)
	}
	moveToPrevious(t, p, "declined", "fill")
	again, err := p.Refund(t.Context(), req)
	if err != nil || again != first {
		t.Fatalf("repeated Refund = %v, %v; want %v", again, err, first)
	}
	if g := generationOf(p, "declined"); g != "previous" {
		t.Errorf("the never-charged key moved to the %q generation with a refund against its id", g)
	}
	if n := p.ChargeAttempts("declined"); n != 1 {
		t.Errorf("ChargeAttempts = %d, want 1", n)
	}
	checkGenerations(t, p)
}

func TestDeterministicZeroValue(t *testing.T) {
	var p Deterministic
	if got := p.Charges(); len(got) != 0 {
		t.Errorf("Charges() on zero value = %v", got)
	}
	c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: orderID, Amount: eur(1, 0), Token: "tok_visa"})
	if err != nil {
		t.Fatalf("Charge on zero value: %v", err)
	}
	if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: orderID, ChargeID: c.ID, Amount: eur(1, 0)}); err != nil {
		t.Fatalf("Refund on zero value: %v", err)
	}
}

func TestDeterministicConcurrent(t *testing.T) {
	const workers = 64
	tests := []struct {
		name            string
		token           string
		wantUnavailable int
	}{
		{name: "success", token: "tok_visa"},
		{name: "unavailable", token: TokenUnavailable, wantUnavailable: UnavailableAttempts},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewDeterministic()
			req := ChargeRequest{IdempotencyKey: orderID, Amount: eur(3, 0), Token: tt.token}
			var (
				mu          sync.Mutex
				ids         = map[string]int{}
				unavailable int
				others      []error
				wg          sync.WaitGroup
			)
			for range workers {
				wg.Go(func() {
					c, err := p.Charge(t.Context(), req)
					mu.Lock()
					defer mu.Unlock()
					switch {
					case err == nil:
						ids[c.ID]++
					case errors.Is(err, ErrUnavailable):
						unavailable++
					default:
						others = append(others, err)
					}
				})
			}
			wg.Wait()
			if len(others) > 0 {
				t.Fatalf("unexpected errors: %v", others)
			}
			if unavailable != tt.wantUnavailable {
				t.Errorf("%d calls were unavailable, want %d", unavailable, tt.wantUnavailable)
			}
			want := map[string]int{deriveID("ch_", orderID): workers - tt.wantUnavailable}
			if diff := cmp.Diff(want, ids); diff != "" {
				t.Errorf("charge ids returned (-want +got):\n%s", diff)
			}
			if got := len(p.Charges()); got != 1 {
				t.Errorf("provider made %d charges, want 1", got)
			}
			if got := p.ChargeAttempts(orderID); got != workers {
				t.Errorf("ChargeAttempts = %d, want %d", got, workers)
			}
		})
	}

	t.Run("many keys with refunds", func(t *testing.T) {
		p := NewDeterministic()
		var wg sync.WaitGroup
		errs := make([]error, workers)
		for i := range workers {
			wg.Go(func() {
				key := fmt.Sprintf("order-%d", i%8)
				c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(2, 0), Token: "tok_visa"})
				if err != nil {
					errs[i] = err
					return
				}
				_, errs[i] = p.Refund(t.Context(), RefundRequest{IdempotencyKey: key, ChargeID: c.ID, Amount: eur(2, 0)})
			})
		}
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatalf("concurrent charge and refund: %v", err)
		}
		if got := len(p.Charges()); got != 8 {
			t.Errorf("provider made %d charges, want 8", got)
		}
		if got := len(p.Refunds()); got != 8 {
			t.Errorf("provider made %d refunds, want 8", got)
		}
	})
}

func TestMoneyString(t *testing.T) {
	tests := []struct {
		m    Money
		want string
	}{
		{m: eur(12, 500_000_000), want: "EUR 12.500000000"},
		{m: eur(0, 1), want: "EUR 0.000000001"},
		{m: eur(-3, -40_000_000), want: "EUR -3.040000000"},
		{m: eur(math.MinInt64, -5), want: "EUR -9223372036854775808.000000005"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			if got := tt.m.String(); got != tt.want {
				t.Errorf("String() = %q, want %q", got, tt.want)
			}
		})
	}
}

// rememberedKeys returns how many idempotency keys p remembers.
func (d *Deterministic) rememberedKeys() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	n := 0
	for _, g := range d.generations() {
		n += g.keys()
	}
	return n
}

// generationOf returns "current" or "previous", the generation that holds
// the record of charge key, or "" when p does not remember it.
func generationOf(p *Deterministic, key string) string {
	sum := sumOf(chargeIDPrefix, key)
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range []struct {
		name string
		gen  *generation
	}{{"current", p.cur}, {"previous", p.prev}} {
		if g.gen == nil {
			continue
		}
		if _, ok := g.gen.charges[sum]; ok {
			return g.name
		}
	}
	return ""
}

// checkGenerations fails t unless the refunds of each charge p remembers
// are in the charge's generation, and only charged keys have refunds.
func checkGenerations(t *testing.T, p *Deterministic) {
	t.Helper()
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, g := range p.generations() {
		for sum, rec := range g.charges {
			if rec.refunds == nil {
				continue
			}
			if !rec.charged {
				t.Fatalf("charge key %s was never charged but has refunds", sum.id(chargeIDPrefix))
			}
			for _, r := range rec.refunds.ids {
				if _, ok := g.refunds[r]; !ok {
					t.Fatalf("refund %s of charge %s is not in the charge's generation", r.id(refundIDPrefix), sum.id(chargeIDPrefix))
				}
			}
		}
	}
}

// deriveID returns the id the provider issues for key: prefix followed by
// the first 24 hex digits of the SHA-256 of prefix and key.
func deriveID(prefix, key string) string {
	sum := sha256.Sum256([]byte(prefix + key))
	return prefix + hex.EncodeToString(sum[:])[:24]
}

// chargeFresh charges n new keys with prefix and returns their charges.
func chargeFresh(t *testing.T, p *Deterministic, prefix string, n int) []Charge {
	t.Helper()
	out := make([]Charge, 0, n)
	for i := range n {
		c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: fmt.Sprintf("%s-%d", prefix, i), Amount: eur(1, 0), Token: "tok_visa"})
		if err != nil {
			t.Fatalf("Charge: %v", err)
		}
		out = append(out, c)
	}
	return out
}

// moveToPrevious charges new keys until charge key is in p's previous
// generation.
func moveToPrevious(t *testing.T, p *Deterministic, key, prefix string) {
	t.Helper()
	for i := 0; generationOf(p, key) != "previous"; i++ {
		if i > 2*p.maxKeys || generationOf(p, key) == "" {
			t.Fatalf("charge key %s left the current generation but not for the previous one", key)
		}
		chargeFresh(t, p, fmt.Sprintf("%s-%d", prefix, i), 1)
	}
}

func TestDeterministicBounded(t *testing.T) {
	const maxKeys = 8
	p := &Deterministic{maxKeys: maxKeys}
	first := chargeFresh(t, p, "first", 1)[0]
	for i := range 500 {
		key := fmt.Sprintf("order-%d", i)
		c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(2, 0), Token: "tok_visa"})
		if err != nil {
			t.Fatalf("Charge %s: %v", key, err)
		}
		if i%3 == 0 {
			if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: key, ChargeID: c.ID, Amount: eur(1, 0)}); err != nil {
				t.Fatalf("Refund %s: %v", key, err)
			}
		}
		if i%7 == 0 {
			if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key + "-declined", Amount: eur(2, 0), Token: TokenDecline}); !errors.Is(err, ErrDeclined) {
				t.Fatalf("Charge declined: %v, want ErrDeclined", err)
			}
		}
		if n := p.rememberedKeys(); n > 2*maxKeys {
			t.Fatalf("after order %d the provider remembers %d keys, more than %d", i, n, 2*maxKeys)
		}
		checkGenerations(t, p)
	}
	if n := p.rememberedKeys(); n < maxKeys {
		t.Errorf("the provider remembers %d keys, fewer than the %d used last", n, maxKeys)
	}
	if n := len(p.Charges()); n > 2*maxKeys {
		t.Errorf("Charges() lists %d charges, more than %d", n, 2*maxKeys)
	}
	if generationOf(p, "first-0") != "" || p.ChargeAttempts("first-0") != 0 || slices.Contains(p.Charges(), first) {
		t.Error("the first charge is still remembered after hundreds of newer keys")
	}
}

func TestDeterministicRecentChargesIdempotent(t *testing.T) {
	const maxKeys = 8
	p := &Deterministic{maxKeys: maxKeys}
	chargeFresh(t, p, "old", 5*maxKeys)
	recent := chargeFresh(t, p, "recent", maxKeys) // the last maxKeys keys are always remembered
	for i, want := range recent {
		key := fmt.Sprintf("recent-%d", i)
		got, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(1, 0), Token: "tok_visa"})
		if err != nil {
			t.Fatalf("repeat Charge %s: %v", key, err)
		}
		if got != want {
			t.Errorf("repeat Charge %s = %+v, want %+v", key, got, want)
		}
		if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(2, 0), Token: "tok_visa"}); !errors.Is(err, ErrIdempotencyConflict) {
			t.Errorf("Charge %s with another amount: %v, want ErrIdempotencyConflict", key, err)
		}
		if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(1, 0), Token: "tok_other"}); !errors.Is(err, ErrIdempotencyConflict) {
			t.Errorf("Charge %s with another token: %v, want ErrIdempotencyConflict", key, err)
		}
		if got := p.ChargeAttempts(key); got != 4 {
			t.Errorf("ChargeAttempts(%s) = %d, want 4", key, got)
		}
	}
	checkGenerations(t, p)
}

func TestDeterministicTouchedSurvivesRotation(t *testing.T) {
	const maxKeys = 8
	p := &Deterministic{maxKeys: maxKeys}
	hot := ChargeRequest{IdempotencyKey: "hot", Amount: eur(7, 0), Token: "tok_visa"}
	want, err := p.Charge(t.Context(), hot)
	if err != nil {
		t.Fatalf("Charge: %v", err)
	}
	calls := 1
	for round := range 20 {
		chargeFresh(t, p, fmt.Sprintf("filler-%d", round), maxKeys/2)
		got, err := p.Charge(t.Context(), hot)
		if err != nil {
			t.Fatalf("round %d: repeat Charge: %v", round, err)
		}
		if got != want {
			t.Fatalf("round %d: repeat Charge = %+v, want %+v", round, got, want)
		}
		calls++
		checkGenerations(t, p)
	}
	if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "hot", Amount: eur(8, 0), Token: "tok_visa"}); !errors.Is(err, ErrIdempotencyConflict) {
		t.Errorf("Charge hot with another amount: %v, want ErrIdempotencyConflict", err)
	}
	if got := p.ChargeAttempts("hot"); got != calls+1 {
		t.Errorf("ChargeAttempts(hot) = %d, want %d", got, calls+1)
	}

	// A TokenUnavailable key retried across rotations keeps its count.
	flaky := ChargeRequest{IdempotencyKey: "flaky", Amount: eur(3, 0), Token: TokenUnavailable}
	for attempt := 1; attempt <= UnavailableAttempts; attempt++ {
		if _, err := p.Charge(t.Context(), flaky); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("flaky Charge attempt %d: %v, want ErrUnavailable", attempt, err)
		}
		moveToPrevious(t, p, "flaky", fmt.Sprintf("filler-flaky-%d", attempt))
	}
	c, err := p.Charge(t.Context(), flaky)
	if err != nil {
		t.Fatalf("flaky Charge attempt %d, its earlier attempts in the previous generation: %v", UnavailableAttempts+1, err)
	}
	if c.ID != deriveID(chargeIDPrefix, "flaky") {
		t.Errorf("flaky charge id = %q", c.ID)
	}
	if got := p.ChargeAttempts("flaky"); got != UnavailableAttempts+1 {
		t.Errorf("ChargeAttempts(flaky) = %d, want %d", got, UnavailableAttempts+1)
	}
}

func TestDeterministicRefundAcrossGenerations(t *testing.T) {
	const maxKeys = 6
	p := &Deterministic{maxKeys: maxKeys}
	c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "order", Amount: eur(10, 0), Token: "tok_visa"})
	if err != nil {
		t.Fatalf("Charge: %v", err)
	}
	refund := func(key string, amount Money) (Refund, error) {
		t.Helper()
		r, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: key, ChargeID: c.ID, Amount: amount})
		checkGenerations(t, p)
		return r, err
	}
	r1, err := refund("r1", eur(6, 0))
	if err != nil {
		t.Fatalf("Refund r1: %v", err)
	}

	moveToPrevious(t, p, "order", "fill-a")
	if _, err := refund("r2", eur(4, 1)); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Refund r2 beyond the rest, charge in the previous generation: %v, want ErrInvalidRequest", err)
	}
	if g := generationOf(p, "order"); g != "current" {
		t.Errorf("a charge refunded again is in the %q generation, want current", g)
	}
	if _, err := refund("r2", eur(4, 0)); err != nil {
		t.Fatalf("Refund r2, the rest: %v", err)
	}

	moveToPrevious(t, p, "order", "fill-b")
	if got, err := refund("r1", eur(6, 0)); err != nil || got != r1 {
		t.Errorf("repeat Refund r1 = %+v, %v, want %+v", got, err, r1)
	}
	if _, err := refund("r1", eur(5, 0)); !errors.Is(err, ErrIdempotencyConflict) {
		t.Errorf("Refund r1 with another amount: %v, want ErrIdempotencyConflict", err)
	}
	if _, err := refund("r3", eur(0, 1)); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Refund r3 of a fully refunded charge: %v, want ErrInvalidRequest", err)
	}

	// A charge kept alive by repeated Charge calls keeps its refunds: a
	// repeated refund is recognised, not counted a second time.
	for round := range 10 {
		moveToPrevious(t, p, "order", fmt.Sprintf("fill-c%d", round))
		if _, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "order", Amount: eur(10, 0), Token: "tok_visa"}); err != nil {
			t.Fatalf("round %d: repeat Charge: %v", round, err)
		}
		checkGenerations(t, p)
	}
	if got, err := refund("r2", eur(4, 0)); err != nil || got.ID != deriveID(refundIDPrefix, "r2") {
		t.Errorf("repeat Refund r2 after many rotations = %+v, %v, want the first refund", got, err)
	}
}

func TestDeterministicForgottenLikeRestart(t *testing.T) {
	const maxKeys = 4
	p := &Deterministic{maxKeys: maxKeys}
	c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "gone", Amount: eur(10, 0), Token: "tok_visa"})
	if err != nil {
		t.Fatalf("Charge: %v", err)
	}
	if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: "gone-refund", ChargeID: c.ID, Amount: eur(10, 0)}); err != nil {
		t.Fatalf("Refund: %v", err)
	}
	flaky := ChargeRequest{IdempotencyKey: "flaky", Amount: eur(3, 0), Token: TokenUnavailable}
	if _, err := p.Charge(t.Context(), flaky); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("flaky Charge: %v, want ErrUnavailable", err)
	}
	moveToPrevious(t, p, "gone", "fill-a")
	chargeFresh(t, p, "fill-b", 2*maxKeys) // a second rotation forgets the previous generation
	if g := generationOf(p, "gone"); g != "" {
		t.Fatalf("charge still in the %s generation after two rotations", g)
	}
	if n := p.ChargeAttempts("gone"); n != 0 {
		t.Errorf("ChargeAttempts(gone) = %d, want 0 (forgotten)", n)
	}
	for _, r := range p.Refunds() {
		if r.ID == deriveID(refundIDPrefix, "gone-refund") {
			t.Error("Refunds() still lists the forgotten refund")
		}
	}

	// As after a restart: a refund of the well-formed id is accepted,
	// unchecked, and a malformed id is still refused.
	if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: "gone-refund", ChargeID: c.ID, Amount: eur(10, 0)}); err != nil {
		t.Errorf("repeat Refund of a forgotten charge: %v, want success", err)
	}
	if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: "late", ChargeID: c.ID, Amount: eur(99, 0)}); err != nil {
		t.Errorf("Refund beyond a forgotten charge: %v, want success (unchecked)", err)
	}
	if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: "bad", ChargeID: "ch_nothex", Amount: eur(1, 0)}); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("Refund of a malformed id: %v, want ErrInvalidRequest", err)
	}
	// The key charges again, with the same id, and TokenUnavailable counts
	// its attempts from the start.
	again, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: "gone", Amount: eur(11, 0), Token: "tok_visa"})
	if err != nil || again.ID != c.ID {
		t.Errorf("Charge of a forgotten key = %+v, %v, want a charge with id %s", again, err, c.ID)
	}
	for attempt := 1; attempt <= UnavailableAttempts; attempt++ {
		if _, err := p.Charge(t.Context(), flaky); !errors.Is(err, ErrUnavailable) {
			t.Errorf("flaky Charge attempt %d after it was forgotten: %v, want ErrUnavailable", attempt, err)
		}
	}
	if _, err := p.Charge(t.Context(), flaky); err != nil {
		t.Errorf("flaky Charge after %d more attempts: %v", UnavailableAttempts, err)
	}
	checkGenerations(t, p)
}

func TestDeterministicBoundedConcurrent(t *testing.T) {
	const maxKeys = 16
	p := &Deterministic{maxKeys: maxKeys}
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for w := range len(errs) {
		wg.Go(func() {
			for i := range 200 {
				key := fmt.Sprintf("w%d-order-%d", w, i%40)
				c, err := p.Charge(t.Context(), ChargeRequest{IdempotencyKey: key, Amount: eur(2, 0), Token: "tok_visa"})
				if err != nil {
					errs[w] = err
					return
				}
				if _, err := p.Refund(t.Context(), RefundRequest{IdempotencyKey: key, ChargeID: c.ID, Amount: eur(2, 0)}); err != nil {
					errs[w] = fmt.Errorf("refund %s: %w", key, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent charges and refunds: %v", err)
	}
	if n := p.rememberedKeys(); n > 2*maxKeys {
		t.Errorf("the provider remembers %d keys, more than %d", n, 2*maxKeys)
	}
	checkGenerations(t, p)
}

// TestDeterministicFindCharge: FindCharge finds a charge made under a key,
// and nothing for a key never charged, only declined, or only failed
// transiently; looking counts as no charge attempt.
func TestDeterministicFindCharge(t *testing.T) {
	ctx := t.Context()
	p := NewDeterministic()
	amount := eur(21, 30_000_000)
	charge := func(key, token string) {
		t.Helper()
		_, _ = p.Charge(ctx, ChargeRequest{IdempotencyKey: key, Amount: amount, Token: token})
	}
	charge("charged", "tok_visa")
	charge("declined", TokenDecline)
	charge("unavailable", TokenUnavailable)
	for _, tt := range []struct {
		key       string
		wantFound bool
	}{
		{"charged", true},
		{"never charged", false},
		{"declined", false},
		{"unavailable", false},
	} {
		t.Run(tt.key, func(t *testing.T) {
			attempts := p.ChargeAttempts(tt.key)
			c, found, err := p.FindCharge(ctx, tt.key)
			if err != nil || found != tt.wantFound {
				t.Fatalf("FindCharge = %+v, %v, %v; want found %v", c, found, err, tt.wantFound)
			}
			if found && (c.ID != deriveID("ch_", tt.key) || c.Amount != amount) {
				t.Errorf("found %+v, want %s of %v", c, deriveID("ch_", tt.key), amount)
			}
			if got := p.ChargeAttempts(tt.key); got != attempts {
				t.Errorf("charge attempts %d after FindCharge, %d before", got, attempts)
			}
		})
	}
	if _, _, err := p.FindCharge(ctx, ""); !errors.Is(err, ErrInvalidRequest) {
		t.Errorf("FindCharge of an empty key: %v, want ErrInvalidRequest", err)
	}
	done, cancel := context.WithCancel(ctx)
	cancel()
	if _, _, err := p.FindCharge(done, "charged"); !errors.Is(err, context.Canceled) {
		t.Errorf("FindCharge with a done context: %v, want context.Canceled", err)
	}
}
