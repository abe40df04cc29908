package provider

import (
	"context"
	"errors"
	"fmt"
	"math"
	"regexp"
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
