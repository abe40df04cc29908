package eventbus

import (
	"context"
	"errors"
	"fmt"

	amqp "github.com/rabbitmq/amqp091-go"
)

// Topology, all durable and declared idempotently on every (re)connect:
//
//	<prefix>ordermesh.events          topic exchange; publishers send here
//	<prefix><service>                 quorum queue bound to the routing keys
//	                                  of the service's handlers; x-delivery-limit
//	                                  dead-letters crash loops to the DLQ
//	<prefix><service>.retry.<delay>   quorum queue with x-message-ttl; expired
//	                                  messages dead-letter at least once
//	                                  through the default exchange back to
//	                                  <prefix><service>
//	<prefix><service>.dlq             classic queue, the parking lot
//
// Retries and dead letters are published by the subscriber through the
// default exchange straight to the queue's name, so they reach only this
// service and never other services bound to the same routing key. The
// parking-lot queue is classic so repeated peeks (requeues) behave the same
// on RabbitMQ 3.10 and 4.x, where quorum queues would count each peek
// against a delivery limit. The retry queues are never peeked; they are
// quorum queues because only those dead-letter at least once (3.10+): a
// classic queue's expired message is lost if the broker stops while moving
// it back.

// declareExchange declares the topic exchange.
func declareExchange(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel, cfg Config) error {
	return call(ctx, conn, cfg.CallTimeout, "declare exchange "+cfg.ExchangeName(), func() error {
		return ch.ExchangeDeclare(cfg.ExchangeName(), amqp.ExchangeTopic, true, false, false, false, nil)
	})
}

// declareTopology declares the exchange and the service's queues and binds
// the service queue to keys.
func declareTopology(ctx context.Context, conn *amqp.Connection, ch *amqp.Channel, cfg Config, keys []string) error {
	if err := declareExchange(ctx, conn, ch, cfg); err != nil {
		return err
	}
	queues := []struct {
		name string
		args amqp.Table
	}{
		{cfg.DLQName(), amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeClassic}},
		{cfg.QueueName(), amqp.Table{
			amqp.QueueTypeArg:           amqp.QueueTypeQuorum,
			"x-delivery-limit":          int32(cfg.DeliveryLimit),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": cfg.DLQName(),
			// At-least-once dead-lettering (3.10+) keeps a crash-looping
			// message until the DLQ confirms it; it requires reject-publish.
			"x-dead-letter-strategy": "at-least-once",
			"x-overflow":             "reject-publish",
		}},
	}
	for _, d := range cfg.RetryDelays {
		queues = append(queues, struct {
			name string
			args amqp.Table
		}{cfg.RetryQueueName(d), amqp.Table{
			amqp.QueueTypeArg:           amqp.QueueTypeQuorum,
			"x-message-ttl":             d.Milliseconds(),
			"x-dead-letter-exchange":    "",
			"x-dead-letter-routing-key": cfg.QueueName(),
			// A classic queue dead-letters at most once: a broker crash
			// or restart while a message moves back to the service
			// queue loses it.
			"x-dead-letter-strategy": "at-least-once",
			"x-overflow":             "reject-publish",
		}})
	}
	for _, q := range queues {
		err := call(ctx, conn, cfg.CallTimeout, "declare queue "+q.name, func() error {
			_, err := ch.QueueDeclare(q.name, true, false, false, false, q.args)
			return err
		})
		var amqpErr *amqp.Error
		if errors.As(err, &amqpErr) && amqpErr.Code == amqp.PreconditionFailed {
			return fmt.Errorf("%w (the queue exists with other settings, e.g. made by an older ordermesh: "+
				"once it is empty, delete it with 'rabbitmqctl delete_queue %s' and it is declared anew)", err, q.name)
		}
		if err != nil {
			return err
		}
	}
	for _, key := range keys {
		err := call(ctx, conn, cfg.CallTimeout, fmt.Sprintf("bind %s to %s", cfg.QueueName(), key), func() error {
			return ch.QueueBind(cfg.QueueName(), key, cfg.ExchangeName(), false, nil)
		})
		if err != nil {
			return err
		}
	}
	return nil
}
