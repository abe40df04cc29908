package grpcapi_test

import (
	"bytes"
	"context"
	"net/http"
	"testing"

	"google.golang.org/grpc/metadata"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// TestEventsCarryTheCallersTraceContext: the W3C trace context a client
// sends (gRPC metadata, or the gateway's Traceparent and Tracestate
// headers) rides on the events its CreateOrder and CancelOrder cause; an
// invalid traceparent is dropped, not refused.
func TestEventsCarryTheCallersTraceContext(t *testing.T) {
	e := newEnv(t)
	const (
		parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
		state  = "congo=t61rcWkgMzE"
	)
	traced := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("traceparent", parent, "tracestate", state))
	placed, err := e.client.CreateOrder(traced, createRequest())
	if err != nil {
		t.Fatal(err)
	}
	id := placed.GetOrder().GetId()
	if _, err := e.client.CancelOrder(traced, &orderv1.CancelOrderRequest{OrderId: id, Reason: "changed my mind"}); err != nil {
		t.Fatal(err)
	}
	bad := metadata.NewOutgoingContext(context.Background(), metadata.Pairs("traceparent", "not-a-trace", "tracestate", state))
	untraced, err := e.client.CreateOrder(bad, createRequest())
	if err != nil {
		t.Fatalf("CreateOrder with an invalid traceparent: %v, want it placed", err)
	}

	req := `{"request_id":"0192f3a4-5b6c-7d8e-9f01-23456789abce","customer_email":"rest@example.com","payment_token":"tok_visa",
		"items":[{"product_id":"SKU-1","quantity":1,"unit_price":{"currency_code":"EUR","units":"3"}}]}`
	hreq, err := http.NewRequest(http.MethodPost, e.http.URL+"/v1/orders", bytes.NewBufferString(req))
	if err != nil {
		t.Fatal(err)
	}
	hreq.Header.Set("Traceparent", parent)
	hreq.Header.Set("Tracestate", state)
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /v1/orders = %d, want 200", resp.StatusCode)
	}

	type trace struct{ parent, state string }
	got := map[string]trace{}
	rows, err := e.pool.Query(context.Background(), `SELECT correlation_id || ' ' || routing_key, trace_parent, trace_state FROM outbox`)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var k string
		var tr trace
		if err := rows.Scan(&k, &tr.parent, &tr.state); err != nil {
			t.Fatal(err)
		}
		got[k] = tr
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]trace{
		id + " order.created":                          {parent, state},
		id + " order.cancelled":                        {parent, state},
		untraced.GetOrder().GetId() + " order.created": {},
	} {
		if tr, ok := got[k]; !ok || tr != want {
			t.Errorf("outbox %s: trace %+v (present %v), want %+v", k, tr, ok, want)
		}
	}
	carried := 0
	for _, tr := range got {
		if tr == (trace{parent, state}) {
			carried++
		}
	}
	if carried != 3 {
		t.Errorf("%d outbox events carry the trace, want 3 (created and cancelled over gRPC, created over REST): %v", carried, got)
	}
}
