package order

import (
	"errors"
	"fmt"
	"math/big"
	"strings"
)

// nanosPerUnit is the number of nanos in one whole unit.
const nanosPerUnit = 1_000_000_000

var (
	// ErrInvalidMoney is returned for a Money value that breaks its
	// invariants: a currency code that is not three upper-case letters,
	// nanos outside ±999,999,999, or units and nanos of different signs.
	ErrInvalidMoney = errors.New("invalid money")
	// ErrCurrencyMismatch is returned when amounts of different currencies
	// are combined.
	ErrCurrencyMismatch = errors.New("currency mismatch")
	// ErrMoneyOverflow is returned when a result does not fit in Money
	// (units beyond the range of int64).
	ErrMoneyOverflow = errors.New("money overflow")
)

// Money is an exact amount in one currency, shaped like google.type.Money:
// the value is Units + Nanos/10^9. A valid Money has a three-letter
// upper-case ISO 4217 CurrencyCode, Nanos within ±999,999,999, and Units
// and Nanos of the same sign (either may be zero). Every valid amount has
// exactly one valid representation, so valid Money values compare with ==.
// The zero value is not valid (it has no currency).
type Money struct {
	CurrencyCode string
	Units        int64
	Nanos        int32
}

// Validate returns nil when m is valid, or an error wrapping
// ErrInvalidMoney that says which rule m breaks.
func (m Money) Validate() error {
	if !isCurrencyCode(m.CurrencyCode) {
		return fmt.Errorf("%w: currency code %q is not three upper-case letters", ErrInvalidMoney, m.CurrencyCode)
	}
	if m.Nanos <= -nanosPerUnit || m.Nanos >= nanosPerUnit {
		return fmt.Errorf("%w: nanos %d out of range", ErrInvalidMoney, m.Nanos)
	}
	if (m.Units > 0 && m.Nanos < 0) || (m.Units < 0 && m.Nanos > 0) {
		return fmt.Errorf("%w: units %d and nanos %d have different signs", ErrInvalidMoney, m.Units, m.Nanos)
	}
	return nil
}

// IsNegative reports whether m is below zero.
func (m Money) IsNegative() bool { return m.Units < 0 || m.Nanos < 0 }

// IsZero reports whether m's amount is zero, whatever its currency.
func (m Money) IsZero() bool { return m.Units == 0 && m.Nanos == 0 }

// Add returns m + o. Both must be valid and of the same currency
// (ErrInvalidMoney, ErrCurrencyMismatch); a sum beyond the range of Money
// is ErrMoneyOverflow. The result is normalized.
func (m Money) Add(o Money) (Money, error) {
	if err := m.Validate(); err != nil {
		return Money{}, fmt.Errorf("add money: %w", err)
	}
	if err := o.Validate(); err != nil {
		return Money{}, fmt.Errorf("add money: %w", err)
	}
	if m.CurrencyCode != o.CurrencyCode {
		return Money{}, fmt.Errorf("add money: %w: %s and %s", ErrCurrencyMismatch, m.CurrencyCode, o.CurrencyCode)
	}
	sum := new(big.Int).Add(m.totalNanos(), o.totalNanos())
	r, err := fromNanos(m.CurrencyCode, sum)
	if err != nil {
		return Money{}, fmt.Errorf("add money: %w", err)
	}
	return r, nil
}

// Mul returns m × n, for example a unit price times a quantity. m must be
// valid (ErrInvalidMoney); a product beyond the range of Money is
// ErrMoneyOverflow. The result is normalized.
func (m Money) Mul(n int64) (Money, error) {
	if err := m.Validate(); err != nil {
		return Money{}, fmt.Errorf("multiply money: %w", err)
	}
	prod := new(big.Int).Mul(m.totalNanos(), big.NewInt(n))
	r, err := fromNanos(m.CurrencyCode, prod)
	if err != nil {
		return Money{}, fmt.Errorf("multiply money: %w", err)
	}
	return r, nil
}

// String formats m as its currency code and decimal amount, with at least
// two decimals and no trailing zeros beyond them, e.g. "EUR 12.50" or
// "USD -0.000000001".
func (m Money) String() string {
	units, nanos := m.Units, m.Nanos
	sign := ""
	if units < 0 || nanos < 0 {
		sign = "-"
	}
	abs := new(big.Int).Abs(big.NewInt(units))
	if nanos < 0 {
		nanos = -nanos
	}
	frac := strings.TrimRight(fmt.Sprintf("%09d", nanos), "0")
	for len(frac) < 2 {
		frac += "0"
	}
	return fmt.Sprintf("%s %s%s.%s", m.CurrencyCode, sign, abs.String(), frac)
}

// totalNanos returns m's amount in nanos, which needs more than 64 bits.
func (m Money) totalNanos() *big.Int {
	t := new(big.Int).Mul(big.NewInt(m.Units), big.NewInt(nanosPerUnit))
	return t.Add(t, big.NewInt(int64(m.Nanos)))
}

// fromNanos builds a normalized Money from an amount in nanos: truncated
// division gives units and a remainder of the same sign, so units and nanos
// never disagree in sign.
func fromNanos(currency string, total *big.Int) (Money, error) {
	units, nanos := new(big.Int).QuoRem(total, big.NewInt(nanosPerUnit), new(big.Int))
	if !units.IsInt64() {
		return Money{}, fmt.Errorf("%w: %s nanos of %s", ErrMoneyOverflow, total, currency)
	}
	return Money{CurrencyCode: currency, Units: units.Int64(), Nanos: int32(nanos.Int64())}, nil
}

// isCurrencyCode reports whether s is three ASCII upper-case letters.
func isCurrencyCode(s string) bool {
	if len(s) != 3 {
		return false
	}
	for i := range len(s) {
		if s[i] < 'A' || s[i] > 'Z' {
			return false
		}
	}
	return true
}
