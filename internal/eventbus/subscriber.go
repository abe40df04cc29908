package eventbus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"buf.build/go/protovalidate"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/telemetry"
)

// Header names the subscriber reads and writes on retried and
// dead-lettered messages.
const (
	// HeaderAttempt is the attempt number of the next delivery (int).
	// Absent means attempt 1.
	HeaderAttempt = "x-ordermesh-attempt"
	// HeaderRoutingKey is the routing key the event was first published
	// with; retries and dead letters travel under queue names instead.
	HeaderRoutingKey = "x-ordermesh-routing-key"
	// HeaderReason is why a message was dead-lettered, one of the Reason
	// constants.
	HeaderReason = "x-ordermesh-reason"
	// HeaderError is the error text behind HeaderReason.
	HeaderError = "x-ordermesh-error"
	// HeaderDeadLetteredAt is when the subscriber dead-lettered the
	// message (AMQP timestamp).
	HeaderDeadLetteredAt = "x-ordermesh-dead-lettered-at"
	// HeaderOutageRetries is how many times the message was retried for
	// an outage (an error marked Unavailable) since its last counted
	// attempt (int); absent means none. It picks the delay of the next
	// outage retry.
	HeaderOutageRetries = "x-ordermesh-outage-retries"
)

// Reasons a message is dead-lettered (HeaderReason).
const (
	ReasonMissingID        = "missing_message_id"
	ReasonUnknownType      = "unknown_type"
	ReasonUndecodable      = "undecodable"
	ReasonInvalid          = "invalid"
	ReasonPermanent        = "permanent_error"
	ReasonRetriesExhausted = "retries_exhausted"
	// ReasonDeliveryLimit is reported by DLQ for messages the broker
	// dead-lettered after Config.DeliveryLimit unsettled deliveries.
	ReasonDeliveryLimit = "delivery_limit"
)

// Reasons are the reasons a message is dead-lettered for, as
// DeadLetter.Reason reads them.
var Reasons = []string{ReasonMissingID, ReasonUnknownType, ReasonUndecodable, ReasonInvalid,
	ReasonPermanent, ReasonRetriesExhausted, ReasonDeliveryLimit}

// maxErrorHeader caps the error text carried in HeaderError.
const maxErrorHeader = 2048

// Subscriber consumes the service's queue and dispatches each event to the
// handler registered for its type. Register handlers with Handle before
// Run. Handlers run concurrently (Config.Concurrency); the bus owns
// retries, dead-lettering, panic recovery and acknowledgement:
//
//   - nil: the delivery is acked (acks of a busy consumer go in groups;
//     see Config.AckDelay).
//   - an error: the message is republished to the next retry queue and,
//     after Config.MaxAttempts attempts, to the DLQ.
//   - an error marked with Permanent: the message goes to the DLQ at once.
//   - an error marked with Unavailable (an outage of the handler's
//     database, say): the message is republished to a retry queue, one
//     step further up the ladder each time (1s, 10s, 60s, 60s, …) but
//     without counting an attempt, so an outage dead-letters nothing.
//   - a panic: treated as an error.
//
// Messages without an id, of an unregistered type, undecodable or failing
// protovalidate go to the DLQ without reaching a handler. The original
// delivery is acked only after its retry or DLQ copy was confirmed by the
// broker, so a message is never lost in between (it may be duplicated if
// the link fails at that moment: delivery is at-least-once).
type Subscriber struct {
	cfg       Config
	log       *slog.Logger
	validator protovalidate.Validator
	state     *stateCell

	mu       sync.Mutex
	handlers map[string]*handlerEntry // by full proto name
	running  bool

	subscribed atomic.Bool
}

type handlerEntry struct {
	key    string
	decode func(body []byte) (proto.Message, error)
	call   func(ctx context.Context, msg proto.Message, meta Meta) error
}

// NewSubscriber validates cfg; Run connects.
func NewSubscriber(cfg Config, log *slog.Logger) (*Subscriber, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("new validator: %w", err)
	}
	return &Subscriber{
		cfg:       cfg,
		log:       log.With("component", "eventbus.subscriber", "queue", cfg.QueueName()),
		validator: v,
		state:     newStateCell("not running"),
		handlers:  make(map[string]*handlerEntry),
	}, nil
}

