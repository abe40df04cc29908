package eventbus

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
)

func TestTopologyNamesTheQueueToDeleteWhenAnOldOneDiffers(t *testing.T) {
	cfg := testConfig(t, "oldretry")
	conn := rawConn(t)
	old := cfg.RetryQueueName(cfg.RetryDelays[0])
	// Older ordermesh versions made the retry queues classic.
	if _, err := rawChannel(t, conn).QueueDeclare(old, true, false, false, false, amqp.Table{
		"x-message-ttl": cfg.RetryDelays[0].Milliseconds(),
	}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := declareTopology(ctx, conn, rawChannel(t, conn), cfg, []string{"order.created"})
	var amqpErr *amqp.Error
	if !errors.As(err, &amqpErr) || amqpErr.Code != amqp.PreconditionFailed {
		t.Fatalf("declareTopology = %v, want PRECONDITION_FAILED", err)
	}
	if want := "rabbitmqctl delete_queue " + old; !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not say %q", err, want)
	}
}
