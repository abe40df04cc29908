package eventbus

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Config configures a Publisher, a Subscriber or a DLQ. The zero value of
// every field but Service means its default; see WithDefaults.
type Config struct {
	// URL is the AMQP URL of the broker, amqp:// or amqps:// (TLS, with
	// the query parameters CheckURL lists). Default
	// "amqp://guest:guest@127.0.0.1:5672/".
	URL string
	// Prefix is prepended to every exchange and queue name so tenants and
	// tests can share one broker, e.g. "test-1a2b." gives the exchange
	// "test-1a2b.ordermesh.events". Default empty.
	Prefix string
	// Service names the producing or consuming service: it is the queue
	// name of a Subscriber, the default app_id of a Publisher, and part of
	// every connection name. Required.
	Service string

	// Prefetch is the consumer's QoS prefetch count. Default 200.
	Prefetch int
	// Concurrency is the number of handlers a Subscriber runs at once.
	// Default 8.
	Concurrency int
	// AckDelay is the longest a Subscriber holds a handled delivery's ack
	// to send it with others: one ack with AMQP's multiple flag settles a
	// run of deliveries, at about the broker's cost of settling one. It
	// sends a run once Prefetch/4 acks wait in it or no other delivery is
	// in a handler, so an idle consumer acks at once. Default 5ms;
	// negative sends every ack on its own at once.
	AckDelay time.Duration
	// RetryDelays is the delayed-retry ladder: after a handler error on
	// attempt n the message waits RetryDelays[n-1] (the last delay once the
	// ladder is exhausted) before its next attempt. Each delay is one TTL
	// queue "<prefix><service>.retry.<delay>". Default 1s, 10s, 60s.
	RetryDelays []time.Duration
	// MaxAttempts is the number of handler attempts before a failing
	// message is dead-lettered. Default len(RetryDelays)+1.
	MaxAttempts int
	// DeliveryLimit is the service queue's x-delivery-limit: a message
	// the broker delivered this many times without a settlement (a
	// consumer crash loop) is dead-lettered by the broker. Default 20.
	DeliveryLimit int

	// Heartbeat is the AMQP heartbeat interval, in whole seconds (the
	// protocol's unit; at least 1s). RabbitMQ sends a heartbeat every half
	// interval, and amqp091-go takes the connection for dead when nothing
	// came for three of those: 1.5 × Heartbeat. Default 1s, so a silently
	// lost link shows as down within the 5 s health services promise.
	Heartbeat time.Duration
	// DialTimeout bounds the TCP connect and the AMQP handshake. Default 5s.
	DialTimeout time.Duration
	// CallTimeout bounds every synchronous broker call (declare, bind,
	// qos, consume, cancel, get, purge). A call that exceeds it closes its
	// connection, which then reconnects. Default 10s.
	CallTimeout time.Duration
	// ConfirmTimeout bounds how long Publish waits for broker confirms when
	// its context has no earlier deadline. Default 30s.
	ConfirmTimeout time.Duration
	// HandlerTimeout bounds one handler call through its context. Default
	// 30s.
	HandlerTimeout time.Duration
	// ReconnectMin and ReconnectMax bound the exponential reconnect
	// backoff. Defaults 100ms and 2s, so a link is back within a few
	// seconds of the broker's return.
	ReconnectMin time.Duration
	ReconnectMax time.Duration

	// Metrics receives counters; default NopMetrics.
	Metrics Metrics
}