// Handle registers h for the event type PT, e.g.
//
//	eventbus.Handle(sub, func(ctx context.Context, ev *orderv1.OrderCreated, meta eventbus.Meta) error {…})
//
// The service queue is bound to PT's routing key. It fails if PT declares
// no routing key, already has a handler, or s is running.
func Handle[T any, PT interface {
	*T
	proto.Message
}](s *Subscriber, h func(ctx context.Context, ev PT, meta Meta) error) error {
	desc := PT(new(T)).ProtoReflect().Descriptor()
	key, err := RoutingKey(desc)
	if err != nil {
		return fmt.Errorf("register handler: %w", err)
	}
	e := &handlerEntry{
		key: key,
		decode: func(body []byte) (proto.Message, error) {
			ev := PT(new(T))
			if err := proto.Unmarshal(body, ev); err != nil {
				return nil, fmt.Errorf("decode %s: %w", desc.FullName(), err)
			}
			return ev, nil
		},
		call: func(ctx context.Context, msg proto.Message, meta Meta) error {
			ev, ok := msg.(PT)
			if !ok {
				return Permanent(fmt.Errorf("dispatch %s: decoded %T", desc.FullName(), msg))
			}
			return h(ctx, ev, meta)
		},
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.running:
		return fmt.Errorf("register handler for %s: subscriber is running", desc.FullName())
	case s.handlers[string(desc.FullName())] != nil:
		return fmt.Errorf("register handler for %s: already registered", desc.FullName())
	}
	s.handlers[string(desc.FullName())] = e
	return nil
}

// State returns the current link state: up while connected with the
// topology declared and the consumer subscribed.
func (s *Subscriber) State() LinkState { return s.state.get() }

// Watch returns the current link state and a channel closed at its next
// change.
func (s *Subscriber) Watch() (LinkState, <-chan struct{}) { return s.state.watch() }

// WaitUp blocks until the link is up or ctx ends.
func (s *Subscriber) WaitUp(ctx context.Context) error { return waitUp(ctx, s.state) }

// Subscribed reports whether the consumer is currently subscribed to the
// service queue.
func (s *Subscriber) Subscribed() bool { return s.subscribed.Load() }

// Run declares the topology, consumes until ctx ends and then stops
// gracefully: it cancels the consumer, lets in-flight handlers finish and
// settles them, requeues deliveries that were prefetched but not started,
// and closes its channels and connection. After a connection or channel
// loss it reconnects with backoff, re-declares the topology and
// re-subscribes. It returns nil after a graceful stop, or an error if it
// cannot start (no handlers, already running).
func (s *Subscriber) Run(ctx context.Context) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("run subscriber: already running")
	}
	if len(s.handlers) == 0 {
		s.mu.Unlock()
		return errors.New("run subscriber: no handlers registered")
	}
	s.running = true
	handlers := make(map[string]*handlerEntry, len(s.handlers))
	var keys []string
	for typ, h := range s.handlers {
		handlers[typ] = h
		keys = append(keys, h.key)
	}
	s.mu.Unlock()
	slices.Sort(keys)
	keys = slices.Compact(keys)
	defer func() {
		s.mu.Lock()
		s.running = false
		s.mu.Unlock()
		s.state.set(false, "not running")
	}()

	b := backoff{min: s.cfg.ReconnectMin, max: s.cfg.ReconnectMax}
	for {
		reason := s.session(ctx, handlers, keys, &b)
		if ctx.Err() != nil {
			return nil
		}
		s.state.set(false, reason)
		s.log.WarnContext(ctx, "eventbus link down", "reason", reason)
		if !b.wait(ctx) {
			return nil
		}
	}
}

