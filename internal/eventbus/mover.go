package eventbus

import (
	"context"
	"errors"
	"sync"
	"time"
)

// errStopping fails a copy a mover gave up on because its subscriber is
// stopping.
var errStopping = errors.New("subscriber stopping")

// mover writes a subscriber session's retry and dead-letter copies on the
// session's republish channel, and waits out the broker's alarms.
//
// In a memory or disk alarm the broker stops reading from connections that
// publish (connection.blocked). A copy written then sits unread, its
// confirm does not come, and giving up on it after ConfirmTimeout would
// requeue the delivery: handled again, failing again, it would add a copy
// in the socket each round, and a delivery count each time, until the
// quorum queue's delivery limit dead-lettered it, and the copies after it
// once the alarm cleared. So while the broker blocks the connection, a
// mover writes nothing, and the time a copy waits for its confirm counts
// only while the connection is not blocked. The deliveries stay
// unacknowledged meanwhile; the consume connection publishes nothing, so
// the other deliveries' acks still go out.
type mover struct {
	cc       *confirmChannel
	timeout  time.Duration   // ConfirmTimeout
	stopping <-chan struct{} // closed when the session stops taking deliveries

	mu sync.Mutex
	// open is closed while the broker takes the connection's publishes,
	// and replaced by an open channel while it blocks them.
	open chan struct{}
}

func newMover(cc *confirmChannel, timeout time.Duration, stopping <-chan struct{}) *mover {
	open := make(chan struct{})
	close(open)
	return &mover{cc: cc, timeout: timeout, stopping: stopping, open: open}
}

// setBlocked records the broker's connection.blocked (true) or
// connection.unblocked (false).
func (m *mover) setBlocked(blocked bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	select {
	case <-m.open: // not blocked
		if blocked {
			m.open = make(chan struct{})
		}
	default:
		if !blocked {
			close(m.open)
		}
	}
}

// unblocked returns a channel closed while the broker takes publishes.
func (m *mover) unblocked() <-chan struct{} {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open
}

// publish writes msgs once the broker takes publishes and waits for their
// confirms, for up to the mover's timeout of time the connection was not
// blocked. It gives up when ctx ends, or when the session stops while the
// broker blocks the connection.
func (m *mover) publish(ctx context.Context, msgs []outgoing) error {
	select {
	case <-m.unblocked():
	default:
		// Blocked. (Checked first: a stop gives up only on a copy the
		// alarm holds.)
		select {
		case <-m.unblocked():
		case <-m.stopping:
			return errStopping
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	done := make(chan struct{})
	defer close(done)
	go m.watch(done, cancel)
	err := m.cc.publish(ctx, msgs)
	if cause := context.Cause(ctx); err != nil && cause != nil && !errors.Is(err, cause) {
		err = errors.Join(err, cause)
	}
	return err
}

// watch cancels a copy's wait for its confirm, with the reason as cause,
// once it has waited the mover's timeout while the connection was not
// blocked, or the session stops while it is blocked (a stop does not give
// up on a confirm that is coming); it returns when done is closed.
func (m *mover) watch(done <-chan struct{}, cancel context.CancelCauseFunc) {
	t := time.NewTimer(m.timeout)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		select {
		case <-m.unblocked():
			cancel(ErrNotConfirmed)
			return
		default:
		}
		// Blocked: the copy waits unread; the time counts again once
		// the broker reads it.
		select {
		case <-done:
			return
		case <-m.stopping:
			cancel(errStopping)
			return
		case <-m.unblocked():
			t.Reset(m.timeout)
		}
	}
}
