package eventbus

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
)

// Connection management is owned here rather than delegated to
// amqp091-go's experimental Config.Recovery: each Publisher and Subscriber
// runs one supervised connection and, after any connection or channel
// loss, dials a new one, re-declares its topology, re-opens its channels
// and re-subscribes its consumer. Unconfirmed publishes are failed, never
// re-sent; the caller (the outbox relay) retries them.

// ErrLinkDown is returned by Publish while the publisher has no usable
// connection to the broker.
var ErrLinkDown = errors.New("eventbus link down")

// LinkState is the health of a connection to the broker.
type LinkState struct {
	// Up is true while the connection and its channels are usable: the
	// topology is declared and, for a Subscriber, the consumer subscribed.
	Up bool
	// Reason says why the link is down, or is empty.
	Reason string
	// Since is when Up last changed.
	Since time.Time
}

// stateCell holds a LinkState and wakes watchers on every change.
type stateCell struct {
	mu      sync.Mutex
	st      LinkState
	changed chan struct{}
}

func newStateCell(reason string) *stateCell {
	return &stateCell{
		st:      LinkState{Reason: reason, Since: time.Now()},
		changed: make(chan struct{}),
	}
}

func (c *stateCell) set(up bool, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.st.Up == up && c.st.Reason == reason {
		return
	}
	if c.st.Up != up {
		c.st.Since = time.Now()
	}
	c.st.Up, c.st.Reason = up, reason
	close(c.changed)
	c.changed = make(chan struct{})
}

func (c *stateCell) get() LinkState {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

func (c *stateCell) watch() (LinkState, <-chan struct{}) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st, c.changed
}

// dial opens one connection named after cfg and role, bounded by
// cfg.DialTimeout.
func dial(cfg Config, role string) (*amqp.Connection, error) {
	return dialWith(cfg, role, amqp.DefaultDial(cfg.DialTimeout))
}

// dialBatching is dial with the connection's writes going through a
// batchConn, which it returns too; over TLS (amqps) it is dial, and the
// batchConn is nil.
func dialBatching(cfg Config, role string) (*amqp.Connection, *batchConn, error) {
	if u, err := amqp.ParseURI(cfg.URL); err != nil || u.Scheme != "amqp" {
		conn, err := dial(cfg, role)
		return conn, nil, err
	}
	var bc *batchConn
	tcp := amqp.DefaultDial(cfg.DialTimeout)
	conn, err := dialWith(cfg, role, func(network, addr string) (net.Conn, error) {
		c, err := tcp(network, addr)
		if err != nil {
			return nil, err
		}
		bc = &batchConn{Conn: c}
		return bc, nil
	})
	if err != nil {
		return nil, nil, err
	}
	return conn, bc, nil
}

func dialWith(cfg Config, role string, d func(network, addr string) (net.Conn, error)) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	props.SetClientConnectionName(cfg.connectionName(role))
	conn, err := amqp.DialConfig(cfg.URL, amqp.Config{
		Heartbeat:  cfg.Heartbeat,
		Locale:     "en_US",
		Properties: props,
		Dial:       d,
	})
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	return conn, nil
}

// closeConn closes conn, waiting at most timeout for the broker's answer.
func closeConn(conn *amqp.Connection, timeout time.Duration) {
	if conn == nil || conn.IsClosed() {
		return
	}
	_ = conn.CloseDeadline(time.Now().Add(timeout))
}

// call runs fn, a synchronous call on a channel of conn, bounded by ctx
// and timeout. amqp091-go calls take no context, so when the bound
// expires first call closes conn, which makes fn return; no goroutine
// outlives call.
func call(ctx context.Context, conn *amqp.Connection, timeout time.Duration, what string, fn func() error) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- fn() }()
	select {
	case err := <-done:
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		closeConn(conn, time.Second)
		<-done
		return fmt.Errorf("%s: %w", what, ctx.Err())
	}
}

// backoff is a capped exponential delay with jitter.
type backoff struct {
	min, max, cur time.Duration
}

func (b *backoff) reset() { b.cur = 0 }

// wait sleeps for the next delay or until ctx ends; it reports whether
// ctx is still live.
func (b *backoff) wait(ctx context.Context) bool {
	if b.cur == 0 {
		b.cur = b.min
	} else {
		b.cur = min(b.cur*2, b.max)
	}
	return ctxsleep.Sleep(ctx, b.cur/2+rand.N(b.cur/2+1))
}

// amqpReason describes why a connection or channel closed.
func amqpReason(what string, err *amqp.Error) string {
	if err == nil {
		return what + " closed"
	}
	return fmt.Sprintf("%s closed: %d %s", what, err.Code, err.Reason)
}
