package main

import (
	"context"
	"encoding/json"
	"io"
	"maps"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/testport"
)

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	if cfg.HTTPAddr != ":8080" || cfg.OrderAddr != "127.0.0.1:50051" || cfg.BodyTimeout != 30*time.Second || cfg.WriteTimeout != 30*time.Second ||
		cfg.UpstreamTimeout != 10*time.Second || cfg.ShutdownTimeout != 10*time.Second || cfg.MaxBodyBytes != 1<<20 || cfg.DrainDelay != 0 {
		t.Errorf("defaults: %+v", cfg)
	}
	_, err = loadConfig(func(k string) string {
		return map[string]string{
			"ORDERMESH_BODY_TIMEOUT":   "0s",
			"ORDERMESH_WRITE_TIMEOUT":  "-1s",
			"ORDERMESH_MAX_BODY_BYTES": "-1",
			"ORDERMESH_HTTP_ADDR":      "nowhere",
			"ORDERMESH_DRAIN_DELAY":    "-1s",
		}[k]
	})
	if err == nil {
		t.Fatal("want an error")
	}
	for _, want := range []string{"ORDERMESH_BODY_TIMEOUT: must be positive", "ORDERMESH_WRITE_TIMEOUT: must be positive", "ORDERMESH_MAX_BODY_BYTES: must be positive", "ORDERMESH_HTTP_ADDR", "ORDERMESH_DRAIN_DELAY: must be zero or more"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
}

// slowOrders answers CreateOrder after delay and signals each call's start.
type slowOrders struct {
	orderv1.UnimplementedOrderServiceServer
	delay   time.Duration
	started chan struct{}
}

func (s *slowOrders) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	s.started <- struct{}{}
	select {
	case <-time.After(s.delay):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &orderv1.CreateOrderResponse{Order: &orderv1.Order{
		Id: "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70", CustomerEmail: req.GetCustomerEmail(),
		Status: orderv1.OrderStatus_ORDER_STATUS_PENDING, CreateTime: timestamppb.Now(), UpdateTime: timestamppb.Now(),
	}}, nil
}