// session runs one connection until it is lost or ctx ends and returns
// why it ended. It returns only after every delivery it received was
// settled or its channel closed.
func (s *Subscriber) session(ctx context.Context, handlers map[string]*handlerEntry, keys []string, b *backoff) string {
	cfg := s.cfg
	conn, err := dial(cfg, "subscriber")
	if err != nil {
		return err.Error()
	}
	defer closeConn(conn, cfg.CallTimeout)
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))

	open := func(what string) (*amqp.Channel, error) {
		var ch *amqp.Channel
		err := call(ctx, conn, cfg.CallTimeout, "open "+what+" channel", func() (err error) {
			ch, err = conn.Channel()
			return err
		})
		return ch, err
	}

	setup, err := open("setup")
	if err != nil {
		return err.Error()
	}
	if err := declareTopology(ctx, conn, setup, cfg, keys); err != nil {
		return err.Error()
	}
	if err := call(ctx, conn, cfg.CallTimeout, "close setup channel", setup.Close); err != nil {
		return err.Error()
	}

	// Retry and dead-letter copies go out on a connection of their own: in
	// a memory or disk alarm the broker stops reading from every
	// connection that publishes, and on the consumer's that would hold
	// back its acks too, stalling the consumer until the alarm clears.
	pconn, err := dial(cfg, "subscriber-republish")
	if err != nil {
		return err.Error()
	}
	defer closeConn(pconn, cfg.CallTimeout)
	pconnClosed := pconn.NotifyClose(make(chan *amqp.Error, 1))
	pconnBlocked := pconn.NotifyBlocked(make(chan amqp.Blocking, 4))
	var pch *amqp.Channel
	if err := call(ctx, pconn, cfg.CallTimeout, "open republish channel", func() (err error) {
		pch, err = pconn.Channel()
		return err
	}); err != nil {
		return err.Error()
	}
	pchClosed := pch.NotifyClose(make(chan *amqp.Error, 1))
	cc, err := newConfirmChannel(ctx, pconn, nil, pch, cfg.CallTimeout, cfg.Metrics)
	if err != nil {
		return err.Error()
	}
	defer func() {
		closeConn(conn, cfg.CallTimeout)
		closeConn(pconn, cfg.CallTimeout)
		cc.wait()
	}()

	cch, err := open("consume")
	if err != nil {
		return err.Error()
	}
	cchClosed := cch.NotifyClose(make(chan *amqp.Error, 1))
	cancelled := cch.NotifyCancel(make(chan string, 1))
	if err := call(ctx, conn, cfg.CallTimeout, "set qos", func() error { return cch.Qos(cfg.Prefetch, 0, false) }); err != nil {
		return err.Error()
	}
	tag := cfg.connectionName("subscriber") + "-" + randomHex(6)
	var deliveries <-chan amqp.Delivery
	if err := call(ctx, conn, cfg.CallTimeout, "consume "+cfg.QueueName(), func() (err error) {
		deliveries, err = cch.Consume(cfg.QueueName(), tag, false, false, false, false, nil)
		return err
	}); err != nil {
		return err.Error()
	}

	s.subscribed.Store(true)
	s.state.set(true, "")
	b.reset()
	s.log.InfoContext(ctx, "eventbus subscribed", "consumer_tag", tag, "routing_keys", keys)

	// Handlers outlive ctx on purpose: a graceful stop lets them finish.
	hctx := context.WithoutCancel(ctx)
	acks := newAcker(cch, cfg.AckDelay, cfg.Prefetch/4, func(err error) {
		s.log.WarnContext(hctx, "send acks", "err", err)
	})
	stopping := make(chan struct{})
	mv := newMover(cc, cfg.ConfirmTimeout, stopping)
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for d := range deliveries {
				acks.take(d.DeliveryTag)
				select {
				case <-stopping:
					if err := acks.nack(d.DeliveryTag, true); err != nil {
						s.log.DebugContext(hctx, "requeue on stop", "message_id", d.MessageId, "err", err)
					}
					continue
				default:
				}
				s.process(hctx, d, acks, mv, handlers)
			}
		})
	}
	workersDone := make(chan struct{})
	go func() {
		wg.Wait()
		close(workersDone)
	}()

	var reason string
	graceful := false
	for reason == "" {
		select {
		case <-ctx.Done():
			reason, graceful = "stopped", true
		case e := <-connClosed:
			reason = amqpReason("connection", e)
		case e := <-cchClosed:
			reason = amqpReason("consume channel", e)
		case e := <-pchClosed:
			reason = amqpReason("republish channel", e)
		case e := <-pconnClosed:
			reason = amqpReason("republish connection", e)
		case <-cancelled:
			reason = "consumer cancelled by broker"
		case q := <-mv.missing:
			reason = "queue " + q + " is gone: declaring the topology again"
		case <-workersDone:
			reason = "delivery stream ended"
		case bl, ok := <-pconnBlocked:
			if !ok { // closed with the connection, which pconnClosed reports
				pconnBlocked = nil
				continue
			}
			s.blocked(ctx, mv, bl)
		}
	}
	s.subscribed.Store(false)
	s.state.set(false, reason)
	close(stopping)
	flush := graceful
	if graceful {
		// Cancel (not channel close) so in-flight handlers can still ack;
		// the delivery channel closes once the client buffer is drained.
		err := call(hctx, conn, cfg.CallTimeout, "cancel consumer", func() error { return cch.Cancel(tag, false) })
		if err != nil {
			s.log.WarnContext(hctx, "cancel consumer", "err", err)
			closeConn(conn, cfg.CallTimeout)
			flush = false
		}
	} else {
		// The link is broken; unsettled deliveries return to the queue
		// when the connection closes. The consume channel may still be
		// open (the republish channel failed, the broker cancelled the
		// consumer): send the acks of deliveries already handled first,
		// so they are not delivered again.
		if err := acks.sendWaiting(); err != nil {
			s.log.DebugContext(hctx, "send acks before closing", "err", err)
		}
		closeConn(conn, cfg.CallTimeout)
	}
	// The handlers still running may be copying deliveries: the mover
	// goes on following the alarms, and amqp091-go's reader, which waits
	// for a notice to be taken, is not held up.
	for done := false; !done; {
		select {
		case <-workersDone:
			done = true
		case bl, ok := <-pconnBlocked:
			if !ok {
				pconnBlocked = nil
				continue
			}
			s.blocked(hctx, mv, bl)
		}
	}
	if err := acks.close(flush); err != nil {
		s.log.WarnContext(hctx, "send acks", "err", err)
	}
	return reason
}

