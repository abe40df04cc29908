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
// not in the dead-letter queue (as a *NotFoundError, which matches it).
var ErrNotFound = errors.New("message not in dead-letter queue")

// QueueStat is what the broker reports of a queue at one moment (its
// queue.declare-ok).
type QueueStat struct {
	// Ready is the number of messages ready for delivery: the ones a scan
	// (List, Replay, Discard, ReplayAll, DiscardAll) covers. A message a
	// consumer or another session (another ordermeshctl, say) has taken
	// and not yet acknowledged is not ready: it is still parked, but no
	// scan sees it until it is let go.
	Ready int
	// Consumers is the number of consumers of the queue; each may hold
	// messages unacknowledged, which are then not ready.
	Consumers int
}

// Scan describes one pass of Replay, Discard, ReplayAll or DiscardAll over
// the dead-letter queue's ready messages.
type Scan struct {
	// Start is the queue as the scan began; the scan covers at most
	// Start.Ready messages.
	Start QueueStat
	// Scanned is the number of messages the scan fetched: fewer than
	// Start.Ready when a consumer or another session took some meanwhile
	// (or when it stopped at its match).
	Scanned int
	// ReadyAfter is the number of messages ready as a Replay or Discard
	// that found nothing ended, while it still held every message it
	// fetched: messages that became ready during the scan (newly parked,
	// or let go by another session), which it did not look at. It is 0
	// when the scan found its message, or when that count failed.
	ReadyAfter int
}

// NotFoundError is the error of Replay and Discard for an id that is not
// among the messages they scanned: the ready ones. It matches ErrNotFound
// (errors.Is) and says what may have hidden the message.
type NotFoundError struct {
	// ID is the message id looked for.
	ID string
	// Queue is the name of the dead-letter queue.
	Queue string
	// Scan is what the search saw.
	Scan Scan
}

// Error says how many ready messages the search covered and, when the
// broker showed it, that others may be held elsewhere.
func (e *NotFoundError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%v: not among the %d ready message(s) of %s", ErrNotFound, e.Scan.Scanned, e.Queue)
	if n := e.Scan.Start.Consumers; n > 0 {
		fmt.Fprintf(&b, "; the queue's %d consumer(s) may hold others, unacknowledged and so not ready", n)
	}
	if n := e.Scan.Start.Ready - e.Scan.Scanned; n > 0 {
		fmt.Fprintf(&b, "; %d more were taken by a consumer or another session during the search", n)
	}
	if n := e.Scan.ReadyAfter; n > 0 {
		fmt.Fprintf(&b, "; %d became ready during the search (newly parked, or let go by another session): try again", n)
	}
	return b.String()
}

// Unwrap makes a NotFoundError match ErrNotFound.
func (e *NotFoundError) Unwrap() error { return ErrNotFound }

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
// connection (Config.DialTimeout), bounded by Config.CallTimeout per broker
// call and Config.ConfirmTimeout per replay, so admin work never disturbs
// the service's publisher or consumer. It is safe for concurrent use,
// though concurrent operations on one queue see each other's messages as
// temporarily missing. Every operation scans only the messages ready when
// it starts (QueueStat.Ready): messages a consumer or another session holds
// unacknowledged are invisible to it.
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
	// lastHeld is the tag of the latest delivery fetched and not yet
	// settled (0: none; tags start at 1): one nack with multiple set up
	// to it requeues them all. Only the tag is kept, not the deliveries,
	// so scanning a large queue holds no message bodies.
	lastHeld uint64
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
	if s.lastHeld != 0 {
		_ = s.ch.Nack(s.lastHeld, true, true)
	}
	closeConn(s.conn, s.cfg.CallTimeout)
	if s.cc != nil {
		s.cc.wait()
	}
}

// stat reports queue's ready messages and consumers (passive declare).
func (s *dlqSession) stat(ctx context.Context, queue string) (QueueStat, error) {
	var st QueueStat
	err := call(ctx, s.conn, s.cfg.CallTimeout, "inspect "+queue, func() error {
		q, err := s.ch.QueueDeclarePassive(queue, true, false, false, false, nil)
		st = QueueStat{Ready: q.Messages, Consumers: q.Consumers}
		return err
	})
	return st, err
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
		s.lastHeld = d.DeliveryTag
	}
	return d, ok, err
}

// Stat reports the dead-letter queue's ready messages and consumers.
func (q *DLQ) Stat(ctx context.Context) (QueueStat, error) {
	s, err := q.open(ctx)
	if err != nil {
		return QueueStat{}, fmt.Errorf("count dead letters: %w", err)
	}
	defer s.close()
	st, err := s.stat(ctx, q.cfg.DLQName())
	if err != nil {
		return QueueStat{}, fmt.Errorf("count dead letters: %w", err)
	}
	return st, nil
}

// List returns up to limit messages from the head of the dead-letter
// queue (all of them if limit <= 0) with their reasons, leaving them in
// the queue.
func (q *DLQ) List(ctx context.Context, limit int) ([]DeadLetter, error) {
	out, _, err := q.ListStat(ctx, limit)
	return out, err
}

// ListStat is List that also returns the queue's state as the listing
// began: how many messages were ready (more than listed when limit cut
// the listing short) and how many consumers it had.
func (q *DLQ) ListStat(ctx context.Context, limit int) ([]DeadLetter, QueueStat, error) {
	s, err := q.open(ctx)
	if err != nil {
		return nil, QueueStat{}, fmt.Errorf("list dead letters: %w", err)
	}
	defer s.close()
	st, err := s.stat(ctx, q.cfg.DLQName())
	if err != nil {
		return nil, QueueStat{}, fmt.Errorf("list dead letters: %w", err)
	}
	n := st.Ready
	if limit > 0 {
		n = min(n, limit)
	}
	var out []DeadLetter
	for range n {
		d, ok, err := s.get(ctx)
		if err != nil {
			return nil, st, fmt.Errorf("list dead letters: %w", err)
		}
		if !ok {
			break
		}
		out = append(out, deadLetterFromDelivery(d, q.cfg.DeliveryLimit))
	}
	return out, st, nil
}

