package grpcserver

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"github.com/google/go-cmp/cmp"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/logging"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"

	"github.com/ordermesh/ordermesh/internal/logtest"
)

const (
	orderServiceName = "ordermesh.order.v1.OrderService"
	panicText        = "card 4242424242424242 exploded"
	validOrderID     = "0191d7a8-7c1e-7a4e-8b7e-2f1c3d4e5f60"
)

// orderService is a test OrderService: CreateOrder panics for the payment
// token "tok_panic", GetOrder blocks until released, WatchOrder panics for
// validOrderID's sibling and otherwise streams until the server drains.
type orderService struct {
	orderv1.UnimplementedOrderServiceServer
	draining <-chan struct{}
	started  chan struct{} // receives when GetOrder starts
	release  chan struct{} // closed to let GetOrder return
	// created, when set, receives whether Draining was closed when a
	// CreateOrder ran.
	created chan bool
	// linger is how long GetOrder goes on once its context ended (a
	// transaction finishing), and returned is closed when it returns.
	linger   time.Duration
	returned chan struct{}
}

func newOrderService() *orderService {
	return &orderService{started: make(chan struct{}, 1), release: make(chan struct{})}
}

func (s *orderService) CreateOrder(_ context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	if req.GetPaymentToken() == "tok_panic" {
		panic(panicText)
	}
	if s.created != nil {
		select {
		case <-s.draining:
			s.created <- true
		default:
			s.created <- false
		}
	}
	return &orderv1.CreateOrderResponse{Order: &orderv1.Order{Id: validOrderID, CustomerEmail: req.GetCustomerEmail()}}, nil
}

func (s *orderService) GetOrder(ctx context.Context, req *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	s.started <- struct{}{}
	select {
	case <-s.release:
		return &orderv1.GetOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId()}}, nil
	case <-ctx.Done():
		if s.returned != nil {
			time.Sleep(s.linger)
			close(s.returned)
		}
		return nil, status.Error(codes.Canceled, "canceled")
	}
}

func (s *orderService) WatchOrder(req *orderv1.WatchOrderRequest, stream grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	if req.GetOrderId() == strings.Replace(validOrderID, "0191", "0192", 1) {
		panic(panicText)
	}
	if err := stream.Send(&orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId()}}); err != nil {
		return err
	}
	select {
	case <-s.draining:
		return status.Error(codes.Unavailable, "server shutting down")
	case <-stream.Context().Done():
		return stream.Context().Err()
	}
}

type testServer struct {
	srv    *Server
	conn   *grpc.ClientConn
	logs   *logtest.Buffer
	cancel context.CancelFunc
	errc   chan error
}

// startServer serves svc on 127.0.0.1:0 and dials it. Cleanup stops the
// server and waits for Serve to return.
func startServer(t *testing.T, svc *orderService, opts ...Option) *testServer {
	t.Helper()
	log, logs := testLogger(t)
	srv, err := New(log, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	svc.draining = srv.Draining()
	orderv1.RegisterOrderServiceServer(srv, svc)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{srv: srv, logs: logs, cancel: cancel, errc: make(chan error, 1)}
	go func() { ts.errc <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ts.errc:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
			ts.errc <- err
		case <-time.After(15 * time.Second):
			t.Errorf("Serve did not return")
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	ts.conn = conn
	return ts
}

// stop cancels Serve's context and returns Serve's result and how long it
// took to return. It may be called from any goroutine.
func (ts *testServer) stop() (error, time.Duration) {
	start := time.Now()
	ts.cancel()
	select {
	case err := <-ts.errc:
		ts.errc <- err // for Cleanup
		return err, time.Since(start)
	case <-time.After(15 * time.Second):
		return errors.New("serve did not return within 15s"), time.Since(start)
	}
}

func recvStatus(t *testing.T, stream grpc.ServerStreamingClient[healthpb.HealthCheckResponse]) (healthpb.HealthCheckResponse_ServingStatus, time.Duration) {
	t.Helper()
	start := time.Now()
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("health watch: %v", err)
	}
	return resp.GetStatus(), time.Since(start)
}

func checkStatus(t *testing.T, conn *grpc.ClientConn, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health check %q: %v", service, err)
	}
	return resp.GetStatus()
}

func validCreateOrder() *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{
		RequestId:     validOrderID,
		CustomerEmail: "ada@example.com",
		Items: []*orderv1.LineItem{{
			ProductId: "sku-1",
			Quantity:  2,
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 3},
		}},
		PaymentToken: "tok_ok",
	}
}

