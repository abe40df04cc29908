package service

import (
	"context"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
)

// metrics holds a service's Prometheus metrics: the event bus's, the
// inbox's and the outbox relay's counters, the outbox backlog, the broker
// link state, and the Go runtime's.
type metrics struct {
	registry *prometheus.Registry

	published, returned, consumed, acked *prometheus.CounterVec
	confirmed, retried, deadLettered     *prometheus.CounterVec
	outageRetried                        *prometheus.CounterVec
	handleSeconds                        *prometheus.HistogramVec
	inboxEvents                          *prometheus.CounterVec
	relayed, relayFailed                 prometheus.Counter
}

func newMetrics() *metrics {
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "ordermesh", Name: name, Help: help}, labels)
	}
	m := &metrics{
		registry:  prometheus.NewRegistry(),
		published: counter("eventbus_published_total", "Messages written to the broker.", "routing_key"),
		confirmed: counter("eventbus_confirmed_total", "Publisher confirms by result (ack or nack).", "routing_key", "result"),
		returned:  counter("eventbus_returned_total", "Mandatory messages the broker could not route.", "routing_key"),
		consumed:  counter("eventbus_consumed_total", "Deliveries handed to the subscriber.", "routing_key"),
		acked:     counter("eventbus_acked_total", "Deliveries handled and acked.", "routing_key"),
		retried:   counter("eventbus_retried_total", "Deliveries sent to the retry ladder.", "routing_key"),
		outageRetried: counter("eventbus_outage_retried_total",
			"Deliveries sent to the retry ladder because their handler's database or mail server was out of reach, counting no attempt.", "routing_key"),
		deadLettered: counter("eventbus_dead_lettered_total", "Deliveries sent to the dead-letter queue, by reason.", "routing_key", "reason"),
		handleSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ordermesh", Name: "eventbus_handle_seconds", Help: "Time to handle and ack a delivery.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16),
		}, []string{"routing_key"}),
		inboxEvents: counter("inbox_events_total", "Deliveries through the inbox by outcome (processed, duplicate, failed).", "outcome"),
		relayed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ordermesh", Name: "outbox_relayed_total", Help: "Outbox rows published, confirmed and deleted.",
		}),
		relayFailed: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "ordermesh", Name: "outbox_relay_failed_total", Help: "Outbox rows whose batch failed and stays for retry.",
		}),
	}
	m.registry.MustRegister(
		m.published, m.confirmed, m.returned, m.consumed, m.acked, m.retried, m.outageRetried, m.deadLettered,
		m.handleSeconds, m.inboxEvents, m.relayed, m.relayFailed,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// observeLinks exports the broker links' state and the outbox backlog,
// read at each scrape.
func (m *metrics) observeLinks(log *slog.Logger, pool *pgxpool.Pool, pub *eventbus.Publisher, sub *eventbus.Subscriber) {
	up := func(b bool) float64 {
		if b {
			return 1
		}
		return 0
	}
	m.registry.MustRegister(
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ordermesh", Name: "eventbus_link_up", Help: "1 while the role's broker link is up (publisher: connected with its channel; subscriber: its consumer subscribed).",
			ConstLabels: prometheus.Labels{"role": "publisher"},
		}, func() float64 { return up(pub.State().Up) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "ordermesh", Name: "eventbus_link_up", Help: "1 while the role's broker link is up (publisher: connected with its channel; subscriber: its consumer subscribed).",
			ConstLabels: prometheus.Labels{"role": "subscriber"},
		}, func() float64 { return up(sub.Subscribed()) }),
		&outboxCollector{log: log, pool: pool},
	)
}

// bus adapts the metrics to eventbus.Metrics.
func (m *metrics) bus() eventbus.Metrics { return busMetrics{m} }

type busMetrics struct{ m *metrics }

var _ eventbus.Metrics = busMetrics{}

