package app

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/services/payment/internal/provider"
)

func TestProviderError(t *testing.T) {
	tests := []struct {
		err           error
		wantPermanent bool
	}{
		{provider.ErrUnavailable, false},
		{context.DeadlineExceeded, false},
		{errors.New("connection reset by peer"), false},
		{provider.ErrInvalidRequest, true},
		{provider.ErrIdempotencyConflict, true},
		{provider.ErrDeclined, true},
	}
	for _, tt := range tests {
		t.Run(tt.err.Error(), func(t *testing.T) {
			err := providerError(fmt.Errorf("charge order x: %w", tt.err))
			if got := eventbus.IsPermanent(err); got != tt.wantPermanent {
				t.Errorf("IsPermanent = %v, want %v", got, tt.wantPermanent)
			}
			if !errors.Is(err, tt.err) {
				t.Errorf("error %v no longer matches %v", err, tt.err)
			}
		})
	}
}

func TestDeclineReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"from the sentinel on", fmt.Errorf("charge order-1: %w: card declined", provider.ErrDeclined), "payment declined: card declined"},
		{"sentinel alone", provider.ErrDeclined, "payment declined"},
		{"cut to the limit", fmt.Errorf("%w: %s", provider.ErrDeclined, "x"+strings.Repeat("é", 400)), ""},
		// A provider's text that is not UTF-8 could not be encoded into
		// PaymentFailed (a proto string): each bad byte becomes U+FFFD.
		{"invalid utf-8", fmt.Errorf("%w: carte refus\xe9e \xff", provider.ErrDeclined), "payment declined: carte refus\ufffde \ufffd"},
		// Nor can PostgreSQL store a NUL in text: it would fail the
		// payment's row and the order's.
		{"NUL", fmt.Errorf("%w: no\x00funds", provider.ErrDeclined), "payment declined: no\ufffdfunds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := declineReason(tt.err)
			if len(got) > MaxReasonLen || !utf8.ValidString(got) || !strings.HasPrefix(got, provider.ErrDeclined.Error()) {
				t.Fatalf("declineReason = %q (%d bytes), want at most %d bytes starting with the sentinel", got, len(got), MaxReasonLen)
			}
			if tt.want != "" && got != tt.want {
				t.Errorf("declineReason = %q, want %q", got, tt.want)
			}
		})
	}
}
