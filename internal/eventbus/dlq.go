package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

// ErrNotFound is returned by DLQ.Replay and DLQ.Discard for an id that is
// not in the dead-letter queue.
var ErrNotFound = errors.New("message not in dead-letter queue")

// DeadLetter is a message parked in a service's dead-letter queue.
type DeadLetter struct {
	Message
	// Reason is one of the Reason constants.
	Reason string
	// Error is the error text that sent the message here, if any.
	Error string
	// Attempts is the number of handler attempts made. For a message
	// the broker dead-lettered (ReasonDeliveryLimit) it is the number of
	// deliveries that takes: one more than the queue's delivery limit
	// (Config.DeliveryLimit).
	Attempts int
	// DeadLetteredAt is when the message was parked, if known.
	DeadLetteredAt time.Time
	// Headers holds every AMQP header of the message.
	Headers map[string]any
}

// DLQ inspects and drains one service's dead-letter queue
// "<prefix><service>.dlq". Each operation opens its own short-lived
// connection, bounded by Config.CallTimeout per broker call, so admin work
// never disturbs the service's publisher or consumer. It is safe for
// concurrent use, though concurrent operations on one queue see each
// other's messages as temporarily missing.
type DLQ struct {
	cfg Config
	log *slog.Logger
}

// NewDLQ validates cfg.
func NewDLQ(cfg Config, log *slog.Logger) (*DLQ, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	return &DLQ{cfg: cfg, log: log.With("component", "eventbus.dlq", "queue", cfg.DLQName())}, nil
}

// dlqSession is one admin connection with one channel.
type dlqSession struct {
	cfg  Config
	conn *amqp.Connection
	ch   *amqp.Channel
	// held are the deliveries fetched and not yet settled.
	held []amqp.Delivery
	// cc publishes the replays, once prepareReplay ran.
	cc *confirmChannel
}

func (q *DLQ) open(ctx context.Context) (*dlqSession, error) {
	conn, err := dial(q.cfg, "dlq")
	if err != nil {
		return nil, err
	}
	s := &dlqSession{cfg: q.cfg, conn: conn}
	if err := call(ctx, conn, q.cfg.CallTimeout, "open channel", func() (err error) {
		s.ch, err = conn.Channel()
		return err
	}); err != nil {
		closeConn(conn, q.cfg.CallTimeout)
		return nil, err
	}
	return s, nil
}

// close requeues every held message and closes the connection; closing
// alone would requeue them too, this makes it explicit and prompt.
func (s *dlqSession) close() {
	if len(s.held) > 0 {
		_ = s.ch.Nack(s.held[len(s.held)-1].DeliveryTag, true, true)
	}
	closeConn(s.conn, s.cfg.CallTimeout)
	if s.cc != nil {
		s.cc.wait()
	}
}

func (s *dlqSession) count(ctx context.Context, queue string) (int, error) {
	var n int
	err := call(ctx, s.conn, s.cfg.CallTimeout, "inspect "+queue, func() error {
		q, err := s.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		n = q.Messages
		return err
	})
	return n, err
}

// get fetches the next message without acking it.
func (s *dlqSession) get(ctx context.Context) (amqp.Delivery, bool, error) {
	var (
		d  amqp.Delivery
		ok bool
	)
	err := call(ctx, s.conn, s.cfg.CallTimeout, "get from "+s.cfg.DLQName(), func() (err error) {
		d, ok, err = s.ch.Get(s.cfg.DLQName(), false)
		return err
	})
	if err == nil && ok {
		s.held = append(s.held, d)
	}
	return d, ok, err
}

// Len returns how many messages the dead-letter queue holds.
func (q *DLQ) Len(ctx context.Context) (int, error) {
	s, err := q.open(ctx)
	if err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	defer s.close()
	n, err := s.count(ctx, q.cfg.DLQName())
	if err != nil {
		return 0, fmt.Errorf("count dead letters: %w", err)
	}
	return n, nil
}

