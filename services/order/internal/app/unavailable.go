package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"

	"github.com/jackc/pgx/v5/pgconn"
)

// ErrUnavailable is returned when the database cannot be reached or the
// connection broke. A CreateOrder that got it may be retried with the same
// request_id: it takes effect at most once.
var ErrUnavailable = errors.New("order store unavailable; retry later")

// unavailable marks errors that mean the database could not be reached (or
// the connection broke) with ErrUnavailable; other errors pass unchanged.
func unavailable(err error) error {
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	var connErr *pgconn.ConnectError
	var netErr net.Error
	// A connection that breaks mid-conversation surfaces as an unexpected
	// EOF from the driver.
	if errors.As(err, &connErr) || errors.As(err, &netErr) || pgconn.SafeToRetry(err) || pgconn.Timeout(err) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