// TestRunServesAndDrains runs the gateway in front of an order service
// that takes its time, and stops it while a CreateOrder is in flight:
// the call completes, and run returns nil.
func TestRunServesAndDrains(t *testing.T) {
	orders := &slowOrders{delay: 500 * time.Millisecond, started: make(chan struct{}, 1)}
	gw := runGateway(t, func(srv *grpc.Server) { orderv1.RegisterOrderServiceServer(srv, orders) }, nil)
	base := gw.base

	// /healthz: the upstream serves no health service, so not serving.
	resp, err := http.Get(base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	var health struct{ Status string }
	err = json.NewDecoder(resp.Body).Decode(&health)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusServiceUnavailable || health.Status != "NOT_SERVING" {
		t.Errorf("/healthz: %d %+v (%v), want 503 NOT_SERVING", resp.StatusCode, health, err)
	}

	type result struct {
		status int
		body   string
		err    error
	}
	got := make(chan result, 1)
	go func() {
		resp, err := http.Post(base+"/v1/orders", "application/json", strings.NewReader(
			`{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com"}`))
		if err != nil {
			got <- result{err: err}
			return
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		got <- result{status: resp.StatusCode, body: string(b), err: err}
	}()
	select {
	case <-orders.started:
	case <-time.After(10 * time.Second):
		t.Fatal("CreateOrder never reached the order service")
	}
	gw.stop() // as SIGTERM does
	select {
	case r := <-got:
		if r.err != nil || r.status != http.StatusOK || !strings.Contains(r.body, `"ada@example.com"`) {
			t.Errorf("CreateOrder in flight at shutdown: %d %q %v, want 200 with the order", r.status, r.body, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("CreateOrder in flight at shutdown never answered")
	}
	if err := gw.wait(t); err != nil {
		t.Errorf("run = %v, want nil after a drained shutdown", err)
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the gateway still answers after run returned")
	}
}

// TestRunCutsOffWhatOutlastsTheDrain stops the gateway while a CreateOrder
// takes longer than the shutdown timeout: the connection is cut off once
// the timeout has passed, and run returns nil, as the services do.
func TestRunCutsOffWhatOutlastsTheDrain(t *testing.T) {
	orders := &slowOrders{delay: time.Minute, started: make(chan struct{}, 1)}
	gw := runGateway(t, func(srv *grpc.Server) { orderv1.RegisterOrderServiceServer(srv, orders) }, map[string]string{
		"ORDERMESH_SHUTDOWN_TIMEOUT": "300ms",
		"ORDERMESH_UPSTREAM_TIMEOUT": "1m",
	})
	base := gw.base
	failed := make(chan error, 1)
	go func() {
		resp, err := http.Post(base+"/v1/orders", "application/json", strings.NewReader(
			`{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com"}`))
		if err == nil {
			resp.Body.Close()
		}
		failed <- err
	}()
	select {
	case <-orders.started:
	case <-time.After(10 * time.Second):
		t.Fatal("CreateOrder never reached the order service")
	}
	gw.stop() // as SIGTERM does
	if err := gw.wait(t); err != nil {
		t.Errorf("run = %v, want nil after the drain timed out", err)
	}
	select {
	case err := <-failed:
		if err == nil {
			t.Error("the CreateOrder that outlasted the drain got a response, want its connection cut off")
		}
	case <-time.After(10 * time.Second):
		t.Error("the CreateOrder that outlasted the drain was not cut off")
	}
}

// TestRunDrainDelay: after shutdown began the gateway goes on answering
// for ORDERMESH_DRAIN_DELAY, /healthz 503 NOT_SERVING, then stops; its
// admin endpoint serves metrics until then.
func TestRunDrainDelay(t *testing.T) {
	hs := health.NewServer()
	hs.SetServingStatus("ordermesh.order.v1.OrderService", healthpb.HealthCheckResponse_SERVING)
	const delay = time.Second
	admin := testport.Addr(t)
	gw := runGateway(t, func(srv *grpc.Server) { healthpb.RegisterHealthServer(srv, hs) }, map[string]string{
		"ORDERMESH_DRAIN_DELAY": delay.String(),
		"ORDERMESH_ADMIN_ADDR":  admin,
	})
	get := func(url string) (int, error) {
		client := http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		resp, err := client.Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	healthz := func() (int, error) { return get(gw.base + "/healthz") }
	metrics := func() (int, error) { return get("http://" + admin + "/metrics") }
	if code, err := healthz(); code != http.StatusOK {
		t.Fatalf("/healthz before shutdown: %d %v, want 200", code, err)
	}

	gw.stop() // as SIGTERM does
	stopped := time.Now()
	var answered time.Duration
	last, scraped := 0, 0
	for time.Since(stopped) < 30*time.Second {
		code, err := healthz()
		if err != nil {
			break
		}
		answered, last = time.Since(stopped), code
		if code == http.StatusServiceUnavailable {
			if code, err := metrics(); code != http.StatusOK {
				t.Errorf("/metrics %v after shutdown began, while the gateway drained: %d %v, want 200", time.Since(stopped).Round(time.Millisecond), code, err)
			} else {
				scraped++
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The lower bound is the delay the test configured, not a speed.
	if answered < delay/2 || last != http.StatusServiceUnavailable {
		t.Errorf("after shutdown began the gateway last answered %v after, /healthz %d; want 503 for about %v", answered.Round(time.Millisecond), last, delay)
	}
	if scraped == 0 {
		t.Error("no /metrics answered while the gateway drained")
	}
	if err := gw.wait(t); err != nil {
		t.Errorf("run = %v, want nil", err)
	}
	if _, err := metrics(); err == nil {
		t.Error("/metrics answered after the gateway stopped")
	}
}

// runningGateway is run serving in a test, in front of an upstream of the
// test's.
type runningGateway struct {
	base string // http://host:port
	stop context.CancelFunc
	done <-chan error
}

// runGateway serves what register registers over gRPC on loopback as both
// upstreams, runs the gateway in front of it with env added to its
// environment, and returns once it listens. The gateway stops when the
// test ends, if the test did not stop it first.
func runGateway(t *testing.T, register func(*grpc.Server), env map[string]string) *runningGateway {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	all := map[string]string{
		"ORDERMESH_HTTP_ADDR":      "127.0.0.1:0",
		"ORDERMESH_ORDER_ADDR":     lis.Addr().String(),
		"ORDERMESH_INVENTORY_ADDR": lis.Addr().String(),
		"ORDERMESH_LOG_LEVEL":      "error",
		"ORDERMESH_ADMIN_ADDR":     "off",
	}
	maps.Copy(all, env)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ready := make(chan net.Addr, 1)
	done := make(chan error, 1)
	go func() { done <- run(ctx, func(k string) string { return all[k] }, io.Discard, ready) }()
	select {
	case addr := <-ready:
		return &runningGateway{base: "http://" + addr.String(), stop: cancel, done: done}
	case err := <-done:
		t.Fatalf("run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the gateway did not start listening")
	}
	return nil
}

// wait waits for run to return after stop and returns its error.
func (g *runningGateway) wait(t *testing.T) error {
	t.Helper()
	select {
	case err := <-g.done:
		return err
	case <-time.After(30 * time.Second):
		t.Fatal("run did not return within 30 s of the shutdown")
		return nil
	}
}

// TestRunServesMetrics: the admin address serves the gateway's request
// metrics (and the Go runtime's).
func TestRunServesMetrics(t *testing.T) {
	admin := testport.Addr(t)
	orders := &slowOrders{delay: 0, started: make(chan struct{}, 1)}
	gw := runGateway(t, func(srv *grpc.Server) { orderv1.RegisterOrderServiceServer(srv, orders) }, map[string]string{
		"ORDERMESH_ADMIN_ADDR": admin,
	})
	resp, err := http.Post(gw.base+"/v1/orders", "application/json", strings.NewReader(
		`{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com"}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	resp, err = http.Get("http://" + admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`ordermesh_gateway_requests_total{code="200",route="POST /v1/orders"} 1`, "go_goroutines"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}

func TestRunNamesTheAddressItCannotListenOn(t *testing.T) {
	busy, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer busy.Close()
	env := map[string]string{"ORDERMESH_HTTP_ADDR": busy.Addr().String(), "ORDERMESH_ADMIN_ADDR": "off"}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = run(ctx, func(k string) string { return env[k] }, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), "ORDERMESH_HTTP_ADDR") {
		t.Fatalf("run = %v, want an error naming ORDERMESH_HTTP_ADDR", err)
	}
}

// countingOrders answers CreateOrder and counts the calls it served.
type countingOrders struct {
	orderv1.UnimplementedOrderServiceServer
	calls atomic.Int64
}

func (c *countingOrders) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	c.calls.Add(1)
	return &orderv1.CreateOrderResponse{Order: &orderv1.Order{Id: "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70"}}, nil
}

// orderInstances serves n order service instances, each counting its
// CreateOrder calls and reporting its health (SERVING), until the test
// ends, and returns them, their health servers and the gateway's
// connection to them all: dialUpstream (with service, "" for none) of a
// name a resolver of the test's own answers with every instance's
// address, as DNS would.
func orderInstances(t *testing.T, n int, service string) ([]*countingOrders, []*health.Server, *grpc.ClientConn) {
	t.Helper()
	name := orderv1.OrderService_ServiceDesc.ServiceName
	instances, healths := make([]*countingOrders, n), make([]*health.Server, n)
	var addrs []resolver.Address
	for i := range instances {
		instances[i], healths[i] = &countingOrders{}, health.NewServer()
		healths[i].SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		orderv1.RegisterOrderServiceServer(srv, instances[i])
		healthpb.RegisterHealthServer(srv, healths[i])
		go func() { _ = srv.Serve(lis) }()
		t.Cleanup(srv.Stop)
		addrs = append(addrs, resolver.Address{Addr: lis.Addr().String()})
	}
	r := manual.NewBuilderWithScheme("orders")
	r.InitialState(resolver.State{Addresses: addrs})
	conn, err := dialUpstream("orders:///orders", service, grpc.WithResolvers(r))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return instances, healths, conn
}

// TestUpstreamCallsSpreadOverEveryAddress: an upstream name that resolves
// to several instances gets calls on each of them, not all on the first
// (gRPC's default policy, pick_first).
func TestUpstreamCallsSpreadOverEveryAddress(t *testing.T) {
	instances, _, conn := orderInstances(t, 2, orderv1.OrderService_ServiceDesc.ServiceName)
	client := orderv1.NewOrderServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// round_robin takes an instance in once its connection is up, so the
	// first calls may all go to the first one up; pick_first never
	// spreads them.
	for calls := 1; ; calls++ {
		if _, err := client.CreateOrder(ctx, &orderv1.CreateOrderRequest{}); err != nil {
			t.Fatal(err)
		}
		if instances[0].calls.Load() >= 5 && instances[1].calls.Load() >= 5 {
			break
		}
		if calls == 500 {
			t.Fatalf("after %d calls the instances served %d and %d; want them spread over both", calls, instances[0].calls.Load(), instances[1].calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
}

// TestUpstreamCallsGoToServingInstances: an instance whose health says
// NOT_SERVING for its service (in its drain delay, say) gets no calls,
// and the gateway's check of the service's health asks one that serves;
// once it serves again it gets calls again.
func TestUpstreamCallsGoToServingInstances(t *testing.T) {
	name := orderv1.OrderService_ServiceDesc.ServiceName
	instances, healths, conn := orderInstances(t, 2, name)
	healths[1].SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	client := orderv1.NewOrderServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for range 50 {
		if _, err := client.CreateOrder(ctx, &orderv1.CreateOrderRequest{}); err != nil {
			t.Fatal(err)
		}
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			t.Fatalf("health check through the gateway's client: %v, %v; want SERVING", resp.GetStatus(), err)
		}
	}
	if n := instances[1].calls.Load(); n != 0 || instances[0].calls.Load() != 50 {
		t.Fatalf("the NOT_SERVING instance got %d calls, the serving one %d; want none and 50", n, instances[0].calls.Load())
	}
	healths[1].SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	for calls := 1; instances[1].calls.Load() == 0; calls++ {
		if _, err := client.CreateOrder(ctx, &orderv1.CreateOrderRequest{}); err != nil {
			t.Fatal(err)
		}
		if calls == 500 {
			t.Fatal("the instance serving again got no call in 500")
		}
		time.Sleep(time.Millisecond)
	}
}

// TestUpstreamCallsWithoutAHealthName: with no health name, calls go to
// every instance, NOT_SERVING ones too, as the inventory service's do (it
// is NOT_SERVING without its broker, its stock calls working still).
func TestUpstreamCallsWithoutAHealthName(t *testing.T) {
	instances, healths, conn := orderInstances(t, 2, "")
	for _, h := range healths {
		h.SetServingStatus(orderv1.OrderService_ServiceDesc.ServiceName, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	client := orderv1.NewOrderServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for calls := 1; instances[0].calls.Load() == 0 || instances[1].calls.Load() == 0; calls++ {
		if _, err := client.CreateOrder(ctx, &orderv1.CreateOrderRequest{}); err != nil {
			t.Fatalf("call %d to NOT_SERVING instances: %v", calls, err)
		}
		if calls == 500 {
			t.Fatalf("after %d calls the instances served %d and %d; want both", calls, instances[0].calls.Load(), instances[1].calls.Load())
		}
		time.Sleep(time.Millisecond)
	}
}