// DefaultURL is the broker URL used when Config.URL is empty.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// WithDefaults returns c with every zero field set to its default, or an
// error naming the first invalid field.
func (c Config) WithDefaults() (Config, error) {
	if c.Service == "" {
		return c, errors.New("eventbus config: Service is required")
	}
	if c.URL == "" {
		c.URL = DefaultURL
	}
	if c.Prefetch == 0 {
		c.Prefetch = 200
	}
	if c.Concurrency == 0 {
		c.Concurrency = 8
	}
	if len(c.RetryDelays) == 0 {
		c.RetryDelays = []time.Duration{time.Second, 10 * time.Second, 60 * time.Second}
	} else {
		c.RetryDelays = slices.Clone(c.RetryDelays)
	}
	if c.MaxAttempts == 0 {
		c.MaxAttempts = len(c.RetryDelays) + 1
	}
	if c.DeliveryLimit == 0 {
		c.DeliveryLimit = 20
	}
	if c.Heartbeat == 0 {
		c.Heartbeat = time.Second
	}
	if c.DialTimeout == 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.CallTimeout == 0 {
		c.CallTimeout = 10 * time.Second
	}
	if c.ConfirmTimeout == 0 {
		c.ConfirmTimeout = 30 * time.Second
	}
	if c.HandlerTimeout == 0 {
		c.HandlerTimeout = 30 * time.Second
	}
	if c.AckDelay == 0 {
		c.AckDelay = 5 * time.Millisecond
	}
	if c.ReconnectMin == 0 {
		c.ReconnectMin = 100 * time.Millisecond
	}
	if c.ReconnectMax == 0 {
		c.ReconnectMax = 2 * time.Second
	}
	if c.Metrics == nil {
		c.Metrics = NopMetrics{}
	}
	if err := CheckURL(c.URL); err != nil {
		return c, fmt.Errorf("eventbus config: URL: %w", err)
	}

	switch {
	case c.Prefetch < 0 || c.Prefetch > 65535:
		return c, fmt.Errorf("eventbus config: Prefetch %d out of range 1..65535", c.Prefetch)
	case c.Concurrency < 0:
		return c, fmt.Errorf("eventbus config: Concurrency %d is negative", c.Concurrency)
	case c.MaxAttempts < 1:
		return c, fmt.Errorf("eventbus config: MaxAttempts %d is below 1", c.MaxAttempts)
	case c.DeliveryLimit < 1:
		return c, fmt.Errorf("eventbus config: DeliveryLimit %d is below 1", c.DeliveryLimit)
	case c.ReconnectMin > c.ReconnectMax:
		return c, fmt.Errorf("eventbus config: ReconnectMin %s exceeds ReconnectMax %s", c.ReconnectMin, c.ReconnectMax)
	}
	for _, d := range c.RetryDelays {
		if d < time.Millisecond {
			return c, fmt.Errorf("eventbus config: retry delay %s is below 1ms", d)
		}
	}
	if c.Heartbeat < time.Second || c.Heartbeat%time.Second != 0 {
		// amqp091-go would take less than 1s for "the server's" (60s on
		// RabbitMQ) and drop the fraction.
		return c, fmt.Errorf("eventbus config: heartbeat %s is not a whole number of seconds, at least 1s", c.Heartbeat)
	}
	for _, d := range []time.Duration{c.DialTimeout, c.CallTimeout, c.ConfirmTimeout, c.HandlerTimeout, c.ReconnectMin} {
		if d < 0 {
			return c, fmt.Errorf("eventbus config: negative duration %s", d)
		}
	}
	return c, nil
}

// ExchangeName is the topic exchange every event is published to:
// "<prefix>ordermesh.events".
func (c Config) ExchangeName() string { return c.Prefix + "ordermesh.events" }

// QueueName is the service's quorum queue: "<prefix><service>".
func (c Config) QueueName() string { return c.Prefix + c.Service }

// DLQName is the service's parking-lot queue: "<prefix><service>.dlq".
func (c Config) DLQName() string { return c.QueueName() + ".dlq" }

// RetryQueueName is the TTL queue of one retry delay:
// "<prefix><service>.retry.<delay>", with the delay written as "1s",
// "60s" or "250ms".
func (c Config) RetryQueueName(delay time.Duration) string {
	return c.QueueName() + ".retry." + formatDelay(delay)
}

// retryDelay is the wait before attempt next (2 or more).
func (c Config) retryDelay(next int) time.Duration {
	i := min(next-2, len(c.RetryDelays)-1)
	return c.RetryDelays[max(i, 0)]
}

// connectionName is the client-provided connection name, which lets
// operators and tests find this process's connections on the broker.
func (c Config) connectionName(role string) string {
	return c.Prefix + c.Service + "." + role
}

func formatDelay(d time.Duration) string {
	if d%time.Second == 0 {
		return strconv.FormatInt(int64(d/time.Second), 10) + "s"
	}
	return strconv.FormatInt(d.Milliseconds(), 10) + "ms"
}
