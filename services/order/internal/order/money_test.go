package order

import (
	"errors"
	"math"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func eur(units int64, nanos int32) Money {
	return Money{CurrencyCode: "EUR", Units: units, Nanos: nanos}
}

func TestMoneyValidate(t *testing.T) {
	tests := []struct {
		name    string
		m       Money
		wantErr bool
	}{
		{name: "zero", m: eur(0, 0)},
		{name: "positive", m: eur(12, 500_000_000)},
		{name: "negative", m: eur(-12, -500_000_000)},
		{name: "only nanos negative", m: eur(0, -1)},
		{name: "max nanos", m: eur(0, 999_999_999)},
		{name: "min nanos", m: eur(0, -999_999_999)},
		{name: "extreme units", m: eur(math.MaxInt64, 999_999_999)},
		{name: "empty currency", m: Money{Units: 1}, wantErr: true},
		{name: "lower-case currency", m: Money{CurrencyCode: "eur", Units: 1}, wantErr: true},
		{name: "long currency", m: Money{CurrencyCode: "EURO", Units: 1}, wantErr: true},
		{name: "nanos too large", m: eur(0, 1_000_000_000), wantErr: true},
		{name: "nanos too small", m: eur(0, -1_000_000_000), wantErr: true},
		{name: "positive units negative nanos", m: eur(1, -1), wantErr: true},
		{name: "negative units positive nanos", m: eur(-1, 1), wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.m.Validate()
			if gotErr := err != nil; gotErr != tt.wantErr {
				t.Fatalf("Validate() = %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidMoney) {
				t.Errorf("Validate() = %v, want it to wrap ErrInvalidMoney", err)
			}
		})
	}
}

func TestMoneyAdd(t *testing.T) {
	tests := []struct {
		name    string
		a, b    Money
		want    Money
		wantErr error
	}{
		{name: "whole units", a: eur(1, 0), b: eur(2, 0), want: eur(3, 0)},
		{name: "nanos without carry", a: eur(1, 100_000_000), b: eur(2, 200_000_000), want: eur(3, 300_000_000)},
		{name: "nanos carry into units", a: eur(0, 600_000_000), b: eur(0, 700_000_000), want: eur(1, 300_000_000)},
		{name: "nanos carry to exactly one", a: eur(0, 999_999_999), b: eur(0, 1), want: eur(1, 0)},
		{name: "negative nanos carry", a: eur(0, -600_000_000), b: eur(0, -700_000_000), want: eur(-1, -300_000_000)},
		{name: "mixed signs stay positive", a: eur(1, 200_000_000), b: eur(0, -500_000_000), want: eur(0, 700_000_000)},
		{name: "mixed signs turn negative", a: eur(1, 0), b: eur(-1, -500_000_000), want: eur(0, -500_000_000)},
		{name: "mixed signs negative result with units", a: eur(-2, -200_000_000), b: eur(0, 500_000_000), want: eur(-1, -700_000_000)},
		{name: "cancel out", a: eur(3, 250_000_000), b: eur(-3, -250_000_000), want: eur(0, 0)},
		{name: "max plus zero", a: eur(math.MaxInt64, 999_999_999), b: eur(0, 0), want: eur(math.MaxInt64, 999_999_999)},
		{name: "overflow by one nano", a: eur(math.MaxInt64, 999_999_999), b: eur(0, 1), wantErr: ErrMoneyOverflow},
		{name: "overflow by units", a: eur(math.MaxInt64, 0), b: eur(1, 0), wantErr: ErrMoneyOverflow},
		{name: "negative overflow", a: eur(math.MinInt64, -999_999_999), b: eur(0, -1), wantErr: ErrMoneyOverflow},
		{name: "min plus zero", a: eur(math.MinInt64, 0), b: eur(0, 0), want: eur(math.MinInt64, 0)},
		{name: "currency mismatch", a: eur(1, 0), b: Money{CurrencyCode: "USD", Units: 1}, wantErr: ErrCurrencyMismatch},
		{name: "invalid left", a: eur(1, -1), b: eur(1, 0), wantErr: ErrInvalidMoney},
		{name: "invalid right", a: eur(1, 0), b: eur(0, 1_000_000_000), wantErr: ErrInvalidMoney},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.a.Add(tt.b)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%v.Add(%v) error = %v, want %v", tt.a, tt.b, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v.Add(%v) error = %v", tt.a, tt.b, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%v.Add(%v) mismatch (-want +got):\n%s", tt.a, tt.b, diff)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("sum is not normalized: %v", err)
			}
			back, err := tt.b.Add(tt.a)
			if err != nil || back != got {
				t.Errorf("Add is not commutative: %v.Add(%v) = %v, %v", tt.b, tt.a, back, err)
			}
		})
	}
}

