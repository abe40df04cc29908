package grpcapi_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/rest"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/grpcapi"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// env is an in-process order service on its own schema, with the REST
// gateway in front of it, reached by real gRPC and HTTP clients.
type env struct {
	pool   *pgxpool.Pool
	app    *app.App
	client orderv1.OrderServiceClient
	health healthpb.HealthClient
	http   *httptest.Server
}

// start runs the service on pool until the test ends.
func start(t *testing.T, pool *pgxpool.Pool, schema string, opts ...grpcapi.Option) env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { cancel(); wg.Wait() })

	w := store.NewWatcher(pool.Config().ConnConfig, schema, quiet)
	a := app.New(pool, w, quiet, nil)
	srv, err := grpcserver.New(quiet,
		grpcserver.WithHealthInterval(100*time.Millisecond),
		grpcserver.WithCheck(grpcserver.Check{Name: "database", Func: func(ctx context.Context) error { return postgres.Ping(ctx, pool) }}),
	)
	if err != nil {
		t.Fatalf("new grpc server: %v", err)
	}
	orderv1.RegisterOrderServiceServer(srv, grpcapi.New(a, quiet, srv.Draining(), opts...))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	wg.Add(2)
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	go func() { defer wg.Done(); _ = srv.Serve(ctx, lis) }()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { conn.Close() })
	h, err := rest.NewHandler(ctx, quiet, rest.Upstreams{Order: conn, Inventory: conn}, rest.Options{HealthTimeout: time.Second})
	if err != nil {
		t.Fatalf("gateway: %v", err)
	}
	hs := httptest.NewServer(h)
	t.Cleanup(hs.Close)
	e := env{pool: pool, app: a, client: orderv1.NewOrderServiceClient(conn), health: healthpb.NewHealthClient(conn), http: hs}
	e.waitHealth(t, "", healthpb.HealthCheckResponse_SERVING)
	return e
}

func newEnv(t *testing.T, opts ...grpcapi.Option) env {
	t.Helper()
	pool, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	return start(t, pool, schema, opts...)
}

func (e env) waitHealth(t *testing.T, service string, want healthpb.HealthCheckResponse_ServingStatus) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	var last healthpb.HealthCheckResponse_ServingStatus
	for time.Now().Before(deadline) {
		resp, err := e.health.Check(context.Background(), &healthpb.HealthCheckRequest{Service: service})
		if err == nil {
			if last = resp.GetStatus(); last == want {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("health %q is %v, want %v", service, last, want)
}

func createRequest() *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{
		RequestId:     uuid.NewString(),
		CustomerEmail: "ada@example.com",
		PaymentToken:  "tok_visa",
		Items: []*orderv1.LineItem{
			{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500000000}},
			{ProductId: "SKU-2", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}},
		},
	}
}

// do sends an HTTP request to the gateway and returns status and body.
func (e env) do(t *testing.T, method, path, body string, header ...string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, e.http.URL+path, strings.NewReader(body))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read body: %v", err)
	}
	return resp.StatusCode, b
}

func badRequestFields(t *testing.T, err error) []string {
	t.Helper()
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument {
		t.Fatalf("code = %v (%v), want InvalidArgument", st.Code(), err)
	}
	var fields []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				fields = append(fields, v.GetField())
			}
		}
	}
	return fields
}