// Replay moves the message with id back to the service queue, with its
// attempt count reset and its dead-letter headers removed: every copy of
// it, as dead-lettering is at least once (a message whose dead-lettering
// was not acknowledged in time is parked again), and the inbox absorbs
// the copies. It returns a *NotFoundError (matching ErrNotFound) if no
// such message is ready.
func (q *DLQ) Replay(ctx context.Context, id string) error {
	n, scan, err := q.move(ctx, func(d amqp.Delivery) bool { return d.MessageId == id }, true)
	if err == nil && n == 0 {
		err = &NotFoundError{ID: id, Queue: q.cfg.DLQName(), Scan: scan}
	}
	if err != nil {
		return fmt.Errorf("replay %s: %w", id, err)
	}
	return nil
}

// ReplayAll moves the messages parked when it starts back to the service
// queue, and returns how many it moved: every one, or with reason set
// only those dead-lettered for it (one of the Reason constants, as
// DeadLetter.Reason reads it), the others staying parked in their order.
func (q *DLQ) ReplayAll(ctx context.Context, reason string) (int, error) {
	n, _, err := q.move(ctx, q.ofReason(reason), true)
	if err != nil {
		return n, fmt.Errorf("replay dead letters: %w", err)
	}
	return n, nil
}

// ofReason matches the deliveries dead-lettered for reason, or every one
// when reason is empty.
func (q *DLQ) ofReason(reason string) func(amqp.Delivery) bool {
	if reason == "" {
		return func(amqp.Delivery) bool { return true }
	}
	return func(d amqp.Delivery) bool { return deadLetterFromDelivery(d, q.cfg.DeliveryLimit).Reason == reason }
}

// Discard deletes the message with id from the dead-letter queue, every
// copy of it (see Replay). It returns a *NotFoundError (matching
// ErrNotFound) if no such message is ready.
func (q *DLQ) Discard(ctx context.Context, id string) error {
	n, scan, err := q.move(ctx, func(d amqp.Delivery) bool { return d.MessageId == id }, false)
	if err == nil && n == 0 {
		err = &NotFoundError{ID: id, Queue: q.cfg.DLQName(), Scan: scan}
	}
	if err != nil {
		return fmt.Errorf("discard %s: %w", id, err)
	}
	return nil
}

// DiscardAll deletes the dead-letter queue's ready messages and returns how
// many it deleted: every one (a purge), or with reason set only those
// dead-lettered for it (see ReplayAll); messages held unacknowledged
// elsewhere stay.
func (q *DLQ) DiscardAll(ctx context.Context, reason string) (int, error) {
	if reason != "" {
		n, _, err := q.move(ctx, q.ofReason(reason), false)
		if err != nil {
			return n, fmt.Errorf("discard dead letters: %w", err)
		}
		return n, nil
	}
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

// move scans the messages ready when it starts; each one match accepts is
// replayed to the service queue (if replay) and then acked, the others are
// requeued, in their order, when it ends. When match accepted none, it
// counts the messages that became ready meanwhile (Scan.ReadyAfter). It
// returns the number of messages moved and what the scan saw.
func (q *DLQ) move(ctx context.Context, match func(amqp.Delivery) bool, replay bool) (int, Scan, error) {
	var scan Scan
	s, err := q.open(ctx)
	if err != nil {
		return 0, scan, err
	}
	defer s.close()
	if replay {
		if err := q.prepareReplay(ctx, s); err != nil {
			return 0, scan, err
		}
	}
	if scan.Start, err = s.stat(ctx, q.cfg.DLQName()); err != nil {
		return 0, scan, err
	}
	moved := 0
	for range scan.Start.Ready {
		skipped := s.lastHeld // the latest tag still held before this get
		d, ok, err := s.get(ctx)
		if err != nil {
			return moved, scan, err
		}
		if !ok {
			break
		}
		scan.Scanned++
		if !match(d) {
			continue
		}
		if replay {
			if err := q.replayOne(ctx, s, d); err != nil {
				return moved, scan, err
			}
		}
		// Acked out of order while the messages before it stay held.
		if err := d.Ack(false); err != nil {
			return moved, scan, fmt.Errorf("ack %s: %w", d.MessageId, err)
		}
		// The messages skipped stay held, so that the scan goes on past
		// them (requeued now, they would come first again), and are
		// requeued together at the end, up to the latest of them: d's
		// tag is no bound any more, the broker refuses a tag it does not
		// hold.
		s.lastHeld = skipped
		moved++
	}
	if moved == 0 {
		// Every message fetched is still held, so any ready now became
		// ready during the scan. Only a hint for the not-found error:
		// a failed count leaves it 0.
		if st, err := s.stat(ctx, q.cfg.DLQName()); err == nil {
			scan.ReadyAfter = st.Ready
		}
	}
	return moved, scan, nil
}

// prepareReplay checks that the service queue exists (a replay to a
// missing queue fails anyway, but this says why before any message is
// touched) and puts s's channel in confirm mode for the replays.
func (q *DLQ) prepareReplay(ctx context.Context, s *dlqSession) error {
	if _, err := s.stat(ctx, q.cfg.QueueName()); err != nil {
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
