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

// TestPathsAreRoutedAsSent: a path with dot segments or an empty one is
// no route (a JSON 404), not redirected to the path it would clean to: a
// client following PUT /v1/stock/SKU-1/../SKU-2 would set another
// product.
func TestPathsAreRoutedAsSent(t *testing.T) {
	base, inv := gatewayWithInventory(t)
	for _, tt := range []struct{ method, path string }{
		{http.MethodPut, "/v1/stock/SKU-1/../SKU-2"},
		{http.MethodPut, "/v1/stock/./SKU-2"},
		{http.MethodPost, "/v1//orders"},
		{http.MethodGet, "/v1/orders//events"},
		{http.MethodGet, "/v1"},
		{http.MethodGet, "/healthz/../openapi.json"},
	} {
		req, err := http.NewRequest(tt.method, base+tt.path, strings.NewReader(`{"available": 100}`))
		if err != nil {
			t.Fatal(err)
		}
		resp, body := send(t, req)
		var st struct{ Code int }
		if resp.StatusCode != http.StatusNotFound || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &st) != nil || st.Code != 5 {
			t.Errorf("%s %s: %d %s %s; want a JSON 404 (NOT_FOUND)", tt.method, tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), body)
		}
	}
	if n := inv.sets.Load(); n != 0 {
		t.Errorf("SetStock called %d times, want none", n)
	}
}

// TestEscapesAreRoutedAsSent: routes match the path as sent, before
// percent-decoding, so an escaped ':' or '/' belongs to its path
// variable: POST /v1/orders/ID%3Acancel is no CancelOrder (and an order
// id holding a ':' fits no route), and PUT /v1/stock/A%2FB is SetStock of
// the product "A/B", which the service refuses for what it is, not a
// path with no route.
func TestEscapesAreRoutedAsSent(t *testing.T) {
	base, inv := gatewayWithInventory(t)
	req, err := http.NewRequest(http.MethodPost, base+"/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd%3Acancel", strings.NewReader(`{}`))
	if err != nil {
		t.Fatal(err)
	}
	if resp, body := send(t, req); resp.StatusCode != http.StatusNotFound {
		t.Errorf("POST …%%3Acancel: %d (%s); want 404, not CancelOrder", resp.StatusCode, body)
	}
	for path, want := range map[string]string{"/v1/stock/A%2FB": "A/B", "/v1/stock/SKU%2D1": "SKU-1"} {
		req, err := http.NewRequest(http.MethodPut, base+path, strings.NewReader(`{"available": 1}`))
		if err != nil {
			t.Fatal(err)
		}
		resp, body := send(t, req)
		var got struct {
			Stock struct {
				ProductID string `json:"product_id"`
			} `json:"stock"`
		}
		if resp.StatusCode != http.StatusOK || json.Unmarshal([]byte(body), &got) != nil || got.Stock.ProductID != want {
			t.Errorf("PUT %s: %d %s; want SetStock of the product %q", path, resp.StatusCode, body, want)
		}
	}
	if n := inv.sets.Load(); n != 2 {
		t.Errorf("SetStock called %d times, want 2", n)
	}
}