func TestGRPCCreateGetListCancel(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	created, err := e.client.CreateOrder(ctx, createRequest())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	o := created.GetOrder()
	if o.GetStatus() != orderv1.OrderStatus_ORDER_STATUS_PENDING || o.GetTotal().GetUnits() != 20 || o.GetTotal().GetNanos() != 0 {
		t.Errorf("created = %v, want PENDING with total 20 EUR", o)
	}
	if _, err := uuid.Parse(o.GetId()); err != nil {
		t.Errorf("id %q is not a UUID", o.GetId())
	}
	got, err := e.client.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: o.GetId()})
	if err != nil || got.GetOrder().GetId() != o.GetId() {
		t.Fatalf("get: %v, %v", got, err)
	}
	list, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{CustomerEmail: "ada@example.com"})
	if err != nil || len(list.GetOrders()) != 1 {
		t.Fatalf("list: %v, %v", list, err)
	}
	if !proto.Equal(list.GetOrders()[0], o) {
		t.Errorf("listed (default view) %v, want the created %v", list.GetOrders()[0], o)
	}
	full, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{
		CustomerEmail: "ada@example.com", View: orderv1.OrderView_ORDER_VIEW_FULL,
	})
	if err != nil || len(full.GetOrders()) != 1 || !proto.Equal(full.GetOrders()[0], o) {
		t.Errorf("list full view: %v, %v; want the created %v", full, err, o)
	}
	basic, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{
		CustomerEmail: "ada@example.com", View: orderv1.OrderView_ORDER_VIEW_BASIC,
	})
	if err != nil || len(basic.GetOrders()) != 1 {
		t.Fatalf("list basic view: %v, %v", basic, err)
	}
	want := proto.CloneOf(o)
	want.Items = nil
	if !proto.Equal(basic.GetOrders()[0], want) {
		t.Errorf("listed (basic view) %v, want the created order without items %v", basic.GetOrders()[0], want)
	}
	cancelled, err := e.client.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: o.GetId(), Reason: "changed my mind"})
	if err != nil || cancelled.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED || cancelled.GetOrder().GetStatusReason() != "changed my mind" {
		t.Fatalf("cancel: %v, %v", cancelled, err)
	}
	_, err = e.client.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: o.GetId()})
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("cancel twice: %v, want FailedPrecondition", err)
	}
	_, err = e.client.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: uuid.NewString()})
	if status.Code(err) != codes.NotFound {
		t.Fatalf("get unknown: %v, want NotFound", err)
	}
}

func TestGRPCIdempotency(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	req := createRequest()
	first, err := e.client.CreateOrder(ctx, req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	again, err := e.client.CreateOrder(ctx, req)
	if err != nil || again.GetOrder().GetId() != first.GetOrder().GetId() {
		t.Fatalf("repeat: %v, %v; want the same order", again, err)
	}
	req.Items[0].Quantity = 3
	_, err = e.client.CreateOrder(ctx, req)
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), "different payload") {
		t.Fatalf("same id, other payload: %v; want AlreadyExists saying so", err)
	}
}

