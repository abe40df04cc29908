package eventbus

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	amqp "github.com/rabbitmq/amqp091-go"
)

func TestConfigNames(t *testing.T) {
	cfg, err := Config{Prefix: "t1.", Service: "inventory"}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	got := []string{cfg.ExchangeName(), cfg.QueueName(), cfg.DLQName(),
		cfg.RetryQueueName(cfg.RetryDelays[0]), cfg.RetryQueueName(cfg.RetryDelays[2]),
		cfg.RetryQueueName(250 * time.Millisecond), cfg.connectionName("publisher")}
	want := []string{"t1.ordermesh.events", "t1.inventory", "t1.inventory.dlq",
		"t1.inventory.retry.1s", "t1.inventory.retry.60s", "t1.inventory.retry.250ms", "t1.inventory.publisher"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("names (-want +got):\n%s", diff)
	}
}

func TestConfigDefaultsAndValidation(t *testing.T) {
	cfg, err := Config{Service: "order"}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Prefetch != 200 || cfg.Concurrency != 8 || cfg.MaxAttempts != 4 || cfg.DeliveryLimit != 20 ||
		cfg.URL != DefaultURL || cfg.Heartbeat != time.Second {
		t.Errorf("defaults = %+v", cfg)
	}
	tests := []struct {
		name string
		cfg  Config
	}{
		{"no service", Config{}},
		{"prefetch too large", Config{Service: "s", Prefetch: 70000}},
		{"negative attempts", Config{Service: "s", MaxAttempts: -1}},
		{"tiny retry delay", Config{Service: "s", RetryDelays: []time.Duration{time.Microsecond}}},
		{"backoff inverted", Config{Service: "s", ReconnectMin: time.Minute, ReconnectMax: time.Second}},
		{"heartbeat under a second", Config{Service: "s", Heartbeat: 500 * time.Millisecond}},
		{"heartbeat not whole seconds", Config{Service: "s", Heartbeat: 1500 * time.Millisecond}},
		{"negative heartbeat", Config{Service: "s", Heartbeat: -time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := tt.cfg.WithDefaults(); err == nil {
				t.Error("want error")
			}
		})
	}
}

func TestRetryDelayLadder(t *testing.T) {
	cfg, err := Config{Service: "s", RetryDelays: []time.Duration{time.Second, 2 * time.Second}, MaxAttempts: 5}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	var got []time.Duration
	for next := 2; next <= 5; next++ {
		got = append(got, cfg.retryDelay(next))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 2 * time.Second, 2 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("delays (-want +got):\n%s", diff)
	}
}

func TestMetaFromDelivery(t *testing.T) {
	ts := time.Unix(1700000000, 0)
	const traceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	tests := []struct {
		name string
		d    amqp.Delivery
		want Meta
	}{
		{
			name: "first delivery",
			d: amqp.Delivery{MessageId: "id1", Type: "T", RoutingKey: "order.created", AppId: "order",
				Timestamp: ts, CorrelationId: "o1", Headers: amqp.Table{"traceparent": traceParent, "tracestate": "k=v"}},
			want: Meta{ID: "id1", Type: "T", RoutingKey: "order.created", Source: "order", Time: ts,
				CorrelationID: "o1", TraceParent: traceParent, TraceState: "k=v", Attempt: 1},
		},
		{
			// What the handler's events would inherit, and PostgreSQL
			// refuse in the outbox, is left out.
			name: "correlation id and trace state that cannot be stored",
			d: amqp.Delivery{MessageId: "id1", CorrelationId: "o1\x00",
				Headers: amqp.Table{"traceparent": traceParent, "tracestate": "k=v\x00"}},
			want: Meta{ID: "id1", TraceParent: traceParent, Attempt: 1},
		},
		{
			name: "correlation id not UTF-8, trace parent malformed",
			d: amqp.Delivery{MessageId: "id1", CorrelationId: "o\xff1",
				Headers: amqp.Table{"traceparent": []byte("00-\x00"), "tracestate": "k=v"}},
			want: Meta{ID: "id1", Attempt: 1},
		},
		{
			name: "retried",
			d: amqp.Delivery{MessageId: "id1", RoutingKey: "test.orders", Redelivered: true,
				Headers: amqp.Table{HeaderAttempt: int32(3), HeaderRoutingKey: "order.created"}},
			want: Meta{ID: "id1", RoutingKey: "order.created", Attempt: 3, Redelivered: true},
		},
		{
			name: "time to the nanosecond",
			d: amqp.Delivery{Timestamp: ts, Headers: amqp.Table{
				HeaderTime: "2023-11-14T22:13:20.123456789Z",
			}},
			want: Meta{Time: time.Date(2023, 11, 14, 22, 13, 20, 123456789, time.UTC), Attempt: 1},
		},
		{
			name: "time header not a time",
			d:    amqp.Delivery{Timestamp: ts, Headers: amqp.Table{HeaderTime: "yesterday"}},
			want: Meta{Time: ts, Attempt: 1},
		},
		{
			name: "attempt as int64",
			d:    amqp.Delivery{Headers: amqp.Table{HeaderAttempt: int64(2)}},
			want: Meta{Attempt: 2},
		},
		{
			name: "retried for an outage",
			d:    amqp.Delivery{Headers: amqp.Table{HeaderAttempt: int32(2), HeaderOutageRetries: int32(7)}},
			want: Meta{Attempt: 2, OutageRetries: 7},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, metaFromDelivery(tt.d)); diff != "" {
				t.Errorf("meta (-want +got):\n%s", diff)
			}
		})
	}
}
