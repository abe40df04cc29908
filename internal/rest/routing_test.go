package rest_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// countingInventory counts the SetStock calls that reach it.
type countingInventory struct {
	inventoryv1.UnimplementedInventoryServiceServer
	sets atomic.Int32
}

func (c *countingInventory) SetStock(_ context.Context, req *inventoryv1.SetStockRequest) (*inventoryv1.SetStockResponse, error) {
	c.sets.Add(1)
	return &inventoryv1.SetStockResponse{Stock: &inventoryv1.Stock{ProductId: req.GetProductId(), Available: req.GetAvailable()}}, nil
}

// gatewayWithInventory serves the gateway in front of upstreams that count
// SetStock calls and answer CreateOrder.
func gatewayWithInventory(t *testing.T) (string, *countingInventory) {
	t.Helper()
	inv := &countingInventory{}
	conn := serveGRPC(t, func(srv *grpc.Server) {
		inventoryv1.RegisterInventoryServiceServer(srv, inv)
		orderv1.RegisterOrderServiceServer(srv, cannedOrders{})
	})
	h, err := rest.NewHandler(context.Background(), slog.New(slog.NewTextHandler(io.Discard, nil)), rest.Upstreams{Order: conn, Inventory: conn}, rest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	return hs.URL, inv
}

// TestNoMethodStandsInForAnother: a form-encoded POST, with or without
// X-HTTP-Method-Override, runs no route of another method, whose body
// would be dropped: 405, and the upstream is not called.
func TestNoMethodStandsInForAnother(t *testing.T) {
	base, inv := gatewayWithInventory(t)
	for _, tt := range []struct {
		name, path, override string
	}{
		{"override to PUT", "/v1/stock/SKU-1", "PUT"},
		{"POST to a GET route", "/v1/stock/SKU-1", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodPost, base+tt.path, strings.NewReader(`{"available": 100}`))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
			if tt.override != "" {
				req.Header.Set("X-HTTP-Method-Override", tt.override)
			}
			resp, body := send(t, req)
			if resp.StatusCode != http.StatusMethodNotAllowed {
				t.Errorf("status %d %s, want 405", resp.StatusCode, body)
			}
		})
	}
	if n := inv.sets.Load(); n != 0 {
		t.Errorf("SetStock called %d times, want none", n)
	}
}

// TestWrongMethodIs405WithAllow: a route's path with a method it does not
// take is 405 with the methods it does take, and a path with no route is
// 404, each as JSON like every other error of the gateway.
func TestWrongMethodIs405WithAllow(t *testing.T) {
	base, _ := gatewayWithInventory(t)
	for _, tt := range []struct {
		method, path, allow string
		code                int
	}{
		{http.MethodDelete, "/v1/orders", "GET, POST", http.StatusMethodNotAllowed},
		{http.MethodPatch, "/v1/stock/SKU-1", "GET, PUT", http.StatusMethodNotAllowed},
		// A cancel without its ":cancel".
		{http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd", "GET", http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/nothing", "", http.StatusNotFound},
		// Outside the API's routes too.
		{http.MethodPost, "/healthz", "GET, HEAD", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/openapi.json", "GET, HEAD", http.StatusMethodNotAllowed},
		{http.MethodGet, "/nothing", "", http.StatusNotFound},
		// Paths that are not UTF-8, which the message quotes.
		{http.MethodGet, "/%FF", "", http.StatusNotFound},
		{http.MethodPost, "/v1/orders/%FF", "GET", http.StatusMethodNotAllowed},
	} {
		req, err := http.NewRequest(tt.method, base+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := send(t, req)
		if resp.StatusCode != tt.code || resp.Header.Get("Allow") != tt.allow {
			t.Errorf("%s %s: %d, Allow %q; want %d, Allow %q (%s)", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Allow"), tt.code, tt.allow, body)
		}
		var st struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
		}
		if err := json.Unmarshal([]byte(body), &st); err != nil || st.Code == 0 || st.Message == "" {
			t.Errorf("%s %s: body %q is not a JSON status", tt.method, tt.path, body)
		}
	}
}
