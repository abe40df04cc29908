package app_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/services/order/internal/app"
)

// TestUnavailableMarksWhatMaySucceedLater: an outage, a lost deadlock or
// serialization conflict, and a server short of resources are
// ErrUnavailable (UNAVAILABLE: retry with the same request id); a value
// the database refuses and the caller's own cancellation are not.
func TestUnavailableMarksWhatMaySucceedLater(t *testing.T) {
	pg := func(code string) error { return fmt.Errorf("insert 2 orders: %w", &pgconn.PgError{Code: code}) }
	for _, tt := range []struct {
		name string
		err  error
		want bool
	}{
		{"deadlock", pg("40P01"), true},
		{"serialization failure", pg("40001"), true},
		{"out of memory", pg("53200"), true},
		{"connection cut", fmt.Errorf("insert: %w", io.ErrUnexpectedEOF), true},
		{"server shutting down", pg("57P01"), true},
		{"value refused", pg("22021"), false},
		{"caller cancelled", context.Canceled, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := errors.Is(app.Unavailable(tt.err), app.ErrUnavailable); got != tt.want {
				t.Errorf("unavailable(%v) is ErrUnavailable: %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
