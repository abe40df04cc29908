package bench

import (
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// eventSink is a quorum queue bound to the order events under a prefix, so
// an order service running without the workers still has its events
// routed (and its outbox relay working as in production). It keeps at most
// the newest 10,000 messages.
type eventSink struct {
	conn  *amqp.Connection
	queue string
}

func newEventSink(amqpURL, prefix string) (*eventSink, error) {
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": prefix + "sink"}})
	if err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	s := &eventSink{conn: conn, queue: prefix + "bench.sink"}
	ch, err := conn.Channel()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	if _, err := ch.QueueDeclare(s.queue, true, false, false, false, amqp.Table{
		"x-queue-type": "quorum", "x-max-length": 10000, "x-overflow": "drop-head",
	}); err != nil {
		conn.Close()
		return nil, fmt.Errorf("declare %s: %w", s.queue, err)
	}
	if err := ch.QueueBind(s.queue, "order.#", eventbus.Config{Prefix: prefix}.ExchangeName(), false, nil); err != nil {
		conn.Close()
		return nil, fmt.Errorf("bind %s: %w", s.queue, err)
	}
	return s, nil
}

// Close deletes the queue.
func (s *eventSink) Close() error {
	defer s.conn.Close()
	ch, err := s.conn.Channel()
	if err != nil {
		return fmt.Errorf("delete %s: %w", s.queue, err)
	}
	defer ch.Close()
	if _, err := ch.QueueDelete(s.queue, false, false, false); err != nil {
		return fmt.Errorf("delete %s: %w", s.queue, err)
	}
	return nil
}
