package eventbus

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrUnroutable is returned for a mandatory message no queue was bound to
// receive (basic.return).
var ErrUnroutable = errors.New("message unroutable")

// ErrNacked is returned for a message the broker refused (basic.nack).
var ErrNacked = errors.New("message nacked by broker")

// ErrNotConfirmed is returned for a message whose channel closed before
// the broker confirmed it; the broker may or may not have it.
var ErrNotConfirmed = errors.New("message not confirmed: channel closed")

// confirmChannel is one channel in confirm mode with pipelined confirms:
// any number of publishes are in flight, each caller waits for its own
// confirms. Mandatory returns are matched to confirms: the broker sends a
// basic.return before the basic.ack of the same message, and amqp091-go
// queues notifications in that order, so draining returns before handling
// each confirm attributes every return to its publish.
type confirmChannel struct {
	ch      *amqp.Channel
	conn    *batchConn // nil: each publish is written at once
	metrics Metrics

	// sendSem (capacity 1) serialises tag assignment with the write of
	// the publish; a channel rather than a mutex so waiters honour ctx
	// while another caller's write is stalled by broker flow control.
	sendSem chan struct{}

	mu       sync.Mutex
	pending  map[uint64]*pendingPublish
	returned map[string][]amqp.Return // by message id
	closed   bool

	confirms chan amqp.Confirmation
	returns  chan amqp.Return
	done     chan struct{}
	blocked  atomic.Pointer[string]
}

type pendingPublish struct {
	b   *publishBatch
	idx int
	id  string
	// exchange and key are where the message went: of two messages with
	// one id in flight (an event published again by the outbox, copies
	// for two deliveries), a return goes to the one sent where it was.
	exchange, key string
	labels        Labels
	// dc is the library's record of the message's confirm: the broker's
	// answer for this very message (see confirm). It is set once the
	// publish returned, and then sent is done.
	dc   *amqp.DeferredConfirmation
	sent sync.WaitGroup
}

// publishBatch collects the outcome of one Publish call.
type publishBatch struct {
	mu        sync.Mutex
	remaining int
	err       error
	confirmed []bool
	refused   []bool
	done      chan struct{}
}

func newPublishBatch(n int) *publishBatch {
	return &publishBatch{remaining: n, confirmed: make([]bool, n), refused: make([]bool, n), done: make(chan struct{})}
}

// resolve records message idx's outcome: confirmed when err is nil,
// refused when err is ErrNacked or ErrUnroutable, unanswered otherwise.
func (b *publishBatch) resolve(idx int, err error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err != nil && b.err == nil {
		b.err = err
	}
	switch {
	case err == nil:
		b.confirmed[idx] = true
	case errors.Is(err, ErrNacked) || errors.Is(err, ErrUnroutable):
		b.refused[idx] = true
	}
	b.countDown()
}

// release gives up on a message that was never sent.
func (b *publishBatch) release() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.countDown()
}

func (b *publishBatch) countDown() {
	b.remaining--
	if b.remaining == 0 {
		close(b.done)
	}
}

// fail returns err, or the batch's own error when err is nil, as a
// PublishError telling which messages the broker confirmed or refused so
// far.
func (b *publishBatch) fail(err error) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err == nil {
		err = b.err
	}
	if err == nil {
		return nil
	}
	return &PublishError{Err: err, Confirmed: slices.Clone(b.confirmed), Refused: slices.Clone(b.refused)}
}

// PublishError is returned by Publish when not every message was
// confirmed. For each message i of the call, Confirmed[i] tells whether
// the broker confirmed it and Refused[i] whether the broker answered no
// (a nack, or a return of a mandatory message no queue receives); a
// message that is neither went unanswered (the link failed, the wait for
// confirms ended) and may or may not have reached the broker. A caller
// can so settle the confirmed ones, hold back the refused ones and retry
// the unanswered ones at once. Err says why the call failed: the first
// message's failure, or the wait for confirms ending.
type PublishError struct {
	Err       error
	Confirmed []bool
	Refused   []bool
}

func (e *PublishError) Error() string { return e.Err.Error() }
func (e *PublishError) Unwrap() error { return e.Err }

// newConfirmChannel puts ch in confirm mode and starts its confirm loop;
// the loop ends when ch closes, and wait joins it. bc, when not nil, is
// the socket under conn, through which send writes each batch at once.
func newConfirmChannel(ctx context.Context, conn *amqp.Connection, bc *batchConn, ch *amqp.Channel, timeout time.Duration, m Metrics) (*confirmChannel, error) {
	if err := call(ctx, conn, timeout, "enable confirms", func() error { return ch.Confirm(false) }); err != nil {
		return nil, err
	}
	c := &confirmChannel{
		ch:       ch,
		conn:     bc,
		metrics:  m,
		pending:  make(map[uint64]*pendingPublish),
		returned: make(map[string][]amqp.Return),
		confirms: ch.NotifyPublish(make(chan amqp.Confirmation, 4096)),
		returns:  ch.NotifyReturn(make(chan amqp.Return, 256)),
		done:     make(chan struct{}),
		sendSem:  make(chan struct{}, 1),
	}
	go c.loop()
	return c, nil
}

// wait blocks until the confirm loop ended, which follows the channel's
// close.
func (c *confirmChannel) wait() { <-c.done }

func (c *confirmChannel) loop() {
	defer close(c.done)
	returns := c.returns
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				returns = nil
				continue
			}
			c.recordReturn(r)
		case conf, ok := <-c.confirms:
			if !ok {
				c.failAll()
				return
			}
			for drained := false; !drained && returns != nil; {
				select {
				case r, ok := <-returns:
					if !ok {
						returns = nil
						continue
					}
					c.recordReturn(r)
				default:
					drained = true
				}
			}
			c.confirm(conf)
		}
	}
}

