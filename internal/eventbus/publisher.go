package eventbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/proto"
)

// Publisher sends events to the topic exchange over one connection and one
// channel in confirm mode. It is safe for concurrent use. It reconnects by
// itself after any loss; publishes in flight at a loss fail with
// ErrNotConfirmed and are not re-sent.
type Publisher struct {
	cfg   Config
	log   *slog.Logger
	state *stateCell

	mu  sync.Mutex
	cur *confirmChannel // nil while the link is down

	cancel context.CancelFunc
	done   chan struct{}
}

// NewPublisher validates cfg and starts connecting in the background; it
// does not wait for the broker. Publish fails with ErrLinkDown until the
// link is up (see State, Watch and WaitUp). Close stops it.
func NewPublisher(cfg Config, log *slog.Logger) (*Publisher, error) {
	cfg, err := cfg.WithDefaults()
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Publisher{
		cfg:    cfg,
		log:    log.With("component", "eventbus.publisher", "connection", cfg.connectionName("publisher")),
		state:  newStateCell("connecting"),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		p.supervise(ctx)
	}()
	return p, nil
}

// Close stops the publisher and closes its connection; publishes still
// waiting for confirms fail. It returns once every goroutine of p ended.
func (p *Publisher) Close() error {
	p.cancel()
	<-p.done
	return nil
}

// State returns the current link state.
func (p *Publisher) State() LinkState { return p.state.get() }

// Watch returns the current link state and a channel closed at its next
// change.
func (p *Publisher) Watch() (LinkState, <-chan struct{}) { return p.state.watch() }

// WaitUp blocks until the link is up or ctx ends.
func (p *Publisher) WaitUp(ctx context.Context) error { return waitUp(ctx, p.state) }

func waitUp(ctx context.Context, c *stateCell) error {
	for {
		st, changed := c.watch()
		if st.Up {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for link (%s): %w", st.Reason, ctx.Err())
		case <-changed:
		}
	}
}

func (p *Publisher) supervise(ctx context.Context) {
	b := backoff{min: p.cfg.ReconnectMin, max: p.cfg.ReconnectMax}
	for {
		reason := p.session(ctx, &b)
		if ctx.Err() != nil {
			p.state.set(false, "closed")
			return
		}
		p.state.set(false, reason)
		p.log.Warn("eventbus link down", "reason", reason)
		if !b.wait(ctx) {
			p.state.set(false, "closed")
			return
		}
	}
}

// session runs one connection until it is lost or ctx ends and returns
// why it ended.
func (p *Publisher) session(ctx context.Context, b *backoff) string {
	conn, bc, err := dialBatching(p.cfg, "publisher")
	if err != nil {
		return err.Error()
	}
	defer closeConn(conn, p.cfg.CallTimeout)
	connClosed := conn.NotifyClose(make(chan *amqp.Error, 1))
	blocked := conn.NotifyBlocked(make(chan amqp.Blocking, 4))

	var ch *amqp.Channel
	if err := call(ctx, conn, p.cfg.CallTimeout, "open channel", func() (err error) {
		ch, err = conn.Channel()
		return err
	}); err != nil {
		return err.Error()
	}
	chClosed := ch.NotifyClose(make(chan *amqp.Error, 1))
	if err := declareExchange(ctx, conn, ch, p.cfg); err != nil {
		return err.Error()
	}
	cc, err := newConfirmChannel(ctx, conn, bc, ch, p.cfg.CallTimeout, p.cfg.Metrics)
	if err != nil {
		return err.Error()
	}
	defer func() {
		p.mu.Lock()
		p.cur = nil
		p.mu.Unlock()
		closeConn(conn, p.cfg.CallTimeout)
		cc.wait()
	}()

	p.mu.Lock()
	p.cur = cc
	p.mu.Unlock()
	p.state.set(true, "")
	b.reset()
	p.log.Info("eventbus link up")

	for {
		select {
		case <-ctx.Done():
			return "closed"
		case e := <-connClosed:
			return amqpReason("connection", e)
		case e := <-chClosed:
			return amqpReason("channel", e)
		case bl, ok := <-blocked:
			if !ok {
				// Closed with the connection, which connClosed reports;
				// a zero Blocking would read as unblocked.
				blocked = nil
				continue
			}
			if bl.Active {
				reason := "broker blocked publishing: " + bl.Reason
				cc.blocked.Store(&reason)
				p.state.set(false, reason)
			} else {
				cc.blocked.Store(nil)
				p.state.set(true, "")
			}
		}
	}
}