// TestHeadIsTheGetWithoutItsBody: a HEAD of a GET route is answered as
// the GET, status and headers, without the body.
func TestHeadIsTheGetWithoutItsBody(t *testing.T) {
	base, _ := gatewayWithInventory(t)
	for _, tt := range []struct {
		path string
		code int
	}{
		{"/v1/stock/SKU-1", http.StatusNotImplemented}, // the upstream has no GetStock
		{"/v1/orders?bogus=1", http.StatusBadRequest},
		{"/v1/orders/", http.StatusNotFound},
	} {
		req, err := http.NewRequest(http.MethodHead, base+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, body := send(t, req)
		if resp.StatusCode != tt.code || resp.Header.Get("Content-Type") != "application/json" || body != "" {
			t.Errorf("HEAD %s: %d %s %q; want %d, the GET's, without a body", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.code)
		}
	}
}

// TestErrorsAreJSONWhateverTheAcceptHeader: an error answers JSON even to
// a client that accepts only server-sent events (the watch's framing),
// and a path no route takes says so.
func TestErrorsAreJSONWhateverTheAcceptHeader(t *testing.T) {
	base, _ := gatewayWithInventory(t)
	for _, tt := range []struct {
		path string
		code int
		msg  string
	}{
		{"/v1/nope", http.StatusNotFound, "no route for GET /v1/nope"},
		{"/v1/stock/SKU-1/", http.StatusNotFound, "no route for GET /v1/stock/SKU-1/"},
		{"/v1/orders?bogus=1", http.StatusBadRequest, ""},
		// The upstream's answer (this one implements no GetOrder).
		{"/v1/orders/0190a5c4-0000-7000-8000-000000000000", http.StatusNotImplemented, "method GetOrder not implemented"},
	} {
		req, err := http.NewRequest(http.MethodGet, base+tt.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Accept", "text/event-stream")
		resp, body := send(t, req)
		var st struct{ Message string }
		if resp.StatusCode != tt.code || resp.Header.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &st) != nil {
			t.Errorf("GET %s: %d %s %q; want %d as JSON", tt.path, resp.StatusCode, resp.Header.Get("Content-Type"), body, tt.code)
			continue
		}
		if tt.msg != "" && st.Message != tt.msg {
			t.Errorf("GET %s: message %q, want %q", tt.path, st.Message, tt.msg)
		}
	}
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
		{http.MethodDelete, "/v1/orders", "GET, HEAD, POST", http.StatusMethodNotAllowed},
		{http.MethodPatch, "/v1/stock/SKU-1", "GET, HEAD, PUT", http.StatusMethodNotAllowed},
		// A cancel without its ":cancel".
		{http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd", "GET, HEAD", http.StatusMethodNotAllowed},
		{http.MethodGet, "/v1/nothing", "", http.StatusNotFound},
		// A trailing slash leaves a path variable empty: no resource.
		{http.MethodGet, "/v1/orders/", "", http.StatusNotFound},
		{http.MethodPost, "/v1/orders/", "", http.StatusNotFound},
		{http.MethodPut, "/v1/stock/", "", http.StatusNotFound},
		// A custom verb on another method than its own, or one that
		// does not exist: not an order id with a ':' in it.
		{http.MethodGet, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:cancel", "POST", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:cancel", "POST", http.StatusMethodNotAllowed},
		{http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:watch", "GET", http.StatusMethodNotAllowed},
		// A watch is a stream: no HEAD.
		{http.MethodHead, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:watch", "GET", http.StatusMethodNotAllowed},
		{http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:cancle", "", http.StatusNotFound},
		{http.MethodPost, "/v1/orders/:cancel", "", http.StatusNotFound},
		{http.MethodGet, "/v1/stock/SKU:1", "", http.StatusNotFound},
		// Outside the API's routes too.
		{http.MethodPost, "/healthz", "GET, HEAD", http.StatusMethodNotAllowed},
		{http.MethodDelete, "/openapi.json", "GET, HEAD", http.StatusMethodNotAllowed},
		{http.MethodGet, "/nothing", "", http.StatusNotFound},
		// Paths that are not UTF-8, which the message quotes.
		{http.MethodGet, "/%FF", "", http.StatusNotFound},
		{http.MethodPost, "/v1/orders/%FF", "GET, HEAD", http.StatusMethodNotAllowed},
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
		if err := json.Unmarshal([]byte(body), &st); tt.method != http.MethodHead && (err != nil || st.Code == 0 || st.Message == "") {
			t.Errorf("%s %s: body %q is not a JSON status", tt.method, tt.path, body)
		}
	}
}

// TestBodyAgreesWithThePath: a route reading its whole request from the
// body refuses a body that repeats a path variable's field with another
// value (by its proto or its JSON name), rather than letting the path's
// win without a word; one repeating the same value passes. A PUT needs a
// body: an empty one is not taken as the zero state. Neither reaches the
// upstream, and a body over the limit is still 413.
func TestBodyAgreesWithThePath(t *testing.T) {
	base, inv := gatewayWithInventory(t)
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, b := send(t, req)
		return resp.StatusCode, b
	}
	for _, tt := range []struct {
		name, method, path, body, field string
	}{
		{"stock of another product", http.MethodPut, "/v1/stock/SKU-1", `{"product_id": "SKU-2", "available": 7}`, "product_id"},
		{"by its JSON name", http.MethodPut, "/v1/stock/SKU-1", `{"available": 7, "productId": "SKU-2"}`, "product_id"},
		{"cancel of another order", http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:cancel",
			`{"order_id": "0192f3a4-5b6c-7d8e-9f01-000000000000"}`, "order_id"},
		{"empty PUT", http.MethodPut, "/v1/stock/SKU-1", "", ""},
		{"blank PUT", http.MethodPut, "/v1/stock/SKU-1", " \n", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			code, b := do(tt.method, tt.path, tt.body)
			if code != http.StatusBadRequest {
				t.Fatalf("%s %s %s = %d %s, want 400", tt.method, tt.path, tt.body, code, b)
			}
			var v queryViolation
			if err := json.Unmarshal([]byte(b), &v); err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			switch {
			case v.Code != 3:
				t.Errorf("body %s, want INVALID_ARGUMENT", b)
			case tt.field == "" && !strings.Contains(v.Message, "body is required"):
				t.Errorf("body %s, want it to say the body is required", b)
			case tt.field != "" && (len(v.Details) != 1 || len(v.Details[0].FieldViolations) != 1 || v.Details[0].FieldViolations[0].Field != tt.field):
				t.Errorf("body %s, want one violation of %s", b, tt.field)
			}
		})
	}
	if n := inv.sets.Load(); n != 0 {
		t.Fatalf("SetStock called %d times by refused requests", n)
	}
	if code, b := do(http.MethodPut, "/v1/stock/SKU-1", `{"product_id": "SKU-1", "available": 7}`); code != http.StatusOK {
		t.Errorf("a body repeating the path's value = %d %s, want 200", code, b)
	}
	if code, b := do(http.MethodPut, "/v1/stock/SKU-1", `{"available": 7}`); code != http.StatusOK || inv.sets.Load() != 2 {
		t.Errorf("a body without the path's field = %d %s (%d SetStock calls), want 200 and the call", code, b, inv.sets.Load())
	}
	// A cancel has a body of optional fields only: it may be left out.
	if code, b := do(http.MethodPost, "/v1/orders/0192f3a4-5b6c-7d8e-9f01-23456789abcd:cancel", ""); code == http.StatusBadRequest {
		t.Errorf("a cancel without a body = %d %s, want it to reach the upstream", code, b)
	}
	if code, b := do(http.MethodPut, "/v1/stock/SKU-1", `{"product_id": null, "available": 7}`); code != http.StatusOK {
		t.Errorf("a body with the path's field null (left out, to protojson) = %d %s, want 200", code, b)
	}
	// Over the limit, of a length not told beforehand (chunked): the check
	// reads the body, and the handler still meets the limit.
	big := `{"available": 7, "note": "` + strings.Repeat("x", 2<<20) + `"}`
	req, err := http.NewRequest(http.MethodPut, base+"/v1/stock/SKU-1", io.MultiReader(strings.NewReader(big)))
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = -1
	if resp, b := send(t, req); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("an oversized chunked body = %d %.200s, want 413", resp.StatusCode, b)
	}
}