func TestGRPCValidation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	req := createRequest()
	req.CustomerEmail = "not-an-email"
	req.Items[0].Quantity = 0
	_, err := e.client.CreateOrder(ctx, req)
	fields := badRequestFields(t, err)
	for _, want := range []string{"customer_email", "items[0].quantity"} {
		if !contains(fields, want) {
			t.Errorf("violations %v lack %s", fields, want)
		}
	}

	// Text PostgreSQL cannot store (a NUL character) is refused up front.
	nul := createRequest()
	nul.PaymentToken = "tok_\x00visa"
	if _, err := e.client.CreateOrder(ctx, nul); !contains(badRequestFields(t, err), "payment_token") {
		t.Errorf("payment token with a NUL: %v, want a violation of payment_token", err)
	}
	placed, err := e.client.CreateOrder(ctx, createRequest())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.client.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: placed.GetOrder().GetId(), Reason: "a\x00b"}); !contains(badRequestFields(t, err), "reason") {
		t.Errorf("cancel reason with a NUL: %v, want a violation of reason", err)
	}

	// A product no stock can be set for (SetStock refuses "." and "..")
	// is refused rather than ordered and then rejected.
	for _, id := range []string{".", ".."} {
		dot := createRequest()
		dot.Items[1].ProductId = id
		if _, err := e.client.CreateOrder(ctx, dot); !contains(badRequestFields(t, err), "items[1].product_id") {
			t.Errorf("product id %q: %v, want a violation of items[1].product_id", id, err)
		}
	}

	// Rules of the domain rather than of the schema name their field too.
	mixed := createRequest()
	mixed.Items[1].UnitPrice.CurrencyCode = "USD"
	if _, err := e.client.CreateOrder(ctx, mixed); !contains(badRequestFields(t, err), "items[1].unit_price.currency_code") {
		t.Errorf("mixed currency: %v, want a violation of items[1].unit_price.currency_code", err)
	}
	huge := createRequest()
	huge.Items[0].UnitPrice = &moneyv1.Money{CurrencyCode: "EUR", Units: math.MaxInt64 / 2}
	huge.Items[0].Quantity = 3
	if _, err := e.client.CreateOrder(ctx, huge); !contains(badRequestFields(t, err), "items[0]") {
		t.Errorf("line total beyond the range of money: %v, want a violation of items[0]", err)
	}
	if _, err := e.client.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: "42"}); !contains(badRequestFields(t, err), "order_id") {
		t.Errorf("get with bad id: %v", err)
	}
	if _, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{PageSize: 5000}); !contains(badRequestFields(t, err), "page_size") {
		t.Errorf("list with page_size 5000: %v", err)
	}
	if _, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{View: 7}); !contains(badRequestFields(t, err), "view") {
		t.Errorf("list with view 7: %v", err)
	}
	if _, err := e.client.ListOrders(ctx, &orderv1.ListOrdersRequest{PageToken: "nope"}); !contains(badRequestFields(t, err), "page_token") {
		t.Errorf("list with a foreign page token: %v, want a violation of page_token", err)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// restError is the JSON error body of the gateway.
type restError struct {
	Code    int    `json:"code"`
	Message string `json:"message"`
	Details []struct {
		Type            string `json:"@type"`
		FieldViolations []struct {
			Field       string `json:"field"`
			Description string `json:"description"`
		} `json:"field_violations"`
	} `json:"details"`
}

func TestRESTOrders(t *testing.T) {
	e := newEnv(t)
	reqID := uuid.NewString()
	body := `{"request_id": "` + reqID + `", "customer_email": "ada@example.com", "payment_token": "tok_visa",
		"items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": {"currency_code": "EUR", "units": 19, "nanos": 990000000}}]}`
	code, b := e.do(t, http.MethodPost, "/v1/orders", body)
	if code != http.StatusOK {
		t.Fatalf("POST /v1/orders = %d %s", code, b)
	}
	var created struct {
		Order struct {
			ID     string `json:"id"`
			Status string `json:"status"`
			Total  struct {
				Units string `json:"units"`
				Nanos int    `json:"nanos"`
			} `json:"total"`
		} `json:"order"`
	}
	if err := json.Unmarshal(b, &created); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	if created.Order.Status != "ORDER_STATUS_PENDING" || created.Order.Total.Units != "39" || created.Order.Total.Nanos != 980000000 {
		t.Errorf("created = %+v", created.Order)
	}
	id := created.Order.ID

	// Idempotency both ways.
	if code, b := e.do(t, http.MethodPost, "/v1/orders", body); code != http.StatusOK || !bytes.Contains(b, []byte(id)) {
		t.Errorf("repeated POST = %d %s, want 200 with the same order", code, b)
	}
	conflict := strings.Replace(body, `"quantity": 2`, `"quantity": 3`, 1)
	if code, b := e.do(t, http.MethodPost, "/v1/orders", conflict); code != http.StatusConflict {
		t.Errorf("same request id, other payload = %d %s, want 409", code, b)
	}

	if code, b := e.do(t, http.MethodGet, "/v1/orders/"+id, ""); code != http.StatusOK || !bytes.Contains(b, []byte(id)) {
		t.Errorf("GET order = %d %s", code, b)
	}
	if code, b := e.do(t, http.MethodGet, "/v1/orders?customer_email=ada@example.com&status=ORDER_STATUS_PENDING", ""); code != http.StatusOK || !bytes.Contains(b, []byte(id)) {
		t.Errorf("GET orders filtered = %d %s", code, b)
	}
	// Listed in each view: the order, with its one item or none.
	listed := "/v1/orders?customer_email=ada@example.com"
	for view, wantItems := range map[string]int{"": 1, "&view=ORDER_VIEW_FULL": 1, "&view=ORDER_VIEW_BASIC": 0} {
		code, b := e.do(t, http.MethodGet, listed+view, "")
		var page struct {
			Orders []struct {
				ID    string            `json:"id"`
				Items []json.RawMessage `json:"items"`
			} `json:"orders"`
		}
		if err := json.Unmarshal(b, &page); code != http.StatusOK || err != nil {
			t.Errorf("GET %s = %d %s (%v)", listed+view, code, b, err)
			continue
		}
		if len(page.Orders) != 1 || page.Orders[0].ID != id || len(page.Orders[0].Items) != wantItems {
			t.Errorf("GET %s = %s, want order %s with %d items", listed+view, b, id, wantItems)
		}
	}
	if code, b := e.do(t, http.MethodGet, listed+"&view=ORDER_VIEW_NONE", ""); code != http.StatusBadRequest {
		t.Errorf("GET orders in an unknown view = %d %s, want 400", code, b)
	}
	if code, b := e.do(t, http.MethodGet, "/v1/orders/"+uuid.NewString(), ""); code != http.StatusNotFound {
		t.Errorf("GET unknown = %d %s, want 404", code, b)
	}
	if code, b := e.do(t, http.MethodPost, "/v1/orders/"+id+":cancel", `{"reason": "test"}`); code != http.StatusOK || !bytes.Contains(b, []byte("ORDER_STATUS_CANCELLED")) {
		t.Errorf("cancel = %d %s", code, b)
	}
	if code, b := e.do(t, http.MethodPost, "/v1/orders/"+id+":cancel", `{}`); code != http.StatusConflict {
		t.Errorf("cancel twice = %d %s, want 409", code, b)
	}
}

func TestRESTErrors(t *testing.T) {
	e := newEnv(t)
	// Validation: 400 naming each field.
	body := `{"request_id": "` + uuid.NewString() + `", "customer_email": "nope", "payment_token": "tok_visa",
		"items": [{"product_id": "SKU 1", "quantity": 0, "unit_price": {"currency_code": "EUR", "units": 1}}]}`
	code, b := e.do(t, http.MethodPost, "/v1/orders", body)
	if code != http.StatusBadRequest {
		t.Fatalf("invalid order = %d %s, want 400", code, b)
	}
	var re restError
	if err := json.Unmarshal(b, &re); err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	var fields []string
	for _, d := range re.Details {
		if d.Type == "type.googleapis.com/google.rpc.BadRequest" {
			for _, v := range d.FieldViolations {
				fields = append(fields, v.Field)
				if v.Description == "" {
					t.Errorf("violation of %s has no description", v.Field)
				}
			}
		}
	}
	for _, want := range []string{"customer_email", "items[0].quantity", "items[0].product_id"} {
		if !contains(fields, want) {
			t.Errorf("400 body names %v, lacks %s: %s", fields, want, b)
		}
	}
	// Query parameters the gateway cannot parse: 400 naming the parameter.
	for _, q := range []struct{ query, field string }{
		{"page_size=99999999999", "page_size"},
		{"status=ORDER_STATUS_BOGUS", "status"},
		{"view=7", "view"},
		{"state=ORDER_STATUS_CONFIRMED", "state"}, // no such parameter: not ignored
	} {
		code, b := e.do(t, http.MethodGet, "/v1/orders?"+q.query, "")
		var qe restError
		if err := json.Unmarshal(b, &qe); err != nil || code != http.StatusBadRequest {
			t.Errorf("?%s = %d %s (%v), want 400", q.query, code, b, err)
			continue
		}
		if len(qe.Details) != 1 || len(qe.Details[0].FieldViolations) != 1 || qe.Details[0].FieldViolations[0].Field != q.field {
			t.Errorf("?%s: body %s, want one violation of %s", q.query, b, q.field)
		}
	}
	// A rule of the domain (one currency per order): 400 naming the field.
	body = `{"request_id": "` + uuid.NewString() + `", "customer_email": "ada@example.com", "payment_token": "tok_visa",
		"items": [{"product_id": "SKU-1", "quantity": 1, "unit_price": {"currency_code": "EUR", "units": 1}},
		          {"product_id": "SKU-2", "quantity": 1, "unit_price": {"currency_code": "USD", "units": 1}}]}`
	code, b = e.do(t, http.MethodPost, "/v1/orders", body)
	re = restError{}
	if err := json.Unmarshal(b, &re); err != nil || code != http.StatusBadRequest {
		t.Fatalf("mixed currencies = %d %s (%v), want 400", code, b, err)
	}
	if len(re.Details) != 1 || len(re.Details[0].FieldViolations) != 1 ||
		re.Details[0].FieldViolations[0].Field != "items[1].unit_price.currency_code" ||
		!strings.Contains(re.Details[0].FieldViolations[0].Description, "line items must share one currency") {
		t.Errorf("mixed currencies: 400 body %s, want one violation of items[1].unit_price.currency_code", b)
	}

	tests := []struct {
		name, method, path, body string
		want                     int
	}{
		{"malformed JSON", http.MethodPost, "/v1/orders", `{"request_id": `, http.StatusBadRequest},
		{"unknown field", http.MethodPost, "/v1/orders", `{"requestid": "x"}`, http.StatusBadRequest},
		{"bad id in path", http.MethodGet, "/v1/orders/42", "", http.StatusBadRequest},
		{"unknown route", http.MethodGet, "/v1/nothing", "", http.StatusNotFound},
		{"body over 1 MiB", http.MethodPost, "/v1/orders", `{"customer_email": "` + strings.Repeat("a", 1<<20) + `"}`, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, b := e.do(t, tt.method, tt.path, tt.body)
			if code != tt.want {
				t.Fatalf("%s %s = %d %.200s, want %d", tt.method, tt.path, code, b, tt.want)
			}
			var re restError
			if tt.want != http.StatusNotFound {
				if err := json.Unmarshal(b, &re); err != nil || re.Message == "" {
					t.Errorf("body %.200s is not a status JSON: %v", b, err)
				}
			}
		})
	}

	// A chunked body (no Content-Length) over the limit is 413 too.
	pr, pw := io.Pipe()
	go func() {
		_, _ = pw.Write([]byte(`{"customer_email": "`))
		_, _ = pw.Write(bytes.Repeat([]byte("a"), 2<<20))
		_ = pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, e.http.URL+"/v1/orders", pr)
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatalf("chunked POST: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("chunked body over the limit = %d, want 413", resp.StatusCode)
	}
}

