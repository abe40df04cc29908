package rest_test

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// recordingOrders answers CreateOrder as cannedOrders does and records the
// incoming metadata and the deadline of the last call.
type recordingOrders struct {
	cannedOrders
	mu       sync.Mutex
	md       metadata.MD
	deadline time.Time // zero when the call had none
}

func (r *recordingOrders) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	deadline, _ := ctx.Deadline()
	r.mu.Lock()
	r.md, r.deadline = md.Copy(), deadline
	r.mu.Unlock()
	return r.cannedOrders.CreateOrder(ctx, req)
}

func (r *recordingOrders) last() (metadata.MD, time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.md, r.deadline
}

// startGateway serves the gateway in front of orders and returns its URL
// and the address the upstream listens on.
func startGateway(t *testing.T, orders orderv1.OrderServiceServer, opts rest.Options) (url, upstream string) {
	t.Helper()
	conn := startUpstream(t, orders)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	h, err := rest.NewHandler(context.Background(), log, rest.Upstreams{Order: conn, Inventory: conn}, opts)
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.URL, conn.Target()
}

// postOrder places an order through the gateway with header's extra
// headers, fails the test unless it gets 200, and returns the response's
// headers (trailers included).
func postOrder(t *testing.T, url string, header http.Header) http.Header {
	t.Helper()
	const body = `{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com", "payment_token": "tok_visa",
		"items": [{"product_id": "SKU-1", "quantity": 1, "unit_price": {"currency_code": "EUR", "units": 9, "nanos": 990000000}}]}`
	req, err := http.NewRequest(http.MethodPost, url+"/v1/orders", strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, vs := range header {
		req.Header[k] = vs
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("post order: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("post order: %s: %s", resp.Status, b)
	}
	all := resp.Header.Clone()
	for k, vs := range resp.Trailer {
		all[k] = append(all[k], vs...)
	}
	return all
}

// TestGatewayForwardsOnlyTraceContext pins down the metadata an upstream
// gets for a REST call: what the gRPC transport itself sends, and the W3C
// trace context (traceparent, tracestate), which the order service
// carries on in the events a call causes. Services read no other incoming
// metadata, so other HTTP headers (permanent ones as grpcgateway-*,
// Authorization, Grpc-Metadata-*) and the x-forwarded-for/-host the gateway
// would derive are not worth building and sending on every request.
func TestGatewayForwardsOnlyTraceContext(t *testing.T) {
	tests := []struct {
		name   string
		header http.Header
		// trace is the metadata the trace context headers give.
		trace metadata.MD
	}{
		{"plain", nil, nil},
		{"with headers", http.Header{
			"Accept":               {"application/json"},
			"Accept-Language":      {"de-CH"},
			"Authorization":        {"Bearer secret"},
			"Cache-Control":        {"no-cache"},
			"Cookie":               {"session=1"},
			"Origin":               {"https://shop.example"},
			"Referer":              {"https://shop.example/cart"},
			"User-Agent":           {"shop/1.0"},
			"Grpc-Metadata-Tenant": {"acme"},
			"Traceparent":          {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"Tracestate":           {"congo=t61rcWkgMzE"},
			"X-Forwarded-For":      {"203.0.113.7"},
			"X-Forwarded-Host":     {"shop.example"},
			"X-Request-Id":         {"req-1"},
		}, metadata.MD{
			"traceparent": {"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
			"tracestate":  {"congo=t61rcWkgMzE"},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orders := &recordingOrders{}
			url, upstream := startGateway(t, orders, rest.Options{})
			postOrder(t, url, tt.header)
			got, _ := orders.last()
			want := metadata.Join(metadata.MD{
				":authority":   {upstream},
				"content-type": {"application/grpc"},
				"user-agent":   {"grpc-go/" + grpc.Version},
			}, tt.trace)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("upstream metadata (-want +got):\n%s", diff)
			}
		})
	}
}

// TestGatewayDeadline checks that an upstream call carries the gateway's
// UpstreamTimeout, or the client's shorter Grpc-Timeout.
func TestGatewayDeadline(t *testing.T) {
	const upstreamTimeout = time.Minute
	tests := []struct {
		name   string
		header http.Header
		want   time.Duration
	}{
		{"gateway default", nil, upstreamTimeout},
		{"Grpc-Timeout", http.Header{"Grpc-Timeout": {"5S"}}, 5 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orders := &recordingOrders{}
			url, _ := startGateway(t, orders, rest.Options{UpstreamTimeout: upstreamTimeout})
			start := time.Now()
			postOrder(t, url, tt.header)
			_, deadline := orders.last()
			if deadline.IsZero() {
				t.Fatal("upstream call has no deadline")
			}
			// The deadline was set between start and now, tt.want ahead.
			elapsed := time.Since(start)
			if left := deadline.Sub(start); left < tt.want-time.Millisecond || left > tt.want+elapsed+time.Millisecond {
				t.Errorf("deadline %v after the request, want about %v", left, tt.want)
			}
		})
	}
}

// metadataOrders answers CreateOrder as cannedOrders does, with a response
// header and a trailer of gRPC metadata.
type metadataOrders struct {
	cannedOrders
}

func (m metadataOrders) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	if err := grpc.SetHeader(ctx, metadata.Pairs("x-upstream-header", "1")); err != nil {
		return nil, err
	}
	if err := grpc.SetTrailer(ctx, metadata.Pairs("x-upstream-trailer", "1")); err != nil {
		return nil, err
	}
	return m.cannedOrders.CreateOrder(ctx, req)
}

// TestGatewayReturnsNoMetadataHeaders checks that a REST response carries
// no Grpc-Metadata-* or Grpc-Trailer-* headers: the gateway does not turn
// an upstream's gRPC metadata (its own content-type, or anything a service
// might set) into HTTP headers for clients.
func TestGatewayReturnsNoMetadataHeaders(t *testing.T) {
	url, _ := startGateway(t, metadataOrders{}, rest.Options{})
	// TE: trailers asks grpc-gateway for the trailers too.
	for k := range postOrder(t, url, http.Header{"Te": {"trailers"}}) {
		if strings.HasPrefix(k, "Grpc-Metadata-") || strings.HasPrefix(k, "Grpc-Trailer-") || k == "Trailer" {
			t.Errorf("response has header %s", k)
		}
	}
}
