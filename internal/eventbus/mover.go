package eventbus

import (
	"context"
	"errors"
	"sync"
	"time"
)

// errStopping fails a copy a mover gave up on because its subscriber is
// stopping, and errConfirmTimeout one whose confirm did not come within
// the confirm timeout.
var (
	errStopping       = errors.New("subscriber stopping")
	errConfirmTimeout = errors.New("no confirm within the confirm timeout")
)

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
	// shut while it blocks them; the other is a channel not yet closed.
	open, shut chan struct{}

	// missing receives the name of a queue of the subscriber's own that a
	// copy found gone (the broker returned it unroutable): deleted while
	// the session ran. The session ends on it, and the next one declares
	// the topology again; until then every failing delivery would be
	// requeued and handled again at once.
	missing chan string
}

func newMover(cc *confirmChannel, timeout time.Duration, stopping <-chan struct{}) *mover {
	open := make(chan struct{})
	close(open)
	return &mover{cc: cc, timeout: timeout, stopping: stopping, open: open, shut: make(chan struct{}), missing: make(chan string, 1)}
}

// queueMissing reports queue gone; a report already waiting is enough.
func (m *mover) queueMissing(queue string) {
	select {
	case m.missing <- queue:
	default:
	}
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
			close(m.shut)
		}
	default:
		if !blocked {
			m.shut = make(chan struct{})
			close(m.open)
		}
	}
}

// state returns a channel closed while the broker takes publishes, and one
// closed while it blocks them: one of them is closed.
func (m *mover) state() (open, shut <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open, m.shut
}

// publish writes msgs once the broker takes publishes and waits for their
// confirms, for up to the mover's timeout of time the connection was not
// blocked. It gives up when ctx ends, or when the session stops while the
// broker blocks the connection.
func (m *mover) publish(ctx context.Context, msgs []outgoing) error {
	open, _ := m.state()
	select {
	case <-open:
	default:
		// Blocked. (Checked first: a stop gives up only on a copy the
		// alarm holds.)
		select {
		case <-open:
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
// once it has waited the mover's timeout in all while the connection was
// not blocked, or the session stops while it is blocked (a stop does not
// give up on a confirm that is coming); it returns when done is closed.
func (m *mover) watch(done <-chan struct{}, cancel context.CancelCauseFunc) {
	left := m.timeout
	for {
		open, shut := m.state()
		select {
		case <-open:
		default:
			// Blocked: the copy waits unread, and its time with it.
			select {
			case <-done:
				return
			case <-m.stopping:
				cancel(errStopping)
				return
			case <-open:
				continue
			}
		}
		start := time.Now()
		t := time.NewTimer(left)
		select {
		case <-done:
			t.Stop()
			return
		case <-t.C:
			cancel(errConfirmTimeout)
			return
		case <-shut:
			t.Stop()
			left -= time.Since(start)
		}
	}
}