func (c *confirmChannel) recordReturn(r amqp.Return) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.returned[r.MessageId] = append(c.returned[r.MessageId], r)
}

func (c *confirmChannel) confirm(conf amqp.Confirmation) {
	c.mu.Lock()
	p, ok := c.pending[conf.DeliveryTag]
	if !ok {
		c.mu.Unlock()
		return
	}
	delete(c.pending, conf.DeliveryTag)
	var ret *amqp.Return
	rs := c.returned[p.id]
	if i := slices.IndexFunc(rs, func(r amqp.Return) bool { return r.Exchange == p.exchange && r.RoutingKey == p.key }); i >= 0 {
		r := rs[i]
		ret = &r
		if len(rs) == 1 {
			delete(c.returned, p.id)
		} else {
			c.returned[p.id] = slices.Delete(rs, i, i+1)
		}
	}
	c.mu.Unlock()
	// NotifyPublish reports an ack or nack with multiple set for every
	// tag up to its own, even one the broker answered otherwise before
	// (a nack held back until the tags before it were confirmed, then
	// covered by a multiple ack for the messages still unconfirmed): a
	// refused message would read as confirmed, and be dropped. The
	// library's deferred confirmation of the message itself, settled
	// before the notification is sent, has the broker's answer for it.
	//
	// A confirm covers only messages the broker has read whole, so the
	// publish of this one is returning if it has not yet.
	p.sent.Wait()
	ack := conf.Ack
	if p.dc != nil {
		select {
		case <-p.dc.Done():
			ack = p.dc.Acked()
		default:
		}
	}
	c.metrics.Confirmed(p.labels, ack)
	switch {
	case !ack:
		p.b.resolve(p.idx, fmt.Errorf("publish %s %s: %w", p.labels.RoutingKey, p.id, ErrNacked))
	case ret != nil:
		c.metrics.Returned(p.labels)
		p.b.resolve(p.idx, fmt.Errorf("publish %s %s: %w: %d %s", ret.RoutingKey, p.id, ErrUnroutable, ret.ReplyCode, ret.ReplyText))
	default:
		p.b.resolve(p.idx, nil)
	}
}

func (c *confirmChannel) failAll() {
	c.mu.Lock()
	pending := c.pending
	c.pending = make(map[uint64]*pendingPublish)
	c.returned = make(map[string][]amqp.Return)
	c.closed = true
	c.mu.Unlock()
	for _, p := range pending {
		p.b.resolve(p.idx, fmt.Errorf("publish %s %s: %w", p.labels.RoutingKey, p.id, ErrNotConfirmed))
	}
}

// outgoing is one message to write.
type outgoing struct {
	exchange, key string
	msg           amqp.Publishing
	labels        Labels
}

// send writes msgs in order, each mandatory, and registers them with b.
// It returns the first write error; messages before it stay registered
// and resolve normally. With a batchConn the messages go to the socket
// together once all of them are written (in pieces of batchConnMax for a
// larger batch).
func (c *confirmChannel) send(ctx context.Context, b *publishBatch, msgs []outgoing) error {
	if reason := c.blocked.Load(); reason != nil {
		return fmt.Errorf("publish: broker blocked publishing (%s): %w", *reason, ErrLinkDown)
	}
	select {
	case c.sendSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("publish: wait for channel: %w", ctx.Err())
	}
	defer func() { <-c.sendSem }()
	if c.conn != nil {
		c.conn.hold()
	}
	err := c.write(ctx, b, msgs)
	if c.conn != nil {
		if rerr := c.conn.release(); rerr != nil {
			// The connection is closed: what was held never left, and
			// the channel's close fails the messages registered.
			return fmt.Errorf("publish: write to broker: %w", rerr)
		}
	}
	return err
}

// write hands msgs to the channel one by one; on failure it releases b's
// waiters of the messages it did not write.
func (c *confirmChannel) write(ctx context.Context, b *publishBatch, msgs []outgoing) error {
	for i, o := range msgs {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("publish %s: %w", o.key, err)
		}
		tag := c.ch.GetNextPublishSeqNo()
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return fmt.Errorf("publish %s: %w", o.key, ErrLinkDown)
		}
		p := &pendingPublish{b: b, idx: i, id: o.msg.MessageId, exchange: o.exchange, key: o.key, labels: o.labels}
		p.sent.Add(1)
		c.pending[tag] = p
		c.mu.Unlock()
		dc, err := c.ch.PublishWithDeferredConfirm(o.exchange, o.key, true, false, o.msg)
		p.dc = dc
		p.sent.Done()
		if err != nil {
			c.mu.Lock()
			delete(c.pending, tag)
			c.mu.Unlock()
			// Messages i.. will never resolve; release their waiters.
			for range len(msgs) - i {
				b.release()
			}
			return fmt.Errorf("publish %s: %w", o.key, err)
		}
		c.metrics.Published(o.labels)
	}
	return nil
}

// publish writes msgs and waits until the broker confirmed all of them,
// ctx ended, or the channel closed.
func (c *confirmChannel) publish(ctx context.Context, msgs []outgoing) error {
	if len(msgs) == 0 {
		return nil
	}
	b := newPublishBatch(len(msgs))
	if err := c.send(ctx, b, msgs); err != nil {
		return b.fail(err)
	}
	select {
	case <-b.done:
		return b.fail(nil)
	case <-ctx.Done():
		return b.fail(fmt.Errorf("wait for confirms: %w", ctx.Err()))
	}
}