// List returns up to limit messages from the head of the dead-letter
// queue (all of them if limit <= 0) with their reasons, leaving them in
// the queue.
func (q *DLQ) List(ctx context.Context, limit int) ([]DeadLetter, error) {
	s, err := q.open(ctx)
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	defer s.close()
	n, err := s.count(ctx, q.cfg.DLQName())
	if err != nil {
		return nil, fmt.Errorf("list dead letters: %w", err)
	}
	if limit > 0 {
		n = min(n, limit)
	}
	var out []DeadLetter
	for range n {
		d, ok, err := s.get(ctx)
		if err != nil {
			return nil, fmt.Errorf("list dead letters: %w", err)
		}
		if !ok {
			break
		}
		out = append(out, deadLetterFromDelivery(d, q.cfg.DeliveryLimit))
	}
	return out, nil
}

// Replay moves the message with id back to the service queue, with its
// attempt count reset and its dead-letter headers removed. It returns
// ErrNotFound if no such message is parked.
func (q *DLQ) Replay(ctx context.Context, id string) error {
	n, err := q.move(ctx, func(d amqp.Delivery) bool { return d.MessageId == id }, true, true)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("replay %s: %w", id, err)
	}
	return nil
}

// ReplayAll moves every message parked when it starts back to the service
// queue and returns how many it moved.
func (q *DLQ) ReplayAll(ctx context.Context) (int, error) {
	n, err := q.move(ctx, func(amqp.Delivery) bool { return true }, true, false)
	if err != nil {
		return n, fmt.Errorf("replay dead letters: %w", err)
	}
	return n, nil
}

// Discard deletes the message with id from the dead-letter queue. It
// returns ErrNotFound if no such message is parked.
func (q *DLQ) Discard(ctx context.Context, id string) error {
	n, err := q.move(ctx, func(d amqp.Delivery) bool { return d.MessageId == id }, false, true)
	if err == nil && n == 0 {
		err = ErrNotFound
	}
	if err != nil {
		return fmt.Errorf("discard %s: %w", id, err)
	}
	return nil
}

// DiscardAll purges the dead-letter queue and returns how many messages it
// deleted.
func (q *DLQ) DiscardAll(ctx context.Context) (int, error) {
	s, err := q.open(ctx)
	if err != nil {
		return 0, fmt.Errorf("discard dead letters: %w", err)
	}
	defer s.close()
	var n int
	if err := call(ctx, s.conn, q.cfg.CallTimeout, "purge "+q.cfg.DLQName(), func() (err error) {
		n, err = s.ch.QueuePurge(q.cfg.DLQName(), false)
		return err
	}); err != nil {
		return 0, fmt.Errorf("discard dead letters: %w", err)
	}
	return n, nil
}

// move scans the messages parked when it starts; each one match accepts is
// replayed to the service queue (if replay) and then acked, the others are
// requeued. With one it stops after the first match. It returns the
// number of messages moved.
func (q *DLQ) move(ctx context.Context, match func(amqp.Delivery) bool, replay, one bool) (int, error) {
	s, err := q.open(ctx)
	if err != nil {
		return 0, err
	}
	defer s.close()
	if replay {
		if err := q.prepareReplay(ctx, s); err != nil {
			return 0, err
		}
	}
	n, err := s.count(ctx, q.cfg.DLQName())
	if err != nil {
		return 0, err
	}
	moved := 0
	for range n {
		d, ok, err := s.get(ctx)
		if err != nil {
			return moved, err
		}
		if !ok {
			break
		}
		if !match(d) {
			continue
		}
		if replay {
			if err := q.replayOne(ctx, s, d); err != nil {
				return moved, err
			}
		}
		// Acked out of order while the messages before it stay held.
		if err := d.Ack(false); err != nil {
			return moved, fmt.Errorf("ack %s: %w", d.MessageId, err)
		}
		s.held = s.held[:len(s.held)-1]
		if len(s.held) > 0 {
			// Requeue what was skipped so far now, so the last held tag
			// below stays a valid "multiple" bound.
			_ = s.ch.Nack(s.held[len(s.held)-1].DeliveryTag, true, true)
			s.held = s.held[:0]
		}
		moved++
		if one {
			break
		}
	}
	return moved, nil
}