// blocked passes the broker's connection.blocked or unblocked notice for
// the republish connection on to mv.
func (s *Subscriber) blocked(ctx context.Context, mv *mover, bl amqp.Blocking) {
	if bl.Active {
		s.log.WarnContext(ctx, "broker blocked publishing; retry and dead-letter copies wait", "reason", bl.Reason)
	} else {
		s.log.InfoContext(ctx, "broker takes publishes again")
	}
	mv.setBlocked(bl.Active)
}

// process handles one delivery and settles it.
func (s *Subscriber) process(ctx context.Context, d amqp.Delivery, acks *acker, mv *mover, handlers map[string]*handlerEntry) {
	start := time.Now()
	meta := metaFromDelivery(d)
	labels := metricLabels(meta, handlers)
	s.cfg.Metrics.Consumed(labels)

	if meta.ID == "" {
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonMissingID, errors.New("message has no message_id"))
		return
	}
	h := handlers[meta.Type]
	if h == nil {
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonUnknownType, fmt.Errorf("no handler for type %q", meta.Type))
		return
	}
	if d.ContentType != "" && d.ContentType != ContentType {
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonUndecodable, fmt.Errorf("content type %q, want %q", d.ContentType, ContentType))
		return
	}
	msg, err := h.decode(d.Body)
	if err != nil {
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonUndecodable, err)
		return
	}
	if err := s.validator.Validate(msg); err != nil {
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonInvalid, fmt.Errorf("validate %s: %w", meta.Type, err))
		return
	}

	err = s.invoke(ctx, h, msg, meta)
	switch {
	case err == nil:
		if err := acks.ack(d.DeliveryTag); err != nil {
			s.log.WarnContext(ctx, "ack", "message_id", meta.ID, "err", err)
			return
		}
		s.cfg.Metrics.Acked(labels, time.Since(start))
	case IsPermanent(err):
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonPermanent, err)
	case IsUnavailable(err):
		outages, _ := headerInt(d.Headers, HeaderOutageRetries)
		outages = max(outages, 0)
		// The delays climb the ladder as attempts do: the first outage
		// retry waits as long as attempt 2 would.
		queue := s.cfg.RetryQueueName(s.cfg.retryDelay(outages + 2))
		s.log.WarnContext(ctx, "handler's dependency unavailable; retrying without counting an attempt", "message_id", meta.ID,
			"type", meta.Type, "attempt", meta.Attempt, "outage_retries", outages+1, "retry_queue", queue, "err", err)
		h := republishHeaders(d, meta)
		h[HeaderOutageRetries] = int32(outages + 1)
		if s.republish(ctx, d, acks, mv, queue, h, labels) {
			s.cfg.Metrics.OutageRetried(labels)
		}
	case meta.Attempt >= s.cfg.MaxAttempts:
		s.deadLetter(ctx, d, acks, mv, meta, labels, ReasonRetriesExhausted, err)
	default:
		next := meta.Attempt + 1
		queue := s.cfg.RetryQueueName(s.cfg.retryDelay(next))
		s.log.InfoContext(ctx, "handler failed; retrying", "message_id", meta.ID, "type", meta.Type,
			"attempt", meta.Attempt, "retry_queue", queue, "err", err)
		h := republishHeaders(d, meta)
		h[HeaderAttempt] = int32(next)
		delete(h, HeaderOutageRetries)
		if s.republish(ctx, d, acks, mv, queue, h, labels) {
			s.cfg.Metrics.Retried(labels, next)
		}
	}
}

