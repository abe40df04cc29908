package service_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/internal/testport"
)

// TestHandlerTimeoutAndDrainDelayReachTheirParts runs a worker whose
// handler timeout (ORDERMESH_HANDLER_TIMEOUT) and shutdown timeout differ
// and which has a drain delay (ORDERMESH_DRAIN_DELAY): a batch runner from
// Service.NewBatchRunner bounds its transactions by the handler timeout,
// and on shutdown the gRPC server keeps answering, NOT_SERVING, for the
// drain delay before it stops, and the admin endpoint serves metrics
// meanwhile, until the service has stopped.
func TestHandlerTimeoutAndDrainDelayReachTheirParts(t *testing.T) {
	name := "wired"
	prefix, schema := isolate(t, name, []time.Duration{time.Second})
	const handlerTimeout = 2 * time.Second
	adminAddr := testport.Addr(t)
	cfg := service.Config{
		GRPCAddr:    "127.0.0.1:0",
		Admin:       telemetry.Admin{Addr: adminAddr},
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
	metrics := func() error {
		client := http.Client{Timeout: time.Second}
		resp, err := client.Get("http://" + adminAddr + "/metrics")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			return err
		}
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %s", resp.Status)
		}
		return nil
	}
	if err := metrics(); err != nil {
		t.Fatalf("GET /metrics while serving: %v", err)
	}
	svc.stop()
	stopped := time.Now()
	var answered time.Duration
	var last healthpb.HealthCheckResponse_ServingStatus
	var scrapedWhileDraining int
	for time.Since(stopped) < 30*time.Second {
		cctx, ccancel := context.WithTimeout(context.Background(), time.Second)
		resp, err := health.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err != nil {
			break
		}
		answered, last = time.Since(stopped), resp.GetStatus()
		if last == healthpb.HealthCheckResponse_NOT_SERVING {
			if err := metrics(); err != nil {
				t.Errorf("GET /metrics %v after shutdown began, while the server drained: %v", time.Since(stopped).Round(time.Millisecond), err)
			} else {
				scrapedWhileDraining++
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	if answered < cfg.DrainDelay/2 || last != healthpb.HealthCheckResponse_NOT_SERVING {
		t.Errorf("after shutdown began the server last answered %v after, with %v; want NOT_SERVING answers for about the drain delay %v", answered.Round(time.Millisecond), last, cfg.DrainDelay)
	}
	if scrapedWhileDraining == 0 {
		t.Error("no GET /metrics answered while the server drained")
	}
	if err := svc.wait(t); err != nil {
		t.Errorf("run returned %v after shutdown", err)
	}
	if err := metrics(); err == nil {
		t.Error("GET /metrics answered after the service stopped")
	}
}