func TestHealthFollowsChecks(t *testing.T) {
	// Each status change must reach the watch, in order; how soon is not
	// asserted (the watch's deadline only guards against a hang).
	const interval = 100 * time.Millisecond
	var dbDown, brokerDown atomic.Bool
	check := func(down *atomic.Bool, msg string) CheckFunc {
		return func(context.Context) error {
			if down.Load() {
				return errors.New(msg)
			}
			return nil
		}
	}
	ts := startServer(t, newOrderService(),
		WithHealthInterval(interval),
		WithCheck(Check{Name: "database", Func: check(&dbDown, "ping: connection refused")}),
		WithCheck(Check{Name: "broker", Func: check(&brokerDown, "link down"), Services: []string{"ordermesh.eventbus"}}),
	)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	watch, err := healthpb.NewHealthClient(ts.conn).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if st, _ := recvStatus(t, watch); st != serving {
		if st, _ = recvStatus(t, watch); st != serving {
			t.Fatalf("overall = %v, want SERVING", st)
		}
	}
	want := map[string]healthpb.HealthCheckResponse_ServingStatus{"": serving, orderServiceName: serving, "ordermesh.eventbus": serving}
	assertStatuses := func(t *testing.T, want map[string]healthpb.HealthCheckResponse_ServingStatus) {
		t.Helper()
		got := make(map[string]healthpb.HealthCheckResponse_ServingStatus)
		for name := range want {
			got[name] = checkStatus(t, ts.conn, name)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("statuses mismatch (-want +got):\n%s", diff)
		}
	}
	assertStatuses(t, want)

	dbDown.Store(true)
	if st, _ := recvStatus(t, watch); st != notServing {
		t.Errorf("after the database check failed: overall = %v, want NOT_SERVING", st)
	}
	assertStatuses(t, map[string]healthpb.HealthCheckResponse_ServingStatus{"": notServing, orderServiceName: notServing, "ordermesh.eventbus": serving})
	if logs := ts.logs.String(); !strings.Contains(logs, "ping: connection refused") {
		t.Errorf("the transition log does not give the failing check's reason:\n%s", logs)
	}

	dbDown.Store(false)
	if st, _ := recvStatus(t, watch); st != serving {
		t.Errorf("after the database check recovered: overall = %v, want SERVING", st)
	}

	// The broker is reported on its own name and does not fail the service.
	brokerDown.Store(true)
	for deadline := time.Now().Add(time.Minute); checkStatus(t, ts.conn, "ordermesh.eventbus") != notServing; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("ordermesh.eventbus still not NOT_SERVING a minute after its check failed")
		}
	}
	assertStatuses(t, map[string]healthpb.HealthCheckResponse_ServingStatus{"": serving, orderServiceName: serving, "ordermesh.eventbus": notServing})
}

func TestShutdownReportsNotServingAndEndsWatches(t *testing.T) {
	ts := startServer(t, newOrderService(), WithHealthInterval(50*time.Millisecond), WithShutdownTimeout(10*time.Second))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	watches := map[string]grpc.ServerStreamingClient[healthpb.HealthCheckResponse]{}
	for _, name := range []string{"", orderServiceName} {
		w, err := healthpb.NewHealthClient(ts.conn).Watch(ctx, &healthpb.HealthCheckRequest{Service: name})
		if err != nil {
			t.Fatalf("watch %q: %v", name, err)
		}
		for st, _ := recvStatus(t, w); st != serving; st, _ = recvStatus(t, w) {
		}
		watches[name] = w
	}

	err, took := ts.stop()
	if err != nil {
		t.Errorf("Serve() = %v, want nil", err)
	}
	// Open health watches must not hold up the graceful stop.
	if took > 5*time.Second {
		t.Errorf("Serve took %v to return with open health watches", took)
	}
	for name, w := range watches {
		if st, _ := recvStatus(t, w); st != notServing {
			t.Errorf("watch %q: got %v after shutdown, want NOT_SERVING", name, st)
		}
		if _, err := w.Recv(); err == nil {
			t.Errorf("watch %q: stream still open after shutdown", name)
		}
	}
}

