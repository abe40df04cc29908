package app

import (
	"errors"
	"fmt"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

// ErrUnavailable is returned when the database cannot be reached, the
// connection broke, or the transaction lost a conflict or ran short of
// resources: the same request may succeed later. A CreateOrder that got it
// may be retried with the same request_id: it takes effect at most once.
var ErrUnavailable = errors.New("order store unavailable; retry later")

// unavailable marks errors that mean the request may succeed later (see
// postgres.Transient: an outage, a deadlock or serialization failure, a
// server short of resources) with ErrUnavailable; other errors pass
// unchanged.
func unavailable(err error) error {
	if !postgres.Transient(err) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}
