package rest_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// unavailableOrders answers GetOrder with the UNAVAILABLE the order
// service gives while its database is away.
type unavailableOrders struct{ cannedOrders }

func (unavailableOrders) GetOrder(context.Context, *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	return nil, grpcserver.Unavailable("order store unavailable; retry later", 1500*time.Millisecond)
}

// gatewayTo serves the gateway in front of the upstream at addr and
// returns its URL and what it logged.
func gatewayTo(t *testing.T, addr string) (string, *strings.Builder) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var logged strings.Builder
	return gatewayOver(t, conn, &logged), &logged
}

// gatewayOver serves the gateway, with both upstreams on conn and its log
// written to log, until the test ends, and returns its base URL.
func gatewayOver(t *testing.T, conn *grpc.ClientConn, log io.Writer) string {
	t.Helper()
	h, err := rest.NewHandler(context.Background(), slog.New(slog.NewTextHandler(log, nil)), rest.Upstreams{Order: conn, Inventory: conn}, rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.URL
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, req)
	return resp.StatusCode, body
}

// send makes the request and returns the response with its body read.
func send(t *testing.T, req *http.Request) (*http.Response, string) {
	t.Helper()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b)
}

func TestUnreachableUpstreamHidesItsAddress(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	lis.Close() // nothing listens there now
	base, logged := gatewayTo(t, dead)
	const id = "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70"

	req, err := http.NewRequest(http.MethodGet, base+"/v1/orders/"+id, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, req)
	if code := resp.StatusCode; code != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") != "1" {
		t.Fatalf("GET with the upstream down = %d, Retry-After %q, %s; want 503, Retry-After 1", code, resp.Header.Get("Retry-After"), body)
	}
	var st struct{ Message string }
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Message != "upstream service unavailable; retry later" {
		t.Errorf("body %s (%v), want the generic message", body, err)
	}
	code, stream := get(t, base+"/v1/orders/"+id+":watch")
	if code != http.StatusServiceUnavailable || !strings.Contains(stream, "upstream service unavailable; retry later") {
		t.Errorf("watch with the upstream down = %d %s, want 503 with the generic message", code, stream)
	}
	for _, b := range []string{body, stream} {
		if strings.Contains(b, dead) {
			t.Errorf("body %s names the upstream's address", b)
		}
	}
	if !strings.Contains(logged.String(), dead) {
		t.Errorf("log %q lacks the client's error (the upstream's address)", logged)
	}
}

func TestUpstreamUnavailablePassesUnchanged(t *testing.T) {
	conn := startUpstream(t, unavailableOrders{})
	base, _ := gatewayTo(t, conn.Target())
	req, err := http.NewRequest(http.MethodGet, base+"/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, body := send(t, req)
	if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(body, `"order store unavailable; retry later"`) {
		t.Errorf("GET = %d %s, want 503 with the order service's own message", resp.StatusCode, body)
	}
	// Its google.rpc.RetryInfo's delay, in whole seconds rounded up.
	if got := resp.Header.Get("Retry-After"); got != "2" {
		t.Errorf("Retry-After %q, want 2 (the service's 1.5 s)", got)
	}
}

// watchingOrders streams the order's state once and then holds the stream
// open until the call ends.
type watchingOrders struct{ cannedOrders }

func (watchingOrders) WatchOrder(req *orderv1.WatchOrderRequest, s grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	if err := s.Send(&orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), Status: orderv1.OrderStatus_ORDER_STATUS_PENDING}}); err != nil {
		return err
	}
	<-s.Context().Done()
	return s.Context().Err()
}