// reject makes order id REJECTED the way the saga does.
func (e env) reject(t *testing.T, id string) {
	t.Helper()
	ctx := context.Background()
	ev := &inventoryv1.StockReservationFailed{OrderId: id, Reason: "out of stock: SKU-1"}
	batch := []inbox.Delivery{{Event: ev, Meta: eventbus.Meta{ID: uuid.NewString()}}}
	err := postgres.WithTx(ctx, e.pool, func(tx pgx.Tx) error {
		results, err := e.app.Handle(ctx, tx, batch)
		if err != nil {
			return err
		}
		return results[0].Err
	})
	if err != nil {
		t.Fatalf("reject %s: %v", id, err)
	}
}

func TestGRPCWatchSeesChangeFromAnotherCaller(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	created, err := e.client.CreateOrder(ctx, createRequest())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	id := created.GetOrder().GetId()
	stream, err := e.client.WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: id})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	first, err := stream.Recv()
	if err != nil || first.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_PENDING {
		t.Fatalf("first snapshot: %v, %v", first, err)
	}
	// The change comes through the gateway, another caller (the watch across
	// instances is TestWatchSeesChangesFromAnotherInstance, in app).
	if code, b := e.do(t, http.MethodPost, "/v1/orders/"+id+":cancel", `{}`); code != http.StatusOK {
		t.Fatalf("cancel over REST = %d %s", code, b)
	}
	next, err := stream.Recv()
	if err != nil || next.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED {
		t.Fatalf("second snapshot: %v, %v", next, err)
	}
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("stream after terminal status: %v, want EOF", err)
	}
}

