// Package eventbus carries ordermesh's protobuf events over RabbitMQ: one
// topic exchange, a durable quorum queue per consuming service, publisher
// confirms, typed handlers, a delayed-retry ladder and a dead-letter queue.
//
// The AMQP body is the protobuf-encoded event and nothing else; metadata
// rides in AMQP properties and headers named after CloudEvents attributes
// (see Meta). The routing key of an event is declared in its schema with
// the (ordermesh.eventbus.v1.event) message option and read with RoutingKey,
// so publishers and consumers cannot disagree on it.
package eventbus

import (
	"errors"
	"fmt"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	eventbusv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/eventbus/v1"
)

// ContentType is the AMQP content type of every event body.
const ContentType = "application/protobuf"

// ErrNotEvent is returned for a message type that declares no routing key.
var ErrNotEvent = errors.New("message is not an event: it declares no (ordermesh.eventbus.v1.event).routing_key")

// RoutingKey returns the routing key the event's schema declares with the
// (ordermesh.eventbus.v1.event) option, or ErrNotEvent.
func RoutingKey(desc protoreflect.MessageDescriptor) (string, error) {
	opts := desc.Options()
	if opts == nil || !proto.HasExtension(opts, eventbusv1.E_Event) {
		return "", fmt.Errorf("%s: %w", desc.FullName(), ErrNotEvent)
	}
	ev, ok := proto.GetExtension(opts, eventbusv1.E_Event).(*eventbusv1.EventOptions)
	if !ok || ev.GetRoutingKey() == "" {
		return "", fmt.Errorf("%s: %w", desc.FullName(), ErrNotEvent)
	}
	return ev.GetRoutingKey(), nil
}

// Meta is the metadata of one event, carried in AMQP properties and headers.
type Meta struct {
	// ID is the event id (AMQP message_id), a UUIDv7. Consumers dedupe on it.
	ID string
	// Type is the full protobuf name of the event (AMQP type).
	Type string
	// RoutingKey is the routing key the event was published with.
	RoutingKey string
	// Source is the producing service (AMQP app_id).
	Source string
	// Time is when the event was created: the ce-time header, to the
	// nanosecond, or the AMQP timestamp (whole seconds) of a message
	// without a valid one.
	Time time.Time
	// CorrelationID ties the event to its order (AMQP correlation_id).
	CorrelationID string
	// TraceParent and TraceState are the W3C trace context headers.
	TraceParent string
	TraceState  string
	// Attempt counts deliveries through the retry ladder; 1 on the first.
	Attempt int
	// OutageRetries counts the retries in a row before this delivery that
	// counted no attempt (the handler's dependency was unavailable); 0
	// when the last retry, if any, counted one. Publishing ignores it.
	OutageRetries int
	// Redelivered is set when the broker redelivered the message.
	Redelivered bool
}

// OutageRetryLimit is how many retries in a row (Meta.OutageRetries) a
// handler lets a failure that may be its dependency's alone (a database
// too busy, a mail server deferring an email) make without counting
// attempts: a day at the default retry ladder's longest delay, 60 s.
// Counted from the first such retry, not from the event's time, so that an
// old event (a backlog, a replay from the dead-letter queue) gets its share
// too. After that a failure so lasting is more likely the event's own: its
// attempts count, and it reaches the dead-letter queue rather than going
// round for ever. (An unreachable dependency has no limit.)
const OutageRetryLimit = 1440

// Message is an event encoded for the wire: what the outbox stores and the
// publisher sends.
type Message struct {
	Meta
	// Body is the protobuf encoding of the event.
	Body []byte
}

// NewMessage encodes an event for publishing. It assigns a new UUIDv7 id
// and the current time; source is the producing service and correlationID
// the order id.
func NewMessage(event proto.Message, source, correlationID string) (Message, error) {
	desc := event.ProtoReflect().Descriptor()
	key, err := RoutingKey(desc)
	if err != nil {
		return Message{}, err
	}
	body, err := proto.Marshal(event)
	if err != nil {
		return Message{}, fmt.Errorf("encode %s: %w", desc.FullName(), err)
	}
	id, err := uuid.NewV7()
	if err != nil {
		return Message{}, fmt.Errorf("new event id: %w", err)
	}
	return Message{
		Meta: Meta{
			ID:            id.String(),
			Type:          string(desc.FullName()),
			RoutingKey:    key,
			Source:        source,
			Time:          time.Now().UTC(),
			CorrelationID: correlationID,
		},
		Body: body,
	}, nil
}

// permanentError marks an error that retrying cannot fix.
type permanentError struct{ err error }

func (e permanentError) Error() string { return e.err.Error() }
func (e permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: a handler returning it sends the
// message to the dead-letter queue at once instead of retrying it.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return permanentError{err: err}
}

// IsPermanent reports whether err, or an error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p permanentError
	return errors.As(err, &p)
}

// unavailableError marks an error that says a handler's dependency was
// out of reach, not that anything is wrong with the message.
type unavailableError struct{ err error }

func (e unavailableError) Error() string { return e.err.Error() }
func (e unavailableError) Unwrap() error { return e.err }

// Unavailable marks err as an outage: the handler could not reach what it
// needs (its database, a mail server), so the attempt says nothing about
// the message. A handler returning it has the message retried through the
// retry queues like any failure, but the retry is not counted as an
// attempt (the delays grow along the same ladder, counted by
// HeaderOutageRetries), so an outage of any length dead-letters nothing;
// the message waits in the retry queues until the dependency is back.
func Unavailable(err error) error {
	if err == nil {
		return nil
	}
	return unavailableError{err: err}
}

// IsUnavailable reports whether err, or an error it wraps, was marked
// with Unavailable.
func IsUnavailable(err error) bool {
	var u unavailableError
	return errors.As(err, &u)
}

// Decode returns the event m carries, decoded by its type from the types
// linked into the program (the generated packages register themselves).
func Decode(m Message) (proto.Message, error) {
	mt, err := protoregistry.GlobalTypes.FindMessageByName(protoreflect.FullName(m.Type))
	if err != nil {
		return nil, fmt.Errorf("decode %s %s: unknown type: %w", m.Type, m.ID, err)
	}
	ev := mt.New().Interface()
	if err := proto.Unmarshal(m.Body, ev); err != nil {
		return nil, fmt.Errorf("decode %s %s: %w", m.Type, m.ID, err)
	}
	return ev, nil
}

// ErrInvalidOrderID is wrapped by ParseOrderID's error.
var ErrInvalidOrderID = errors.New("order id is not a UUID")

// ParseOrderID returns an event's order id in canonical form (lower case,
// hyphenated), so ids a handler compares or uses as keys agree however the
// producer wrote them, or a permanent error wrapping ErrInvalidOrderID: an
// event without a valid order id can never be applied. The events' schemas
// require a UUID already; handlers check again because they key their
// work by it.
func ParseOrderID(id string) (string, error) {
	u, err := uuid.Parse(id)
	if err != nil {
		return "", Permanent(fmt.Errorf("parse order id %q: %w", id, ErrInvalidOrderID))
	}
	return u.String(), nil
}
