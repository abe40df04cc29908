package rest_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/ordermesh/ordermesh/internal/rest"
)

// startHealth serves a gRPC health service on loopback and returns it with
// a connection to it.
func startHealth(t *testing.T) (*health.Server, *grpc.ClientConn) {
	t.Helper()
	hs := health.NewServer()
	return hs, serveGRPC(t, func(srv *grpc.Server) { healthpb.RegisterHealthServer(srv, hs) })
}

// TestHealthzFollowsTheOrderServiceOnly: /healthz is 503 while the order
// service is not SERVING, and stays 200 while only the inventory is down
// (the stock routes fail then, orders do not), each upstream's status in
// the body.
func TestHealthzFollowsTheOrderServiceOnly(t *testing.T) {
	const orderName, inventoryName = "ordermesh.order.v1.OrderService", "ordermesh.inventory.v1.InventoryService"
	orderHealth, orderConn := startHealth(t)
	inventoryHealth, inventoryConn := startHealth(t)
	h, err := rest.NewHandler(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		rest.Upstreams{Order: orderConn, Inventory: inventoryConn}, rest.Options{HealthTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get := func() (int, string, map[string]string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var body struct {
			Status    string            `json:"status"`
			Upstreams map[string]string `json:"upstreams"`
		}
		if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
			t.Fatal(err)
		}
		return resp.StatusCode, body.Status, body.Upstreams
	}
	for _, tt := range []struct {
		order, inventory healthpb.HealthCheckResponse_ServingStatus
		code             int
		status           string
	}{
		{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_SERVING, 200, "SERVING"},
		{healthpb.HealthCheckResponse_SERVING, healthpb.HealthCheckResponse_NOT_SERVING, 200, "SERVING"},
		{healthpb.HealthCheckResponse_NOT_SERVING, healthpb.HealthCheckResponse_SERVING, 503, "NOT_SERVING"},
	} {
		orderHealth.SetServingStatus(orderName, tt.order)
		inventoryHealth.SetServingStatus(inventoryName, tt.inventory)
		code, status, ups := get()
		if code != tt.code || status != tt.status || ups[orderName] != tt.order.String() || ups[inventoryName] != tt.inventory.String() {
			t.Errorf("order %v, inventory %v: /healthz %d %s %v; want %d %s with each status", tt.order, tt.inventory, code, status, ups, tt.code, tt.status)
		}
	}
}

// hangingHealth answers no health check until the call ends.
type hangingHealth struct {
	healthpb.UnimplementedHealthServer
}

func (hangingHealth) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestHealthzAsksTheUpstreamsAtOnce: an order service whose health check
// hangs reads UNREACHABLE (503), and the inventory, SERVING, reads so: the
// hanging check does not use up the other's time.
func TestHealthzAsksTheUpstreamsAtOnce(t *testing.T) {
	orderConn := serveGRPC(t, func(srv *grpc.Server) { healthpb.RegisterHealthServer(srv, hangingHealth{}) })
	inventoryHealth, inventoryConn := startHealth(t)
	inventoryHealth.SetServingStatus("ordermesh.inventory.v1.InventoryService", healthpb.HealthCheckResponse_SERVING)
	h, err := rest.NewHandler(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		rest.Upstreams{Order: orderConn, Inventory: inventoryConn}, rest.Options{HealthTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	defer hs.Close()
	resp, err := http.Get(hs.URL + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Upstreams map[string]string `json:"upstreams"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ordermesh.order.v1.OrderService": "UNREACHABLE", "ordermesh.inventory.v1.InventoryService": "SERVING"}
	if resp.StatusCode != http.StatusServiceUnavailable || !maps.Equal(body.Upstreams, want) {
		t.Errorf("/healthz = %d %v, want 503 %v", resp.StatusCode, body.Upstreams, want)
	}
}