// TestWatchEndsUnavailableAtShutdown: a watch stream the gateway ends to
// shut down (Options.Streams) ends with UNAVAILABLE, as the order
// service's own streams do, so the client knows to watch again.
func TestWatchEndsUnavailableAtShutdown(t *testing.T) {
	streams, endStreams := context.WithCancel(context.Background())
	defer endStreams()
	base, _ := startGateway(t, watchingOrders{}, rest.Options{Streams: streams})
	resp, err := http.Get(base + "/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70:watch")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	dec := json.NewDecoder(resp.Body)
	var first struct{ Result json.RawMessage }
	if err := dec.Decode(&first); err != nil || len(first.Result) == 0 {
		t.Fatalf("first line: %+v, %v; want the order", first, err)
	}
	endStreams()
	var last struct {
		Error struct {
			Code    codes.Code
			Message string
		}
	}
	if err := dec.Decode(&last); err != nil {
		t.Fatalf("last line: %v", err)
	}
	if last.Error.Code != codes.Unavailable || last.Error.Message != "gateway shutting down; watch again" {
		t.Errorf("last line: %+v, want UNAVAILABLE \"gateway shutting down; watch again\"", last.Error)
	}
	if err := dec.Decode(&last); err != io.EOF {
		t.Errorf("after the last line: %v, want the end of the stream", err)
	}
}

// TestUnaryCallAnswersJSONToAnEventStreamClient: Server-Sent Events frame
// stream messages; a unary call asked for them, or sent as one, answers
// plain JSON.
func TestUnaryCallAnswersJSONToAnEventStreamClient(t *testing.T) {
	base, _ := startGateway(t, unavailableOrders{}, rest.Options{})
	for _, tt := range []struct{ name, method, path, body string }{
		{"an answer", http.MethodPost, "/v1/orders", `{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com"}`},
		{"an error", http.MethodGet, "/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(tt.method, base+tt.path, strings.NewReader(tt.body))
			if err != nil {
				t.Fatal(err)
			}
			for header, value := range map[string]string{"Accept": "text/event-stream", "Content-Type": "Text/Event-Stream; charset=utf-8"} {
				req := req.Clone(req.Context())
				if tt.body != "" {
					req.Body = io.NopCloser(strings.NewReader(tt.body))
				}
				req.Header.Set(header, value)
				resp, b := send(t, req)
				if ct := resp.Header.Get("Content-Type"); ct != "application/json" || !json.Valid([]byte(b)) {
					t.Errorf("%s %s with %s text/event-stream: Content-Type %q, body %s; want JSON", tt.method, tt.path, header, ct, b)
				}
			}
		})
	}
}

// leakyOrders fails as the gRPC client does when its upstream goes away
// mid-call: UNAVAILABLE with no RetryInfo and a text naming addresses
// (the client raises it; a test upstream can only imitate it).
type leakyOrders struct{ cannedOrders }

const leakedText = "error reading from server: read tcp 10.9.8.7:41234->10.9.8.6:50051: connection reset by peer"

func (leakyOrders) GetOrder(context.Context, *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	return nil, status.Error(codes.Unavailable, leakedText)
}

func (leakyOrders) WatchOrder(req *orderv1.WatchOrderRequest, s grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	if err := s.Send(&orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), Status: orderv1.OrderStatus_ORDER_STATUS_PENDING}}); err != nil {
		return err
	}
	return status.Error(codes.Unavailable, leakedText)
}

// TestUnavailableWithoutRetryInfoIsHidden: an UNAVAILABLE that does not
// carry the services' RetryInfo, in a unary answer or ending a stream,
// reaches the client as the generic message, and the log keeps its text.
func TestUnavailableWithoutRetryInfoIsHidden(t *testing.T) {
	conn := startUpstream(t, leakyOrders{})
	base, logged := gatewayTo(t, conn.Target())
	const id = "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70"
	code, body := get(t, base+"/v1/orders/"+id)
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "upstream service unavailable; retry later") || strings.Contains(body, "10.9.8") {
		t.Errorf("GET = %d %s, want 503 with the generic message", code, body)
	}
	code, stream := get(t, base+"/v1/orders/"+id+":watch")
	if code != http.StatusOK || !strings.Contains(stream, `"upstream service unavailable; retry later"`) || strings.Contains(stream, "10.9.8") {
		t.Errorf("watch = %d %s, want a stream ending with the generic message", code, stream)
	}
	if n := strings.Count(logged.String(), "10.9.8.7"); n != 2 {
		t.Errorf("log names the upstream's text %d times, want 2 (the call and the stream): %s", n, logged)
	}
}
