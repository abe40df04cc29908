package rest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// bulkyOrders answers ListOrders with a page of about 3 MiB, and streams
// a watch's messages of 64 KiB each as fast as they go until the call
// ends, which it then reports on ended.
type bulkyOrders struct {
	cannedOrders
	ended chan struct{}
}

func (bulkyOrders) ListOrders(context.Context, *orderv1.ListOrdersRequest) (*orderv1.ListOrdersResponse, error) {
	resp := &orderv1.ListOrdersResponse{}
	email := strings.Repeat("a", 3000) + "@example.com"
	for range 1000 {
		resp.Orders = append(resp.Orders, &orderv1.Order{Id: "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70", CustomerEmail: email})
	}
	return resp, nil
}

func (b bulkyOrders) WatchOrder(req *orderv1.WatchOrderRequest, s grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	defer close(b.ended)
	msg := &orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), CustomerEmail: strings.Repeat("a", 64<<10) + "@example.com"}}
	for {
		if err := s.Send(msg); err != nil {
			return err
		}
	}
}

// serveForStalledReader serves the gateway in front of orders, with opts,
// on a loopback listener, and returns its address and a channel closed
// once the server has closed a connection, its handler having returned.
func serveForStalledReader(t *testing.T, orders orderv1.OrderServiceServer, opts rest.Options) (addr string, closed <-chan struct{}) {
	t.Helper()
	conn := startUpstream(t, orders)
	h, err := rest.NewHandler(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), rest.Upstreams{Order: conn, Inventory: conn}, opts)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis = smallSendBuffers{lis}
	done := make(chan struct{})
	var once sync.Once
	srv := &http.Server{Handler: h, ConnState: func(_ net.Conn, s http.ConnState) {
		if s == http.StateClosed {
			once.Do(func() { close(done) })
		}
	}}
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close() })
	return lis.Addr().String(), done
}

// smallSendBuffers is a listener whose connections buffer 64 KiB of what
// they send: Linux grows a connection's send buffer up to the maximum of
// net.ipv4.tcp_wmem (4 MiB by default), which takes in a whole page of
// orders.
type smallSendBuffers struct{ net.Listener }

func (l smallSendBuffers) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	if err := c.(*net.TCPConn).SetWriteBuffer(64 << 10); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// stalledRequest sends a GET of path to addr on a connection that buffers
// 256 KiB of what it receives (a few MiB by default) and reads nothing
// until the test does.
func stalledRequest(t *testing.T, addr, path string) net.Conn {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := c.(*net.TCPConn).SetReadBuffer(256 << 10); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, "GET "+path+" HTTP/1.1\r\nHost: gateway\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestStalledReaderIsCutOff: a client that asks for a page of orders
// larger than the sockets' buffers and reads none of it has its
// connection closed once the write timeout passes, instead of holding
// the handler and the connection for good; what reaches it is a response
// cut short.
func TestStalledReaderIsCutOff(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := rest.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	addr, closed := serveForStalledReader(t, bulkyOrders{}, rest.Options{WriteTimeout: 200 * time.Millisecond, Metrics: m})
	c := stalledRequest(t, addr, "/v1/orders?page_size=1000")
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("the connection of a client reading nothing is still open 10 s on; want it closed after the 200ms write timeout")
	}

	// The response did not fit the buffers: the client gets less than it
	// says it holds.
	if err := c.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	n, err := io.Copy(io.Discard, resp.Body)
	if resp.StatusCode != http.StatusOK || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("response %d: read %d of %d bytes, %v; want 200 cut short", resp.StatusCode, n, resp.ContentLength, err)
	}
	// The gateway's metrics say so, once the handler has returned.
	key := `route="GET /v1/orders"`
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		got := gatherFamily(t, reg, "ordermesh_gateway_responses_unfinished_total")
		if m, ok := got[key]; ok && m.GetCounter().GetValue() == 1 && len(got) == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ordermesh_gateway_responses_unfinished_total = %v, want 1 for %s", got, key)
		}
	}
}

// TestStalledWatchIsCutOff: a watch whose client reads nothing ends, the
// upstream stream with it, once a message has waited the write timeout to
// go out.
func TestStalledWatchIsCutOff(t *testing.T) {
	orders := bulkyOrders{ended: make(chan struct{})}
	addr, closed := serveForStalledReader(t, orders, rest.Options{WriteTimeout: 200 * time.Millisecond})
	stalledRequest(t, addr, "/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70:watch")
	for what, ch := range map[string]<-chan struct{}{"the connection": closed, "the upstream stream": orders.ended} {
		select {
		case <-ch:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s of a watch whose client reads nothing is still open 10 s on; want it closed after the 200ms write timeout", what)
		}
	}
}

// pausingOrders streams a watch's first message, then its second after
// pause, and ends it.
type pausingOrders struct {
	cannedOrders
	pause time.Duration
}

func (p pausingOrders) WatchOrder(req *orderv1.WatchOrderRequest, s grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	for i, st := range []orderv1.OrderStatus{orderv1.OrderStatus_ORDER_STATUS_PENDING, orderv1.OrderStatus_ORDER_STATUS_CONFIRMED} {
		if i > 0 {
			time.Sleep(p.pause)
		}
		if err := s.Send(&orderv1.WatchOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId(), Status: st}}); err != nil {
			return err
		}
	}
	return nil
}

// TestWatchOutlastsTheWriteTimeout: the write timeout bounds each message
// of a watch, not the stream: one whose messages come further apart
// than it goes on.
func TestWatchOutlastsTheWriteTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	base, _ := startGateway(t, pausingOrders{pause: 5 * timeout}, rest.Options{WriteTimeout: timeout})
	code, body := get(t, base+"/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70:watch")
	dec := json.NewDecoder(strings.NewReader(body))
	var statuses []string
	for {
		var line struct {
			Result struct{ Order struct{ Status string } }
		}
		if err := dec.Decode(&line); err != nil {
			break
		}
		statuses = append(statuses, line.Result.Order.Status)
	}
	if code != http.StatusOK || strings.Join(statuses, " ") != "ORDER_STATUS_PENDING ORDER_STATUS_CONFIRMED" {
		t.Errorf("watch = %d %s, want both messages", code, body)
	}
}