func TestRecoveryHidesPanic(t *testing.T) {
	ts := startServer(t, newOrderService())
	client := orderv1.NewOrderServiceClient(ts.conn)
	tests := []struct {
		name string
		call func(ctx context.Context) error
	}{
		{
			name: "unary",
			call: func(ctx context.Context) error {
				req := validCreateOrder()
				req.PaymentToken = "tok_panic"
				_, err := client.CreateOrder(ctx, req)
				return err
			},
		},
		{
			name: "stream",
			call: func(ctx context.Context) error {
				stream, err := client.WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: strings.Replace(validOrderID, "0191", "0192", 1)})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			st := status.Convert(tt.call(ctx))
			if st.Code() != codes.Internal || st.Message() != "internal error" {
				t.Errorf("got %v %q, want Internal %q", st.Code(), st.Message(), "internal error")
			}
			if strings.Contains(st.Message(), "4242") || len(st.Details()) != 0 {
				t.Errorf("the status leaks the panic: %v", st.Proto())
			}
		})
	}
	logs := ts.logs.String()
	if !strings.Contains(logs, panicText) || !strings.Contains(logs, "goroutine") {
		t.Errorf("the panic and its stack are not logged:\n%s", logs)
	}
}

// badRequestFields returns the fields of the BadRequest detail of err and
// whether a buf.validate.Violations detail came along.
func badRequestFields(t *testing.T, err error) ([]string, bool) {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("got %v %q, want InvalidArgument", st.Code(), st.Message())
	}
	var fields []string
	var violations bool
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, fv := range d.GetFieldViolations() {
				fields = append(fields, fv.GetField())
			}
		case *validate.Violations:
			violations = true
		}
	}
	return fields, violations
}

func TestValidationReturnsFieldViolations(t *testing.T) {
	ts := startServer(t, newOrderService())
	client := orderv1.NewOrderServiceClient(ts.conn)
	tests := []struct {
		name       string
		call       func(ctx context.Context) error
		wantFields []string
	}{
		{
			name: "unary: bad email and zero quantity",
			call: func(ctx context.Context) error {
				req := validCreateOrder()
				req.CustomerEmail = "not an email"
				req.Items[0].Quantity = 0
				_, err := client.CreateOrder(ctx, req)
				return err
			},
			wantFields: []string{"customer_email", "items[0].quantity"},
		},
		{
			name: "server stream: bad order id",
			call: func(ctx context.Context) error {
				stream, err := client.WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: "nope"})
				if err != nil {
					return err
				}
				_, err = stream.Recv()
				return err
			},
			wantFields: []string{"order_id"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			fields, violations := badRequestFields(t, tt.call(ctx))
			if diff := cmp.Diff(tt.wantFields, fields); diff != "" {
				t.Errorf("BadRequest fields mismatch (-want +got):\n%s", diff)
			}
			if !violations {
				t.Error("no buf.validate.Violations detail")
			}
		})
	}

	t.Run("valid request reaches the handler", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		resp, err := client.CreateOrder(ctx, validCreateOrder())
		if err != nil {
			t.Fatalf("CreateOrder: %v", err)
		}
		if resp.GetOrder().GetId() != validOrderID {
			t.Errorf("order id = %q, want %q", resp.GetOrder().GetId(), validOrderID)
		}
	})
}

