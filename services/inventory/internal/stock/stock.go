// Package stock holds the inventory rules: how an order's lines become one
// quantity per product, when an order can be reserved (all lines or none),
// how a shortage is explained, and the life of an order's reservation —
// which order events move it where, and what each move does to the stock
// levels.
//
// The package is pure: it imports no gRPC, SQL, AMQP or generated code, does
// no I/O and keeps no state of its own. Adapters convert at the boundary and
// map the sentinel errors to API codes.
package stock

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

var (
	// ErrNotFound is returned (by stores) for a product that was never
	// stocked.
	ErrNotFound = errors.New("product not found")
	// ErrInvalid is returned for a product id, quantity or stock level that
	// breaks an invariant; the wrapping error says which.
	ErrInvalid = errors.New("invalid stock request")
	// ErrNoReservation is returned when an order is confirmed that this
	// service holds no reservation for. The saga confirms an order only
	// after its stock was reserved, so this means the two services'
	// records disagree.
	ErrNoReservation = errors.New("no reservation for order")
	// ErrLevelChanged is returned when a stock level is set on the
	// condition that it is still the one read, and it is not.
	ErrLevelChanged = errors.New("stock level changed since it was read")
)

// Limits of the values the service accepts.
const (
	// MaxProductIDLen is the longest product id, in bytes.
	MaxProductIDLen = 64
	// MaxAvailable is the largest stock level SetStock accepts.
	MaxAvailable = 1_000_000_000
	// MaxQuantity is the most units of one product an order may ask for,
	// its lines summed (the events' StockLine allows no more).
	MaxQuantity = 1_000_000
	// MaxReasonLen is the longest reason a reservation failure gives.
	MaxReasonLen = 512
)

// Level is the stock of one product.
type Level struct {
	ProductID string
	// Available is how many units can be reserved; never negative.
	Available int64
	// Reserved is how many units are held for orders that are not yet
	// confirmed; never negative.
	Reserved int64
}

// Line is a quantity of one product.
type Line struct {
	ProductID string
	// Quantity is at least 1.
	Quantity int64
}

// Shortage names a product an order wanted more of than was available.
type Shortage struct {
	ProductID string
	Requested int64
	Available int64
}

// ValidateProductID returns an error wrapping ErrInvalid unless id is 1 to
// MaxProductIDLen characters of A-Z, a-z, 0-9, '.', '_' and '-'.
func ValidateProductID(id string) error {
	if id == "" || len(id) > MaxProductIDLen {
		return fmt.Errorf("%w: product id must be 1 to %d characters, got %d", ErrInvalid, MaxProductIDLen, len(id))
	}
	for i := range len(id) {
		c := id[i]
		ok := c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-'
		if !ok {
			return fmt.Errorf("%w: product id %q may contain only letters, digits, '.', '_' and '-'", ErrInvalid, id)
		}
	}
	return nil
}

// ValidateAvailable returns an error wrapping ErrInvalid unless n is a
// stock level SetStock accepts (0 to MaxAvailable).
func ValidateAvailable(n int64) error {
	if n < 0 || n > MaxAvailable {
		return fmt.Errorf("%w: available must be 0 to %d, got %d", ErrInvalid, MaxAvailable, n)
	}
	return nil
}

// Merge returns lines with the quantities of each product summed, one
// line per product, ordered by product id. Stores lock stock rows in that
// order, so concurrent reservations of overlapping products cannot
// deadlock. It returns an error wrapping ErrInvalid when lines is empty, a
// product id is invalid, a quantity is not positive or a product's total
// exceeds MaxQuantity.
func Merge(lines []Line) ([]Line, error) {
	if len(lines) == 0 {
		return nil, fmt.Errorf("%w: no lines", ErrInvalid)
	}
	sums := make(map[string]int64, len(lines))
	for _, l := range lines {
		if err := ValidateProductID(l.ProductID); err != nil {
			return nil, err
		}
		if l.Quantity <= 0 {
			return nil, fmt.Errorf("%w: quantity of %s must be positive, got %d", ErrInvalid, l.ProductID, l.Quantity)
		}
		if sums[l.ProductID] > MaxQuantity-l.Quantity {
			return nil, fmt.Errorf("%w: order asks for more than %d units of %s", ErrInvalid, MaxQuantity, l.ProductID)
		}
		sums[l.ProductID] += l.Quantity
	}
	out := make([]Line, 0, len(sums))
	for id, q := range sums {
		out = append(out, Line{ProductID: id, Quantity: q})
	}
	SortLines(out)
	return out, nil
}

// SortLines orders lines by product id, in place.
func SortLines(lines []Line) {
	slices.SortFunc(lines, func(a, b Line) int { return cmp.Compare(a.ProductID, b.ProductID) })
}

// ProductIDs returns the product ids of lines, in the lines' order.
func ProductIDs(lines []Line) []string {
	ids := make([]string, len(lines))
	for i, l := range lines {
		ids[i] = l.ProductID
	}
	return ids
}

// Shortages returns, in the order of lines, every line whose quantity
// exceeds the product's available units. available maps product ids to
// their available units; a product missing from it has none. An empty
// result means the whole order can be reserved. lines should be merged
// (see Merge), so that each product is judged on its total.
func Shortages(lines []Line, available map[string]int64) []Shortage {
	var out []Shortage
	for _, l := range lines {
		if have := available[l.ProductID]; l.Quantity > have {
			out = append(out, Shortage{ProductID: l.ProductID, Requested: l.Quantity, Available: have})
		}
	}
	return out
}

// Reason explains shortages in one line for people, e.g.
// "out of stock: SKU-1 (wanted 3, have 1), SKU-2 (wanted 1, have 0)". It is
// at most MaxReasonLen bytes: when every shortage does not fit, the ones
// that do are followed by "and N more".
func Reason(shortages []Shortage) string {
	const prefix = "out of stock: "
	if len(shortages) == 0 {
		return "out of stock"
	}
	var b strings.Builder
	b.WriteString(prefix)
	for i, s := range shortages {
		sep := ""
		if i > 0 {
			sep = ", "
		}
		part := fmt.Sprintf("%s (wanted %d, have %d)", s.ProductID, s.Requested, s.Available)
		tail := ""
		if more := len(shortages) - i - 1; more > 0 {
			tail = fmt.Sprintf(", and %d more", more)
		}
		// Writing part must leave room for the tail that may follow it,
		// so stopping later always fits.
		if b.Len()+len(sep)+len(part)+len(tail) > MaxReasonLen {
			if i == 0 {
				fmt.Fprintf(&b, "%d products", len(shortages))
			} else {
				fmt.Fprintf(&b, ", and %d more", len(shortages)-i)
			}
			return b.String()
		}
		b.WriteString(sep)
		b.WriteString(part)
	}
	return b.String()
}
