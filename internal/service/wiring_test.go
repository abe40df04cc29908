package service_test

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/service"
)

// TestHandlerTimeoutAndDrainDelayReachTheirParts runs a worker whose
// handler timeout (ORDERMESH_HANDLER_TIMEOUT) and shutdown timeout differ
// and which has a drain delay (ORDERMESH_DRAIN_DELAY): a batch runner from
// Service.NewBatchRunner bounds its transactions by the handler timeout,
// and on shutdown the gRPC server keeps answering, NOT_SERVING, for the
// drain delay before it stops.
func TestHandlerTimeoutAndDrainDelayReachTheirParts(t *testing.T) {
	name := "wired"
	prefix, schema := isolate(t, name, []time.Duration{time.Second})
	const handlerTimeout = 2 * time.Second
	cfg := service.Config{
		GRPCAddr:    "127.0.0.1:0",
		DatabaseURL: postgrestest.URL(), DatabaseSchema: schema,
		AMQPURL: platformtest.AMQPURL(), TopologyPrefix: prefix,
		Prefetch: 10, Concurrency: 2, RetryDelays: []time.Duration{time.Second},
		RelayInterval:   time.Minute,
		HandlerTimeout:  handlerTimeout,
		ShutdownTimeout: 20 * time.Second,
		DrainDelay:      2 * time.Second,
	}
	// What is left of the batch's time when its handler starts.
	left := make(chan time.Duration, 1)
	spec := service.Spec{
		Name:               name,
		BrokerGatesServing: true,
		Setup: func(ctx context.Context, s *service.Service) ([]service.Task, error) {
			b := s.NewBatchRunner(func(ctx context.Context, _ pgx.Tx, batch []inbox.Delivery) ([]inbox.Result, error) {
				d := time.Duration(-1)
				if deadline, ok := ctx.Deadline(); ok {
					d = time.Until(deadline)
				}
				select {
				case left <- d:
				default:
				}
				return make([]inbox.Result, len(batch)), nil
			})
			return nil, eventbus.Handle(s.Subscriber, inbox.WrapBatch[*orderv1.OrderCreated](b))
		},
	}
	ctx := context.Background()
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	svc := runService(t, spec, cfg, log)
	health := svc.health(t)
	waitHealth(t, health, "", healthpb.HealthCheckResponse_SERVING, 10*time.Second)

	pub := newPublisher(t, cfg, log)
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	ev := orderCreated("tok")
	if err := pub.PublishEvents(pctx, ev.OrderId, ev); err != nil {
		t.Fatalf("publish: %v", err)
	}
	select {
	case d := <-left:
		if d <= 0 || d > handlerTimeout {
			t.Errorf("the batch handler's context had %v left when it started, want a deadline within the handler timeout %v (the shutdown timeout is %v)", d, handlerTimeout, cfg.ShutdownTimeout)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the event did not reach the batch handler")
	}

	// Shutdown: the server goes on answering, NOT_SERVING, for the drain
	// delay; without it, it would stop answering within moments. (The
	// lower bound is the delay the test configured, not a speed.)
	svc.stop()
	stopped := time.Now()
	var answered time.Duration
	var last healthpb.HealthCheckResponse_ServingStatus
	for time.Since(stopped) < 30*time.Second {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err != nil {
			break
		}
		answered, last = time.Since(stopped), resp.GetStatus()
		time.Sleep(20 * time.Millisecond)
	}
	if answered < cfg.DrainDelay/2 || last != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("after shutdown began the server last answered %v after, with %v; want NOT_SERVING answers for about the drain delay %v", answered.Round(time.Millisecond), last, cfg.DrainDelay)
	}
	if err := svc.wait(t); err != nil {
		t.Errorf("run returned %v after shutdown", err)
	}
}
