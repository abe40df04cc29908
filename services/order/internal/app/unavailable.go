package app

import (
	"errors"
	"fmt"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

// ErrUnavailable is returned when the database cannot be reached or the
// connection broke. A CreateOrder that got it may be retried with the same
// request_id: it takes effect at most once.
var ErrUnavailable = errors.New("order store unavailable; retry later")

// unavailable marks errors that mean the database could not be reached (or
// the connection broke; see postgres.Unreachable) with ErrUnavailable;
// other errors pass unchanged.
func unavailable(err error) error {
	if !postgres.Unreachable(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}
