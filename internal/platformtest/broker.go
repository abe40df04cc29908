package platformtest

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// CloseConnections force-closes the connections of the local RabbitMQ
// node (rabbitmqctl) whose client-provided name starts with prefix — only
// the calling test's, when prefix is its own — and returns how many.
func CloseConnections(tb testing.TB, prefix string) int {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_connections", "--no-table-headers", "pid", "client_properties").CombinedOutput()
	if err != nil {
		tb.Fatalf("rabbitmqctl list_connections: %v\n%s", err, out)
	}
	n := 0
	for line := range strings.Lines(string(out)) {
		pid, props, ok := strings.Cut(strings.TrimSpace(line), "\t")
		if !ok || !strings.Contains(props, `{"connection_name","`+prefix) {
			continue
		}
		if out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "close_connection", pid, "test fault injection").CombinedOutput(); err != nil {
			tb.Fatalf("rabbitmqctl close_connection %s: %v\n%s", pid, err, out)
		}
		n++
	}
	return n
}

// DeleteTopology deletes, on the broker at url, the events exchange of
// prefix and the queues of services under it: each service queue, its
// dead-letter queue and its retry queue for each of delays.
func DeleteTopology(tb testing.TB, url, prefix string, services []string, delays []time.Duration) {
	tb.Helper()
	conn, err := amqp.DialConfig(url, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		tb.Errorf("delete topology %s: %v", prefix, err)
		return
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		tb.Errorf("delete topology %s: %v", prefix, err)
		return
	}
	defer ch.Close()
	for _, s := range services {
		cfg := eventbus.Config{Prefix: prefix, Service: s}
		names := []string{cfg.QueueName(), cfg.DLQName()}
		for _, d := range delays {
			names = append(names, cfg.RetryQueueName(d))
		}
		for _, q := range names {
			if _, err := ch.QueueDelete(q, false, false, false); err != nil {
				tb.Errorf("delete queue %s: %v", q, err)
				return
			}
		}
	}
	if err := ch.ExchangeDelete(eventbus.Config{Prefix: prefix}.ExchangeName(), false, false); err != nil {
		tb.Errorf("delete exchange of %s: %v", prefix, err)
	}
}