// TestWatchesAreBounded: past MaxWatches open streams, a watch ends at once
// with RESOURCE_EXHAUSTED (HTTP 429 through the gateway); once a watch
// closes, the next is served.
func TestWatchesAreBounded(t *testing.T) {
	e := newEnv(t, grpcapi.MaxWatches(2))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	created, err := e.client.CreateOrder(ctx, createRequest())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	req := &orderv1.WatchOrderRequest{OrderId: created.GetOrder().GetId()}
	open := func(ctx context.Context) (orderv1.OrderService_WatchOrderClient, error) {
		stream, err := e.client.WatchOrder(ctx, req)
		if err != nil {
			return nil, err
		}
		_, err = stream.Recv() // the first snapshot, or the refusal
		return stream, err
	}
	first, cancelFirst := context.WithCancel(ctx)
	defer cancelFirst()
	for i, c := range []context.Context{first, ctx} {
		if _, err := open(c); err != nil {
			t.Fatalf("watch %d of 2: %v", i+1, err)
		}
	}
	_, err = open(ctx)
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third watch: %v, want RESOURCE_EXHAUSTED", err)
	}
	if d := status.Convert(err).Details(); len(d) != 1 || d[0].(*errdetails.RetryInfo).GetRetryDelay().AsDuration() != 5*time.Second {
		t.Errorf("third watch's details %v, want a google.rpc.RetryInfo of 5 s", d)
	}
	if code, body := e.do(t, http.MethodGet, "/v1/orders/"+req.GetOrderId()+":watch", ""); code != http.StatusTooManyRequests || !strings.Contains(string(body), `"retry_delay":"5s"`) {
		t.Errorf("third watch over REST = %d %s, want 429 with the retry delay", code, body)
	}

	cancelFirst()
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := open(ctx)
		if err == nil {
			break
		}
		if status.Code(err) != codes.ResourceExhausted || time.Now().After(deadline) {
			t.Fatalf("watch after one closed: %v, want it served", err)
		}
		time.Sleep(20 * time.Millisecond) // the closed stream's handler is still returning
	}
}