// invoke calls the handler, turning a panic into an error.
func (s *Subscriber) invoke(ctx context.Context, h *handlerEntry, msg proto.Message, meta Meta) (err error) {
	defer func() {
		if r := recover(); r != nil {
			s.log.ErrorContext(ctx, "handler panic", "message_id", meta.ID, "type", meta.Type,
				"panic", fmt.Sprint(r), "stack", string(debug.Stack()))
			err = fmt.Errorf("handler panic: %v", r)
		}
	}()
	ctx, cancel := context.WithTimeout(ctx, s.cfg.HandlerTimeout)
	defer cancel()
	return h.call(ctx, msg, meta)
}

// OtherLabel stands in the metrics' labels for the routing key and type
// of a message of a type the subscriber has no handler for.
const OtherLabel = "other"

// metricLabels labels meta's metrics by its type and the routing key its
// handler was registered for; a message of a type without a handler is
// labelled OtherLabel. Both come from the handlers, not from the message,
// whose sender could otherwise add a series per value it makes up.
func metricLabels(meta Meta, handlers map[string]*handlerEntry) Labels {
	if h := handlers[meta.Type]; h != nil {
		return Labels{RoutingKey: h.key, Type: meta.Type}
	}
	return Labels{RoutingKey: OtherLabel, Type: OtherLabel}
}

// deadLetter sends d to the DLQ with why in its headers, then acks it.
func (s *Subscriber) deadLetter(ctx context.Context, d amqp.Delivery, acks *acker, mv *mover, meta Meta, labels Labels, reason string, cause error) {
	s.log.WarnContext(ctx, "dead-lettering message", "message_id", meta.ID, "type", meta.Type,
		"routing_key", meta.RoutingKey, "reason", reason, "attempt", meta.Attempt, "err", cause)
	h := republishHeaders(d, meta)
	h[HeaderReason] = reason
	h[HeaderError] = truncate(cause.Error(), maxErrorHeader)
	h[HeaderAttempt] = int32(meta.Attempt)
	h[HeaderDeadLetteredAt] = time.Now().UTC()
	if s.republish(ctx, d, acks, mv, s.cfg.DLQName(), h, labels) {
		s.cfg.Metrics.DeadLettered(labels, reason)
	}
}

// copyOf is delivery d as a persistent message to publish again, with
// headers h.
func copyOf(d amqp.Delivery, h amqp.Table) amqp.Publishing {
	return amqp.Publishing{
		Headers:         h,
		ContentType:     d.ContentType,
		ContentEncoding: d.ContentEncoding,
		DeliveryMode:    amqp.Persistent,
		Priority:        d.Priority,
		CorrelationId:   d.CorrelationId,
		ReplyTo:         d.ReplyTo,
		MessageId:       d.MessageId,
		Timestamp:       d.Timestamp,
		Type:            d.Type,
		AppId:           d.AppId,
		Body:            d.Body,
	}
}