func TestMoneyMul(t *testing.T) {
	tests := []struct {
		name    string
		m       Money
		n       int64
		want    Money
		wantErr error
	}{
		{name: "by one", m: eur(12, 340_000_000), n: 1, want: eur(12, 340_000_000)},
		{name: "by zero", m: eur(12, 340_000_000), n: 0, want: eur(0, 0)},
		{name: "whole units", m: eur(7, 0), n: 3, want: eur(21, 0)},
		{name: "nanos carry", m: eur(0, 333_333_334), n: 3, want: eur(1, 2)},
		{name: "nanos carry several units", m: eur(2, 500_000_000), n: 5, want: eur(12, 500_000_000)},
		{name: "nanos carry to whole", m: eur(0, 250_000_000), n: 4, want: eur(1, 0)},
		{name: "max quantity", m: eur(19, 990_000_000), n: 10_000, want: eur(199_900, 0)},
		{name: "one nano large quantity", m: eur(0, 1), n: 2_500_000_000, want: eur(2, 500_000_000)},
		{name: "negative price", m: eur(-1, -500_000_000), n: 3, want: eur(-4, -500_000_000)},
		{name: "negative factor", m: eur(1, 500_000_000), n: -3, want: eur(-4, -500_000_000)},
		{name: "largest that fits", m: eur(math.MaxInt64/2, 0), n: 2, want: eur(math.MaxInt64-1, 0)},
		{name: "overflow units", m: eur(math.MaxInt64/2+1, 0), n: 2, wantErr: ErrMoneyOverflow},
		{name: "carry just fits", m: eur(math.MaxInt64/3, 633_333_333), n: 3, want: eur(math.MaxInt64, 899_999_999)},
		{name: "overflow through nanos carry", m: eur(math.MaxInt64/3, 700_000_000), n: 3, wantErr: ErrMoneyOverflow},
		{name: "overflow negative", m: eur(math.MinInt64, 0), n: 2, wantErr: ErrMoneyOverflow},
		{name: "overflow by quantity", m: eur(1_000_000_000, 0), n: math.MaxInt64, wantErr: ErrMoneyOverflow},
		{name: "invalid", m: Money{Units: 1}, n: 2, wantErr: ErrInvalidMoney},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.m.Mul(tt.n)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("%v.Mul(%d) error = %v, want %v", tt.m, tt.n, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v.Mul(%d) error = %v", tt.m, tt.n, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("%v.Mul(%d) mismatch (-want +got):\n%s", tt.m, tt.n, diff)
			}
			if err := got.Validate(); err != nil {
				t.Errorf("product is not normalized: %v", err)
			}
		})
	}
}

func TestMoneyMulMatchesRepeatedAdd(t *testing.T) {
	prices := []Money{eur(0, 1), eur(0, 333_333_333), eur(1, 999_999_999), eur(-2, -700_000_001)}
	for _, p := range prices {
		sum := eur(0, 0)
		for n := int64(0); n <= 25; n++ {
			got, err := p.Mul(n)
			if err != nil {
				t.Fatalf("%v.Mul(%d): %v", p, n, err)
			}
			if got != sum {
				t.Errorf("%v.Mul(%d) = %v, repeated Add gives %v", p, n, got, sum)
			}
			if sum, err = sum.Add(p); err != nil {
				t.Fatalf("%v.Add(%v): %v", sum, p, err)
			}
		}
	}
}

func TestMoneyString(t *testing.T) {
	tests := []struct {
		m    Money
		want string
	}{
		{m: eur(0, 0), want: "EUR 0.00"},
		{m: eur(12, 500_000_000), want: "EUR 12.50"},
		{m: eur(12, 0), want: "EUR 12.00"},
		{m: eur(0, 1), want: "EUR 0.000000001"},
		{m: eur(-3, -40_000_000), want: "EUR -3.04"},
		{m: eur(0, -1), want: "EUR -0.000000001"},
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