// streamREST opens a watch over HTTP with the given Accept header, then
// rejects the order and returns the lines received.
func (e env) streamREST(t *testing.T, accept string) (string, []string) {
	t.Helper()
	created, err := e.client.CreateOrder(context.Background(), createRequest())
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	id := created.GetOrder().GetId()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.http.URL+"/v1/orders/"+id+":watch", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := e.http.Client().Do(req)
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	var lines []string
	rejected := false
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if !rejected && strings.Contains(sc.Text(), "ORDER_STATUS_PENDING") {
			e.reject(t, id)
			rejected = true
		}
	}
	return resp.Header.Get("Content-Type"), lines
}

func TestRESTWatchNDJSON(t *testing.T) {
	e := newEnv(t)
	_, lines := e.streamREST(t, "")
	if len(lines) != 2 {
		t.Fatalf("got %d lines %q, want 2 snapshots", len(lines), lines)
	}
	for i, want := range []string{"ORDER_STATUS_PENDING", "ORDER_STATUS_REJECTED"} {
		var chunk struct {
			Result struct {
				Order struct {
					Status       string `json:"status"`
					StatusReason string `json:"status_reason"`
				} `json:"order"`
			} `json:"result"`
		}
		if err := json.Unmarshal([]byte(lines[i]), &chunk); err != nil {
			t.Fatalf("line %d %q is not JSON: %v", i, lines[i], err)
		}
		if chunk.Result.Order.Status != want {
			t.Errorf("line %d status %s, want %s", i, chunk.Result.Order.Status, want)
		}
	}
	if !strings.Contains(lines[1], "out of stock: SKU-1") {
		t.Errorf("rejected snapshot lacks the reason: %s", lines[1])
	}
}

func TestRESTWatchServerSentEvents(t *testing.T) {
	e := newEnv(t)
	ctype, lines := e.streamREST(t, "text/event-stream")
	if ctype != "text/event-stream" {
		t.Errorf("Content-Type = %q, want text/event-stream", ctype)
	}
	// Two events, each "data: {...}" followed by a blank line.
	want := []string{"ORDER_STATUS_PENDING", "", "ORDER_STATUS_REJECTED", ""}
	if len(lines) != len(want) {
		t.Fatalf("got %q, want two SSE events", lines)
	}
	for i, w := range want {
		if w == "" {
			if lines[i] != "" {
				t.Errorf("line %d = %q, want the blank line ending an event", i, lines[i])
			}
			continue
		}
		data, ok := strings.CutPrefix(lines[i], "data: ")
		if !ok || !json.Valid([]byte(data)) || !strings.Contains(data, w) {
			t.Errorf("line %d = %q, want data: JSON with %s", i, lines[i], w)
		}
	}
}

func TestRESTOpenAPIAndHealth(t *testing.T) {
	e := newEnv(t)
	code, b := e.do(t, http.MethodGet, "/openapi.json", "")
	var doc struct {
		Swagger string                    `json:"swagger"`
		Paths   map[string]map[string]any `json:"paths"`
	}
	if code != http.StatusOK || json.Unmarshal(b, &doc) != nil {
		t.Fatalf("GET /openapi.json = %d %.100s", code, b)
	}
	// Every operation the gateway serves, and no other.
	var ops []string
	for path, methods := range doc.Paths {
		for m := range methods {
			ops = append(ops, strings.ToUpper(m)+" "+path)
		}
	}
	slices.Sort(ops)
	want := []string{
		"GET /v1/orders", "GET /v1/orders/{order_id}", "GET /v1/orders/{order_id}/events", "GET /v1/orders/{order_id}:watch",
		"GET /v1/stock/{product_id}", "POST /v1/orders", "POST /v1/orders/{order_id}:cancel", "PUT /v1/stock/{product_id}",
	}
	if diff := cmp.Diff(want, ops); diff != "" {
		t.Errorf("OpenAPI operations (-want +got):\n%s", diff)
	}
	// Each is routed: none answers 404 or 405 (a made-up id is fine).
	for _, op := range want {
		method, path, _ := strings.Cut(op, " ")
		path = strings.NewReplacer("{order_id}", "0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70", "{product_id}", "SKU-ROUTE").Replace(path)
		if code, b := e.do(t, method, path, "{}"); code == http.StatusNotFound && bytes.Contains(b, []byte(`"message":"Not Found"`)) || code == http.StatusMethodNotAllowed {
			t.Errorf("%s %s = %d %.100s: not routed", method, path, code, b)
		}
	}
	if code, b := e.do(t, http.MethodGet, "/healthz", ""); code != http.StatusOK || !bytes.Contains(b, []byte(`"SERVING"`)) {
		t.Errorf("GET /healthz = %d %s, want 200 SERVING", code, b)
	}
}

