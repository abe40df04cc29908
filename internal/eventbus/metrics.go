package eventbus

import "time"

// Labels identify the event a metric is about.
type Labels struct {
	RoutingKey string
	Type       string
}

// Metrics receives the bus's counters. Implementations must be safe for
// concurrent use and must not block: they run on the publish and consume
// paths. Embed NopMetrics to implement only some of them.
type Metrics interface {
	// Published counts a message written to the broker.
	Published(l Labels)
	// Confirmed counts a broker confirm: ack false is a broker nack.
	Confirmed(l Labels, ack bool)
	// Returned counts a mandatory message the broker could not route.
	Returned(l Labels)
	// Consumed counts a delivery handed to the subscriber.
	Consumed(l Labels)
	// Acked counts a delivery handled and acked; d is the handling time.
	Acked(l Labels, d time.Duration)
	// Retried counts a delivery sent to the retry ladder for attempt next.
	Retried(l Labels, next int)
	// OutageRetried counts a delivery sent to the retry ladder for an
	// outage of its handler's dependency (Unavailable): no attempt counted.
	OutageRetried(l Labels)
	// DeadLettered counts a delivery sent to the dead-letter queue.
	DeadLettered(l Labels, reason string)
}

// NopMetrics discards every metric.
type NopMetrics struct{}

var _ Metrics = NopMetrics{}

// Published implements Metrics.
func (NopMetrics) Published(Labels) {}

// Confirmed implements Metrics.
func (NopMetrics) Confirmed(Labels, bool) {}

// Returned implements Metrics.
func (NopMetrics) Returned(Labels) {}

// Consumed implements Metrics.
func (NopMetrics) Consumed(Labels) {}

// Acked implements Metrics.
func (NopMetrics) Acked(Labels, time.Duration) {}

// Retried implements Metrics.
func (NopMetrics) Retried(Labels, int) {}

// OutageRetried implements Metrics.
func (NopMetrics) OutageRetried(Labels) {}

// DeadLettered implements Metrics.
func (NopMetrics) DeadLettered(Labels, string) {}