// Publish sends msgs to the topic exchange, each with its own routing key,
// and returns nil only once the broker confirmed every one of them. It
// fails promptly with ErrLinkDown while the link is down, with
// ErrUnroutable for a message no queue is bound to receive, with
// ErrNacked or ErrNotConfirmed when the broker refused it or the link was
// lost before its confirm, and with ctx's error (or after
// Config.ConfirmTimeout) when waiting ended first. Past the check of the
// link, the error is a *PublishError saying, message by message, which
// the broker confirmed and which it refused. On error some messages may still
// have been delivered: publishing is at-least-once.
func (p *Publisher) Publish(ctx context.Context, msgs ...Message) error {
	if len(msgs) == 0 {
		return nil
	}
	out := make([]outgoing, len(msgs))
	for i, m := range msgs {
		pub, err := toPublishing(m, p.cfg.Service)
		if err != nil {
			return err
		}
		out[i] = outgoing{
			exchange: p.cfg.ExchangeName(),
			key:      m.RoutingKey,
			msg:      pub,
			labels:   Labels{RoutingKey: m.RoutingKey, Type: m.Type},
		}
	}
	p.mu.Lock()
	cc := p.cur
	p.mu.Unlock()
	if cc == nil {
		return fmt.Errorf("publish: %w: %s", ErrLinkDown, p.state.get().Reason)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, p.cfg.ConfirmTimeout)
		defer cancel()
	}
	return cc.publish(ctx, out)
}

// PublishEvents encodes events with NewMessage, using the publisher's
// service as source, and publishes them like Publish.
func (p *Publisher) PublishEvents(ctx context.Context, correlationID string, events ...proto.Message) error {
	msgs := make([]Message, len(events))
	for i, ev := range events {
		m, err := NewMessage(ev, p.cfg.Service, correlationID)
		if err != nil {
			return err
		}
		msgs[i] = m
	}
	return p.Publish(ctx, msgs...)
}

// Header names the bus sets besides the AMQP properties.
const (
	HeaderTraceParent = "traceparent"
	HeaderTraceState  = "tracestate"
	HeaderSpecVersion = "ce-specversion"
	// HeaderTime is the event's time in RFC 3339 with nanoseconds; the
	// AMQP timestamp property holds whole seconds only.
	HeaderTime = "ce-time"
)

// ErrInvalidMessage is returned by Publish for a message that lacks an
// id, a type or a routing key; retrying it cannot succeed.
var ErrInvalidMessage = errors.New("invalid message")

// toPublishing maps a Message onto AMQP properties per the event contract.
func toPublishing(m Message, defaultSource string) (amqp.Publishing, error) {
	switch {
	case m.ID == "":
		return amqp.Publishing{}, fmt.Errorf("publish %s: %w: empty id", m.Type, ErrInvalidMessage)
	case m.Type == "":
		return amqp.Publishing{}, fmt.Errorf("publish %s: %w: empty type", m.ID, ErrInvalidMessage)
	case m.RoutingKey == "":
		return amqp.Publishing{}, fmt.Errorf("publish %s: %w: empty routing key", m.ID, ErrInvalidMessage)
	}
	src := m.Source
	if src == "" {
		src = defaultSource
	}
	ts := m.Time
	if ts.IsZero() {
		ts = time.Now()
	}
	ts = ts.UTC()
	h := amqp.Table{HeaderSpecVersion: "1.0", HeaderTime: ts.Format(time.RFC3339Nano)}
	if m.TraceParent != "" {
		h[HeaderTraceParent] = m.TraceParent
	}
	if m.TraceState != "" {
		h[HeaderTraceState] = m.TraceState
	}
	return amqp.Publishing{
		Headers:       h,
		ContentType:   ContentType,
		DeliveryMode:  amqp.Persistent,
		CorrelationId: m.CorrelationID,
		MessageId:     m.ID,
		Timestamp:     ts,
		Type:          m.Type,
		AppId:         src,
		Body:          m.Body,
	}, nil
}
