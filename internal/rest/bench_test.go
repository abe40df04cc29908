package rest_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/cputime"
	"github.com/ordermesh/ordermesh/internal/loadgen"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// cannedOrders answers CreateOrder at once with the order the real service
// would return, so a benchmark measures only the path in front of it.
type cannedOrders struct {
	orderv1.UnimplementedOrderServiceServer
}

func (cannedOrders) CreateOrder(_ context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	now := timestamppb.Now()
	return &orderv1.CreateOrderResponse{Order: &orderv1.Order{
		Id:            uuid.NewString(),
		CustomerEmail: req.GetCustomerEmail(),
		Items:         req.GetItems(),
		Total:         &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 990000000},
		Status:        orderv1.OrderStatus_ORDER_STATUS_PENDING,
		CreateTime:    now,
		UpdateTime:    now,
	}}, nil
}

// startUpstream serves orders over gRPC on loopback and returns a
// connection to it, dialled with opts too.
func startUpstream(tb testing.TB, orders orderv1.OrderServiceServer, opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	return serveGRPC(tb, func(srv *grpc.Server) { orderv1.RegisterOrderServiceServer(srv, orders) }, opts...)
}

// serveGRPC serves what register registers over gRPC on loopback until
// the test ends, and returns a connection to it, dialled with opts too.
func serveGRPC(tb testing.TB, register func(*grpc.Server), opts ...grpc.DialOption) *grpc.ClientConn {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer()
	register(srv)
	go func() { _ = srv.Serve(lis) }()
	tb.Cleanup(srv.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), append(opts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		tb.Fatalf("dial: %v", err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// BenchmarkCreateOrder places orders with the load generator's creators
// against an upstream that answers at once, with 50 concurrent clients as
// in the benchmark's REST trial: "grpc" calls the upstream directly,
// "rest" goes through the gateway over HTTP/1.1. The difference is what
// the REST path costs per order. cpu-ns/op is the CPU time of the whole
// process (clients, gateway and upstream) per order.
func BenchmarkCreateOrder(b *testing.B) {
	const clients = 50
	run := func(b *testing.B, c loadgen.Creator) {
		var n atomic.Int64
		b.SetParallelism(max(1, clients/runtime.GOMAXPROCS(0)))
		b.ReportAllocs()
		cpu0 := cputime.Self(b)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			ctx := context.Background()
			for pb.Next() {
				req := loadgen.Request(int(n.Add(1)), []string{"BENCH-1", "BENCH-2"}, "tok_visa")
				if _, err := c.CreateOrder(ctx, req); err != nil {
					b.Errorf("create: %v", err)
					return
				}
			}
		})
		b.StopTimer()
		b.ReportMetric(float64(cputime.Self(b)-cpu0)/float64(b.N), "cpu-ns/op")
	}
	b.Run("grpc", func(b *testing.B) {
		run(b, loadgen.NewGRPCCreator(startUpstream(b, cannedOrders{})))
	})
	throughGateway := func(b *testing.B, opts rest.Options) {
		conn := startUpstream(b, cannedOrders{})
		log := slog.New(slog.NewTextHandler(io.Discard, nil))
		h, err := rest.NewHandler(context.Background(), log, rest.Upstreams{Order: conn, Inventory: conn}, opts)
		if err != nil {
			b.Fatalf("gateway: %v", err)
		}
		hs := httptest.NewServer(h)
		b.Cleanup(hs.Close)
		client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}}
		b.Cleanup(client.CloseIdleConnections)
		run(b, loadgen.NewRESTCreator(hs.URL, client))
	}
	b.Run("rest", func(b *testing.B) { throughGateway(b, rest.Options{}) })
	// As the gateway binary runs it: with its request metrics.
	b.Run("rest-metrics", func(b *testing.B) {
		m, err := rest.NewMetrics(prometheus.NewRegistry())
		if err != nil {
			b.Fatal(err)
		}
		throughGateway(b, rest.Options{Metrics: m})
	})
}