// TestHealthFollowsDatabase runs the service through a TCP proxy to
// PostgreSQL; cutting the proxy makes health NOT_SERVING (and /healthz
// 503), restoring it brings SERVING back.
func TestHealthFollowsDatabase(t *testing.T) {
	_, schema := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	proxy, proxied := postgrestest.Proxied(t)
	pool, err := postgres.Open(context.Background(), proxied, schema)
	if err != nil {
		t.Fatalf("open through proxy: %v", err)
	}
	t.Cleanup(pool.Close)
	e := start(t, pool, schema)

	proxy.SetUp(false)
	e.waitHealth(t, "", healthpb.HealthCheckResponse_NOT_SERVING)
	e.waitHealth(t, "ordermesh.order.v1.OrderService", healthpb.HealthCheckResponse_NOT_SERVING)
	if code, b := e.do(t, http.MethodGet, "/healthz", ""); code != http.StatusServiceUnavailable {
		t.Errorf("GET /healthz with the database down = %d %s, want 503", code, b)
	}
	_, err = e.client.GetOrder(context.Background(), &orderv1.GetOrderRequest{OrderId: uuid.NewString()})
	if c := status.Code(err); c != codes.Unavailable {
		t.Errorf("GetOrder with the database down: %v, want Unavailable", err)
	}
	// The driver's errors name the address it dialled: the proxy's.
	_, proxyPort, _ := net.SplitHostPort(proxy.Addr())
	if code, b := e.do(t, http.MethodGet, "/v1/orders/"+uuid.NewString(), ""); code != http.StatusServiceUnavailable || bytes.Contains(b, []byte(proxyPort)) {
		t.Errorf("GET order over REST with the database down = %d %s, want 503 without driver details", code, b)
	}

	proxy.SetUp(true)
	e.waitHealth(t, "", healthpb.HealthCheckResponse_SERVING)
	if code, _ := e.do(t, http.MethodGet, "/healthz", ""); code != http.StatusOK {
		t.Errorf("GET /healthz after recovery = %d, want 200", code)
	}
}

// TestUpperCaseIDsNameTheSameOrder checks that ids are compared as UUIDs:
// a request repeated with its request_id in upper case is the same
// request, and an order watched or read by its upper-case id is the same
// order.
func TestUpperCaseIDsNameTheSameOrder(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req := createRequest()
	first, err := e.client.CreateOrder(ctx, req)
	if err != nil {
		t.Fatalf("create: %v", err)
	}
	req.RequestId = strings.ToUpper(req.RequestId)
	again, err := e.client.CreateOrder(ctx, req)
	if err != nil || again.GetOrder().GetId() != first.GetOrder().GetId() {
		t.Fatalf("repeat with an upper-case request_id: %v, %v; want the same order", again, err)
	}
	upper := strings.ToUpper(first.GetOrder().GetId())
	if _, err := e.client.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: upper}); err != nil {
		t.Fatalf("get by upper-case id: %v", err)
	}
	stream, err := e.client.WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: upper})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("first snapshot: %v", err)
	}
	if _, err := e.client.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: upper}); err != nil {
		t.Fatalf("cancel by upper-case id: %v", err)
	}
	next, err := stream.Recv()
	if err != nil || next.GetOrder().GetStatus() != orderv1.OrderStatus_ORDER_STATUS_CANCELLED {
		t.Fatalf("watch by upper-case id after cancel: %v, %v", next, err)
	}
}