func TestReflectionListsServices(t *testing.T) {
	ts := startServer(t, newOrderService())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := reflectionpb.NewServerReflectionClient(ts.conn).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatalf("reflection: %v", err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{
		MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{ListServices: "*"},
	}); err != nil {
		t.Fatalf("send: %v", err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatalf("recv: %v", err)
	}
	var names []string
	for _, s := range resp.GetListServicesResponse().GetService() {
		names = append(names, s.GetName())
	}
	for _, want := range []string{orderServiceName, "grpc.health.v1.Health"} {
		if !slices.Contains(names, want) {
			t.Errorf("reflection lists %v, want %q among them", names, want)
		}
	}
}

func TestGracefulStop(t *testing.T) {
	t.Run("in-flight call finishes", func(t *testing.T) {
		svc := newOrderService()
		ts := startServer(t, svc, WithShutdownTimeout(10*time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		type result struct {
			resp *orderv1.GetOrderResponse
			err  error
		}
		done := make(chan result, 1)
		go func() {
			resp, err := orderv1.NewOrderServiceClient(ts.conn).GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: validOrderID})
			done <- result{resp, err}
		}()
		<-svc.started
		stopped := make(chan error, 1)
		go func() {
			err, _ := ts.stop()
			stopped <- err
		}()
		select {
		case err := <-stopped:
			t.Fatalf("Serve returned %v while a call was in flight", err)
		case <-time.After(200 * time.Millisecond):
		}
		close(svc.release)
		r := <-done
		if r.err != nil || r.resp.GetOrder().GetId() != validOrderID {
			t.Errorf("in-flight GetOrder = %v, %v; want the order", r.resp, r.err)
		}
		if err := <-stopped; err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
	})

	t.Run("stop after the timeout", func(t *testing.T) {
		svc := newOrderService()
		defer close(svc.release)
		const timeout = 200 * time.Millisecond
		ts := startServer(t, svc, WithShutdownTimeout(timeout))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done := make(chan error, 1)
		go func() {
			_, err := orderv1.NewOrderServiceClient(ts.conn).GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: validOrderID})
			done <- err
		}()
		<-svc.started
		err, took := ts.stop()
		if err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
		if took < timeout || took > timeout+3*time.Second {
			t.Errorf("Serve returned after %v, want about %v", took, timeout)
		}
		if code := status.Code(<-done); code != codes.Unavailable && code != codes.Canceled {
			t.Errorf("cut-off GetOrder code = %v, want Unavailable or Canceled", code)
		}
	})

	t.Run("cut-off calls are waited for", func(t *testing.T) {
		// What a call cut off at the timeout still does (a transaction
		// it began commits) ends before Serve returns, and so before the
		// service's outbox flush looks for what was committed.
		svc := newOrderService()
		defer close(svc.release)
		svc.linger, svc.returned = 500*time.Millisecond, make(chan struct{})
		ts := startServer(t, svc, WithShutdownTimeout(100*time.Millisecond))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		go func() {
			_, _ = orderv1.NewOrderServiceClient(ts.conn).GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: validOrderID})
		}()
		<-svc.started
		if err, _ := ts.stop(); err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
		select {
		case <-svc.returned:
		default:
			t.Error("Serve returned while a call it cut off was still running")
		}
	})

	t.Run("streams end on draining", func(t *testing.T) {
		ts := startServer(t, newOrderService(), WithShutdownTimeout(10*time.Second))
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		stream, err := orderv1.NewOrderServiceClient(ts.conn).WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: validOrderID})
		if err != nil {
			t.Fatalf("watch: %v", err)
		}
		if _, err := stream.Recv(); err != nil {
			t.Fatalf("first snapshot: %v", err)
		}
		err, took := ts.stop()
		if err != nil || took > 5*time.Second {
			t.Errorf("Serve() = %v after %v, want nil well before the 10s timeout", err, took)
		}
		if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
			t.Errorf("watch after shutdown: %v, want Unavailable", err)
		}
	})
}

func TestLoggingLevels(t *testing.T) {
	ts := startServer(t, newOrderService())
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = checkStatus(t, ts.conn, "")
	client := orderv1.NewOrderServiceClient(ts.conn)
	if _, err := client.CreateOrder(ctx, validCreateOrder()); err != nil {
		t.Fatalf("CreateOrder: %v", err)
	}
	if _, err := client.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: "not a uuid"}); status.Code(err) != codes.InvalidArgument {
		t.Fatalf("GetOrder with an invalid id: %v, want InvalidArgument", err)
	}

	levels := map[string]string{}
	sc := bufio.NewScanner(strings.NewReader(ts.logs.String()))
	for sc.Scan() {
		var line map[string]any
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("log line %q is not JSON: %v", sc.Text(), err)
		}
		if line["msg"] != "finished call" {
			continue
		}
		method, _ := line["grpc.method"].(string)
		levels[method], _ = line["level"].(string)
		keys := []string{"protocol", "grpc.component", "grpc.service", "grpc.method", "grpc.method_type",
			"peer.address", "grpc.start_time", "grpc.code", "grpc.time_ms"}
		if method == "GetOrder" {
			// The client's call had a deadline, and it failed.
			keys = append(keys, "grpc.request.deadline", "grpc.error")
			if line["grpc.code"] != "InvalidArgument" || line["grpc.method_type"] != "unary" {
				t.Errorf("GetOrder's line has code %v and method type %v, want InvalidArgument and unary",
					line["grpc.code"], line["grpc.method_type"])
			}
		}
		for _, key := range keys {
			if _, ok := line[key]; !ok {
				t.Errorf("finished call log lacks %q: %s", key, sc.Text())
			}
		}
	}
	// Successful calls are debug lines; a client error stays visible.
	want := map[string]string{"Check": "DEBUG", "CreateOrder": "DEBUG", "GetOrder": "INFO"}
	if diff := cmp.Diff(want, levels); diff != "" {
		t.Errorf("log levels by method mismatch (-want +got):\n%s", diff)
	}
}