// republish copies d to queue through the default exchange with headers h
// and acks d once the copy is confirmed; if the copy fails d is requeued.
// It reports whether d was moved.
func (s *Subscriber) republish(ctx context.Context, d amqp.Delivery, acks *acker, mv *mover, queue string, h amqp.Table, labels Labels) bool {
	pub := copyOf(d, h)
	err := mv.publish(ctx, []outgoing{{exchange: "", key: queue, msg: pub, labels: labels}})
	if err != nil {
		s.log.ErrorContext(ctx, "move message; requeueing", "message_id", d.MessageId, "queue", queue, "err", err)
		if errors.Is(err, ErrUnroutable) {
			mv.queueMissing(queue)
		}
		if err := acks.nack(d.DeliveryTag, true); err != nil {
			s.log.WarnContext(ctx, "requeue", "message_id", d.MessageId, "err", err)
		}
		return false
	}
	// At once: the longer the original waits, the likelier a lost link
	// leaves two copies.
	if err := acks.ackNow(d.DeliveryTag); err != nil {
		s.log.WarnContext(ctx, "ack moved message", "message_id", d.MessageId, "err", err)
	}
	return true
}

// republishHeaders copies d's headers for a retry or dead-letter copy,
// pinning the original routing key and dropping broker bookkeeping.
func republishHeaders(d amqp.Delivery, meta Meta) amqp.Table {
	h := make(amqp.Table, len(d.Headers)+5)
	for k, v := range d.Headers {
		h[k] = v
	}
	delete(h, "x-delivery-count")
	h[HeaderRoutingKey] = meta.RoutingKey
	return h
}

// metaFromDelivery reads the event metadata from AMQP properties and
// headers. What a handler's outgoing events inherit (the correlation id
// and the trace context) is kept only if it can be stored and sent on: a
// trace context as telemetry.ParseTraceContext takes it, a correlation id
// that is valid UTF-8 without NUL bytes. Those events are written to the
// outbox after the handler's effects (a charge, a reservation), and a
// value PostgreSQL refuses there would park the delivery in the
// dead-letter queue with its effects made and its outcome never sent.
func metaFromDelivery(d amqp.Delivery) Meta {
	trace := telemetry.ParseTraceContext(headerString(d.Headers, HeaderTraceParent), headerString(d.Headers, HeaderTraceState))
	m := Meta{
		ID:            d.MessageId,
		Type:          d.Type,
		RoutingKey:    d.RoutingKey,
		Source:        d.AppId,
		Time:          d.Timestamp,
		CorrelationID: d.CorrelationId,
		TraceParent:   trace.Parent,
		TraceState:    trace.State,
		Attempt:       1,
		Redelivered:   d.Redelivered,
	}
	if !utf8.ValidString(m.CorrelationID) || strings.ContainsRune(m.CorrelationID, 0) {
		m.CorrelationID = ""
	}
	if rk := headerString(d.Headers, HeaderRoutingKey); rk != "" {
		m.RoutingKey = rk
	}
	if t, err := time.Parse(time.RFC3339Nano, headerString(d.Headers, HeaderTime)); err == nil {
		m.Time = t
	}
	if n, ok := headerInt(d.Headers, HeaderAttempt); ok && n > 0 {
		m.Attempt = n
	}
	if n, ok := headerInt(d.Headers, HeaderOutageRetries); ok && n > 0 {
		m.OutageRetries = n
	}
	return m
}

func headerString(h amqp.Table, key string) string {
	switch v := h[key].(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return ""
}

func headerInt(h amqp.Table, key string) (int, bool) {
	switch v := h[key].(type) {
	case int:
		return v, true
	case int8:
		return int(v), true
	case int16:
		return int(v), true
	case int32:
		return int(v), true
	case int64:
		return int(v), true
	case uint8:
		return int(v), true
	case uint16:
		return int(v), true
	case uint32:
		return int(v), true
	}
	return 0, false
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
