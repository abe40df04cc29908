package rest_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/openapi"
)

// listingOrders answers ListOrders and GetOrder with nothing and keeps the
// last request each received.
type listingOrders struct {
	cannedOrders
	mu   sync.Mutex
	list *orderv1.ListOrdersRequest
	get  *orderv1.GetOrderRequest
}

func (l *listingOrders) ListOrders(_ context.Context, req *orderv1.ListOrdersRequest) (*orderv1.ListOrdersResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.list = req
	return &orderv1.ListOrdersResponse{}, nil
}

func (l *listingOrders) GetOrder(_ context.Context, req *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.get = req
	return &orderv1.GetOrderResponse{Order: &orderv1.Order{Id: req.GetOrderId()}}, nil
}

// queryViolation is the one field violation of a 400 answer.
type queryViolation struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		FieldViolations []struct {
			Field       string `json:"field"`
			Description string `json:"description"`
		} `json:"field_violations"`
	} `json:"details"`
}

// TestRequestParametersAreChecked: a query parameter must name a field the
// route takes from the query, and a parameter in the path or the query
// must be UTF-8 once percent-decoded; else the answer is 400
// INVALID_ARGUMENT with a violation naming the parameter, and no upstream
// is called.
func TestRequestParametersAreChecked(t *testing.T) {
	orders := &listingOrders{}
	base := gatewayOver(t, serveGRPC(t, func(srv *grpc.Server) { orderv1.RegisterOrderServiceServer(srv, orders) }), io.Discard)
	do := func(method, path, body string) (int, []byte) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp, b := send(t, req)
		return resp.StatusCode, []byte(b)
	}

	// Fields by their proto and their JSON names reach the upstream.
	code, b := do(http.MethodGet, "/v1/orders?page_size=5&pageToken=abc&status=ORDER_STATUS_CONFIRMED&customerEmail=ada@example.com&view=ORDER_VIEW_BASIC", "")
	if code != http.StatusOK {
		t.Fatalf("list with known parameters = %d %s", code, b)
	}
	orders.mu.Lock()
	got := orders.list
	orders.mu.Unlock()
	want := &orderv1.ListOrdersRequest{PageSize: 5, PageToken: "abc", Status: orderv1.OrderStatus_ORDER_STATUS_CONFIRMED,
		CustomerEmail: "ada@example.com", View: orderv1.OrderView_ORDER_VIEW_BASIC}
	if !proto.Equal(got, want) {
		t.Errorf("upstream got %v, want %v", got, want)
	}
	if code, b := do(http.MethodGet, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f", ""); code != http.StatusOK {
		t.Errorf("get without parameters = %d %s", code, b)
	}
	// UTF-8 beyond ASCII passes, in the path as in the query.
	if code, b := do(http.MethodGet, "/v1/orders/caf%C3%A9", ""); code != http.StatusOK {
		t.Errorf("get of a UTF-8 id = %d %s", code, b)
	}
	if code, b := do(http.MethodGet, "/v1/orders?customer_email=caf%C3%A9@example.com", ""); code != http.StatusOK {
		t.Errorf("list by a UTF-8 email = %d %s", code, b)
	}
	orders.mu.Lock()
	if orders.get.GetOrderId() != "café" || orders.list.GetCustomerEmail() != "café@example.com" {
		t.Errorf("upstream got the id %q and the email %q, want café and café@example.com", orders.get.GetOrderId(), orders.list.GetCustomerEmail())
	}
	orders.mu.Unlock()

	for _, tt := range []struct {
		name, method, path, body, field, mention string
	}{
		{"misspelt filter", http.MethodGet, "/v1/orders?page_size=5&state=ORDER_STATUS_CONFIRMED", "", "state", "page_size, page_token, status, customer_email, view"},
		{"nested path through a scalar", http.MethodGet, "/v1/orders?status.name=x", "", "status.name", "status"},
		{"parameter of a route taking none", http.MethodGet, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f?view=FULL", "", "view", "takes no query parameters; its request comes from the path"},
		{"query on a body route", http.MethodPost, "/v1/orders?dry_run=true&a=1", `{}`, "a", "takes no query parameters; its request comes from the body"},
		{"escaped name on a body route", http.MethodPost, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f:cancel?re%20ason=x", `{}`, "re ason", "the path and the body"},
		{"path parameter not UTF-8", http.MethodGet, "/v1/orders/%FF", "", "order_id", "not valid UTF-8"},
		{"watch's path parameter not UTF-8", http.MethodGet, "/v1/orders/%FF:watch", "", "order_id", "not valid UTF-8"},
		{"events' path parameter not UTF-8", http.MethodGet, "/v1/orders/ab%C3%28/events", "", "order_id", "not valid UTF-8"},
		{"path parameter of a body route not UTF-8", http.MethodPost, "/v1/orders/%FF:cancel", `{}`, "order_id", "not valid UTF-8"},
		{"stock's path parameter not UTF-8", http.MethodGet, "/v1/stock/%FF", "", "product_id", "not valid UTF-8"},
		{"stock's path parameter on a body route not UTF-8", http.MethodPut, "/v1/stock/SKU-%FF", `{"available": 1}`, "product_id", "not valid UTF-8"},
		{"query value not UTF-8", http.MethodGet, "/v1/orders?customer_email=%FF", "", "customer_email", "not valid UTF-8"},
		{"query value by its JSON name not UTF-8", http.MethodGet, "/v1/orders?page_size=5&customerEmail=ada%C0%80@example.com", "", "customerEmail", "not valid UTF-8"},
		{"page token not UTF-8", http.MethodGet, "/v1/orders?page_token=%FF", "", "page_token", "not valid UTF-8"},
		{"repeated value, one not UTF-8", http.MethodGet, "/v1/orders?page_token=a&page_token=%ED%A0%80", "", "page_token", "not valid UTF-8"},
		{"query name not UTF-8", http.MethodGet, "/v1/orders?%FF=1", "", "\uFFFD", "not valid UTF-8"},
		{"one value given twice", http.MethodGet, "/v1/orders?status=ORDER_STATUS_PENDING&status=ORDER_STATUS_CONFIRMED", "", "status", "more than once"},
		{"a field by both its names", http.MethodGet, "/v1/orders?page_size=5&pageSize=6", "", "page_size", "its proto and its JSON name"},
		{"list brackets", http.MethodGet, "/v1/orders?status[]=ORDER_STATUS_PENDING", "", "status", "without brackets"},
		{"value that does not parse", http.MethodGet, "/v1/orders?page_size=many", "", "page_size", "many"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			orders.mu.Lock()
			orders.list, orders.get = nil, nil
			orders.mu.Unlock()
			code, b := do(tt.method, tt.path, tt.body)
			if code != http.StatusBadRequest {
				t.Fatalf("%s %s = %d %s, want 400", tt.method, tt.path, code, b)
			}
			var v queryViolation
			if err := json.Unmarshal(b, &v); err != nil {
				t.Fatalf("decode %s: %v", b, err)
			}
			if v.Code != 3 || len(v.Details) != 1 || len(v.Details[0].FieldViolations) != 1 ||
				v.Details[0].FieldViolations[0].Field != tt.field ||
				!strings.Contains(v.Details[0].FieldViolations[0].Description, tt.mention) {
				t.Errorf("body %s, want INVALID_ARGUMENT with one violation of %q mentioning %q", b, tt.field, tt.mention)
			}
			orders.mu.Lock()
			defer orders.mu.Unlock()
			if orders.list != nil || orders.get != nil {
				t.Errorf("the upstream was called")
			}
		})
	}

	// A query string that does not parse is refused on every route, not
	// only on those grpc-gateway parses a query for.
	for _, tt := range []struct{ method, path string }{
		{http.MethodGet, "/v1/orders?page_size=5&x=%zz"},
		{http.MethodGet, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f?view=FULL;x"},
		{http.MethodPost, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f:cancel?a=%zz"},
	} {
		if code, b := do(tt.method, tt.path, `{}`); code != http.StatusBadRequest || !strings.Contains(string(b), "malformed query string") {
			t.Errorf("%s %s = %d %s, want 400 for a malformed query string", tt.method, tt.path, code, b)
		}
	}

	// "?" alone or with only separators carries no parameter.
	if code, b := do(http.MethodPost, "/v1/orders/0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f:cancel?&", `{}`); code == http.StatusBadRequest {
		t.Errorf("cancel with an empty query = %d %s, want it to reach the upstream", code, b)
	}
}

// TestEveryRouteRefusesAnUnknownParameter: every operation of the OpenAPI
// document (so every HTTP binding of every service generated from
// proto/, a new service's too), whatever it takes from its query, answers
// a parameter naming no field with 400 and calls no upstream (which here
// serves nothing, so a call would answer 501).
func TestEveryRouteRefusesAnUnknownParameter(t *testing.T) {
	base := gatewayOver(t, serveGRPC(t, func(*grpc.Server) {}), io.Discard)
	code, doc := get(t, base+"/openapi.json")
	ops, err := openapi.Operations([]byte(doc))
	if code != http.StatusOK || err != nil {
		t.Fatalf("GET /openapi.json = %d, %v", code, err)
	}
	routes := 0
	for _, op := range ops {
		target := pathVariable.ReplaceAllString(op.Path, "0190a5f4-6b5e-7d3c-9f1e-2a3b4c5d6e7f")
		req, err := http.NewRequest(op.Method, base+target+"?bogus=1", strings.NewReader("{}"))
		if err != nil {
			t.Fatal(err)
		}
		resp, b := send(t, req)
		var v queryViolation
		if err := json.Unmarshal([]byte(b), &v); err != nil || resp.StatusCode != http.StatusBadRequest ||
			len(v.Details) != 1 || len(v.Details[0].FieldViolations) != 1 || v.Details[0].FieldViolations[0].Field != "bogus" {
			t.Errorf("%s %s?bogus=1 = %d %s, want 400 with a violation of bogus", op.Method, target, resp.StatusCode, b)
		}
		routes++
	}
	if routes < 8 {
		t.Errorf("tried %d routes; the services have more", routes)
	}
}

// pathVariable matches a variable of a path template.
var pathVariable = regexp.MustCompile(`\{[^}]*\}`)