func TestServeShutdownOrder(t *testing.T) {
	t.Run("NOT_SERVING while still taking calls during the drain delay", func(t *testing.T) {
		// The drain delay is the window the test works in: long enough
		// that a busy machine finishes in it. What is asserted is the
		// order of states, not how soon they come: the call is handled
		// after NOT_SERVING and before Draining closes (the delay's end).
		svc := newOrderService()
		svc.created = make(chan bool, 1)
		ts := startServer(t, svc, WithHealthInterval(50*time.Millisecond), WithDrainDelay(5*time.Second))
		deadline := time.Now().Add(30 * time.Second)
		for checkStatus(t, ts.conn, "") != serving {
			if time.Now().After(deadline) {
				t.Fatal("never SERVING")
			}
			time.Sleep(10 * time.Millisecond)
		}
		stopped := make(chan error, 1)
		go func() {
			err, _ := ts.stop()
			stopped <- err
		}()
		// Bounded by the drain delay: after it the server stops and the
		// check fails.
		for checkStatus(t, ts.conn, "") != notServing {
			time.Sleep(10 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := orderv1.NewOrderServiceClient(ts.conn).CreateOrder(ctx, validCreateOrder()); err != nil {
			t.Errorf("CreateOrder once NOT_SERVING: %v, want it served during the drain delay", err)
		} else if <-svc.created {
			t.Error("CreateOrder once NOT_SERVING ran after Draining closed, want it run during the drain delay")
		}
		if err := <-stopped; err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
	})

	t.Run("context already done", func(t *testing.T) {
		log, _ := testLogger(t)
		srv, err := New(log)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if err := srv.Serve(ctx, lis); err != nil {
			t.Errorf("Serve() = %v, want nil", err)
		}
		if err := srv.Serve(ctx, lis); err == nil {
			t.Error("second Serve() = nil, want an error")
		}
	})

	t.Run("listener failure is returned", func(t *testing.T) {
		log, _ := testLogger(t)
		srv, err := New(log)
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatalf("listen: %v", err)
		}
		_ = lis.Close()
		if err := srv.Serve(context.Background(), lis); err == nil {
			t.Error("Serve() on a closed listener = nil, want an error")
		}
	})
}

func TestNewRejectsBadOptions(t *testing.T) {
	log, _ := testLogger(t)
	tests := []struct {
		name string
		opts []Option
	}{
		{name: "zero interval", opts: []Option{WithHealthInterval(0)}},
		{name: "zero check timeout", opts: []Option{WithCheckTimeout(0)}},
		{name: "negative shutdown timeout", opts: []Option{WithShutdownTimeout(-time.Second)}},
		{name: "negative drain delay", opts: []Option{WithDrainDelay(-time.Second)}},
		{name: "nil validator", opts: []Option{WithValidator(nil)}},
		{name: "check without func", opts: []Option{WithCheck(Check{Name: "database"})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := New(log, tt.opts...); err == nil {
				t.Error("New() = nil error, want one")
			}
		})
	}
}

func TestCallLevel(t *testing.T) {
	// go-grpc-middleware's levels by code, which the services logged at
	// before, except that successful calls and health checks below a
	// warning are debug lines.
	const health = "grpc.health.v1.Health"
	for code := codes.OK; code <= codes.Unauthenticated+1; code++ {
		for _, service := range []string{"ordermesh.order.v1.OrderService", health} {
			want := slog.Level(logging.DefaultServerCodeToLevel(code))
			if want < slog.LevelWarn && (code == codes.OK || service == health) {
				want = slog.LevelDebug
			}
			if got := callLevel(code, service); got != want {
				t.Errorf("callLevel(%v, %s) = %v, want %v", code, service, got, want)
			}
		}
	}
}

func TestSplitMethod(t *testing.T) {
	for _, tt := range []struct{ full, service, method string }{
		{"/ordermesh.order.v1.OrderService/CreateOrder", "ordermesh.order.v1.OrderService", "CreateOrder"},
		{"/grpc.health.v1.Health/Check", "grpc.health.v1.Health", "Check"},
		{"nonsense", "unknown", "unknown"},
	} {
		if s, m := splitMethod(tt.full); s != tt.service || m != tt.method {
			t.Errorf("splitMethod(%q) = %q, %q; want %q, %q", tt.full, s, m, tt.service, tt.method)
		}
	}
}