// prepareReplay checks that the service queue exists (a replay to a
// missing queue fails anyway, but this says why before any message is
// touched) and puts s's channel in confirm mode for the replays.
func (q *DLQ) prepareReplay(ctx context.Context, s *dlqSession) error {
	if _, err := s.count(ctx, q.cfg.QueueName()); err != nil {
		return err
	}
	cc, err := newConfirmChannel(ctx, s.conn, nil, s.ch, q.cfg.CallTimeout, q.cfg.Metrics)
	if err != nil {
		return err
	}
	s.cc = cc
	return nil
}

// replayOne publishes a copy of d to the service queue and waits for the
// broker's confirm. The copy is mandatory: had the queue gone since
// prepareReplay, the broker would confirm it and drop it, and the dead
// letter, acked next, would be lost; its return fails the replay instead
// (ErrUnroutable).
func (q *DLQ) replayOne(ctx context.Context, s *dlqSession, d amqp.Delivery) error {
	h := make(amqp.Table, len(d.Headers))
	for k, v := range d.Headers {
		h[k] = v
	}
	if headerString(h, HeaderRoutingKey) == "" {
		if rk := deathRoutingKey(d.Headers); rk != "" {
			h[HeaderRoutingKey] = rk
		}
	}
	// The copy starts afresh: without our dead-letter headers, and
	// without the broker's record of its deaths (x-death and the
	// x-first-death-*/x-last-death-* headers), which would make its
	// next trip through a retry queue back to the service queue look
	// like a dead-letter cycle, which the broker drops the message for.
	for k := range h {
		if strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-") {
			delete(h, k)
		}
	}
	for _, k := range []string{HeaderReason, HeaderError, HeaderAttempt, HeaderOutageRetries, HeaderDeadLetteredAt, "x-delivery-count", "x-death"} {
		delete(h, k)
	}
	ctx, cancel := context.WithTimeout(ctx, q.cfg.ConfirmTimeout)
	defer cancel()
	labels := Labels{RoutingKey: headerString(h, HeaderRoutingKey), Type: d.Type}
	if err := s.cc.publish(ctx, []outgoing{{exchange: "", key: q.cfg.QueueName(), msg: copyOf(d, h), labels: labels}}); err != nil {
		return fmt.Errorf("replay %s to %s: %w", d.MessageId, q.cfg.QueueName(), err)
	}
	q.log.InfoContext(ctx, "replayed dead letter", "message_id", d.MessageId, "type", d.Type)
	return nil
}

func deadLetterFromDelivery(d amqp.Delivery, deliveryLimit int) DeadLetter {
	meta := metaFromDelivery(d)
	if headerString(d.Headers, HeaderRoutingKey) == "" {
		if rk := deathRoutingKey(d.Headers); rk != "" {
			meta.RoutingKey = rk
		}
	}
	dl := DeadLetter{
		Message: Message{Meta: meta, Body: d.Body},
		Reason:  headerString(d.Headers, HeaderReason),
		Error:   headerString(d.Headers, HeaderError),
		Headers: map[string]any(d.Headers),
	}
	dl.Attempts, _ = headerInt(d.Headers, HeaderAttempt)
	if t, ok := d.Headers[HeaderDeadLetteredAt].(time.Time); ok {
		dl.DeadLetteredAt = t
	}
	if dl.Reason == "" {
		// Dead-lettered by the broker (x-delivery-limit), not by us.
		if deaths, ok := d.Headers["x-death"].([]any); ok && len(deaths) > 0 {
			if death, ok := deaths[0].(amqp.Table); ok {
				dl.Reason = headerString(death, "reason")
				if t, ok := death["time"].(time.Time); ok {
					dl.DeadLetteredAt = t
				}
			}
		}
		// The broker keeps no delivery count on the message it
		// dead-letters; past the limit means one delivery more.
		if dl.Reason == ReasonDeliveryLimit {
			dl.Attempts = deliveryLimit + 1
		}
	}
	return dl
}

// deathRoutingKey is the original routing key from the broker's x-death
// header (the oldest death records the publish).
func deathRoutingKey(h amqp.Table) string {
	deaths, ok := h["x-death"].([]any)
	if !ok || len(deaths) == 0 {
		return ""
	}
	death, ok := deaths[len(deaths)-1].(amqp.Table)
	if !ok {
		return ""
	}
	keys, ok := death["routing-keys"].([]any)
	if !ok || len(keys) == 0 {
		return ""
	}
	k, _ := keys[0].(string)
	return k
}