func (b busMetrics) Published(l eventbus.Labels) { b.m.published.WithLabelValues(l.RoutingKey).Inc() }
func (b busMetrics) Confirmed(l eventbus.Labels, ack bool) {
	result := "ack"
	if !ack {
		result = "nack"
	}
	b.m.confirmed.WithLabelValues(l.RoutingKey, result).Inc()
}
func (b busMetrics) Returned(l eventbus.Labels) { b.m.returned.WithLabelValues(l.RoutingKey).Inc() }
func (b busMetrics) Consumed(l eventbus.Labels) { b.m.consumed.WithLabelValues(l.RoutingKey).Inc() }
func (b busMetrics) Acked(l eventbus.Labels, d time.Duration) {
	b.m.acked.WithLabelValues(l.RoutingKey).Inc()
	b.m.handleSeconds.WithLabelValues(l.RoutingKey).Observe(d.Seconds())
}
func (b busMetrics) Retried(l eventbus.Labels, _ int) {
	b.m.retried.WithLabelValues(l.RoutingKey).Inc()
}
func (b busMetrics) OutageRetried(l eventbus.Labels) {
	b.m.outageRetried.WithLabelValues(l.RoutingKey).Inc()
}
func (b busMetrics) DeadLettered(l eventbus.Labels, reason string) {
	b.m.deadLettered.WithLabelValues(l.RoutingKey, reason).Inc()
}

func (m *metrics) inbox() inbox.Metrics {
	return inbox.Metrics{
		Processed: func(eventbus.Meta) { m.inboxEvents.WithLabelValues("processed").Inc() },
		Duplicate: func(eventbus.Meta) { m.inboxEvents.WithLabelValues("duplicate").Inc() },
		Failed:    func(eventbus.Meta, error) { m.inboxEvents.WithLabelValues("failed").Inc() },
	}
}

func (m *metrics) outbox() outbox.Metrics {
	return outbox.Metrics{
		Published: func(n int) { m.relayed.Add(float64(n)) },
		Failed:    func(n int, _ error) { m.relayFailed.Add(float64(n)) },
	}
}

// outboxCollector reads the outbox backlog at scrape time.
type outboxCollector struct {
	log  *slog.Logger
	pool *pgxpool.Pool
}

var (
	outboxPendingDesc = prometheus.NewDesc("ordermesh_outbox_pending",
		"Outbox rows not yet confirmed by the broker: counted up to 100,000 a table, estimated beyond (see ordermesh_outbox_pending_estimated).", nil, nil)
	outboxEstimatedDesc = prometheus.NewDesc("ordermesh_outbox_pending_estimated",
		"1 when ordermesh_outbox_pending is an estimate (a backlog past 100,000 rows), 0 when it is a count.", nil, nil)
	outboxAgeDesc     = prometheus.NewDesc("ordermesh_outbox_oldest_age_seconds", "Age of the oldest pending outbox row (relay lag).", nil, nil)
	outboxStatsUpDesc = prometheus.NewDesc("ordermesh_outbox_stats_up",
		"1 when the outbox gauges could be read at this scrape, 0 when the database did not answer (the gauges are then missing).", nil, nil)
)

func (c *outboxCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- outboxPendingDesc
	ch <- outboxEstimatedDesc
	ch <- outboxAgeDesc
	ch <- outboxStatsUpDesc
}

func (c *outboxCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	st, err := outbox.ReadStats(ctx, c.pool)
	if err != nil {
		c.log.WarnContext(ctx, "metrics: read outbox stats", slog.Any("error", err))
		ch <- prometheus.MustNewConstMetric(outboxStatsUpDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(outboxStatsUpDesc, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(outboxPendingDesc, prometheus.GaugeValue, float64(st.Pending))
	estimated := 0.0
	if st.Estimated {
		estimated = 1
	}
	ch <- prometheus.MustNewConstMetric(outboxEstimatedDesc, prometheus.GaugeValue, estimated)
	ch <- prometheus.MustNewConstMetric(outboxAgeDesc, prometheus.GaugeValue, st.OldestAge.Seconds())
}
