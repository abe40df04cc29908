package rest_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/rest"
)

const orderBody = `{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com",
	"items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": {"currency_code": "EUR", "units": "9"}}]}`

// rawRequest writes head and then body on a fresh connection to the
// server at base, and returns the response and whether the server closed
// the connection after it.
func rawRequest(t *testing.T, base, head string, body func(w io.Writer)) (resp *http.Response, respBody string, closed bool) {
	t.Helper()
	u, err := url.Parse(base)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(c, head); err != nil {
		t.Fatal(err)
	}
	body(c)
	r := bufio.NewReader(c)
	resp, err = http.ReadResponse(r, nil)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body: %v", err)
	}
	// A closed connection reads EOF; an open one would block until the
	// deadline.
	if err := c.SetReadDeadline(time.Now().Add(500 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	_, err = r.ReadByte()
	return resp, string(b), err == io.EOF
}

func statusOf(t *testing.T, body string) (code int, message string) {
	t.Helper()
	var st struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("error body %q: %v", body, err)
	}
	return st.Code, st.Message
}

func TestGatewayBodyLimits(t *testing.T) {
	base, _ := startGateway(t, cannedOrders{}, rest.Options{MaxBodyBytes: 1024, BodyTimeout: 300 * time.Millisecond})

	t.Run("a chunked body over the limit after a whole value", func(t *testing.T) {
		head := "POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
		resp, body, _ := rawRequest(t, base, head, func(w io.Writer) {
			data := orderBody + strings.Repeat(" ", 2000)
			_, _ = fmt.Fprintf(w, "%x\r\n%s\r\n0\r\n\r\n", len(data), data)
		})
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d (%s), want 413", resp.StatusCode, body)
		}
		if _, msg := statusOf(t, body); msg != "request body exceeds 1024 bytes" {
			t.Errorf("message %q", msg)
		}
	})

	t.Run("413 by Content-Length and by reading: one shape", func(t *testing.T) {
		big := orderBody + strings.Repeat(" ", 2000)
		byLength := fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(big))
		resp, lengthBody, _ := rawRequest(t, base, byLength, func(w io.Writer) { _, _ = io.WriteString(w, big) })
		if resp.StatusCode != http.StatusRequestEntityTooLarge {
			t.Fatalf("status %d (%s), want 413", resp.StatusCode, lengthBody)
		}
		chunked := "POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
		_, readBody, _ := rawRequest(t, base, chunked, func(w io.Writer) {
			_, _ = fmt.Fprintf(w, "%x\r\n%s\r\n0\r\n\r\n", len(big), big)
		})
		var a, b map[string]any
		if err := json.Unmarshal([]byte(lengthBody), &a); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal([]byte(readBody), &b); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(a, b) {
			t.Errorf("413 bodies differ: by Content-Length %s, by reading %s", lengthBody, readBody)
		}
	})

	t.Run("a body that stalls", func(t *testing.T) {
		head := fmt.Sprintf("POST /v1/orders HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n", len(orderBody))
		start := time.Now()
		resp, body, closed := rawRequest(t, base, head, func(w io.Writer) {
			_, _ = io.WriteString(w, orderBody[:10]) // and nothing more
		})
		if resp.StatusCode != http.StatusRequestTimeout {
			t.Fatalf("status %d (%s), want 408", resp.StatusCode, body)
		}
		if _, msg := statusOf(t, body); msg != "request body not received within 300ms" {
			t.Errorf("message %q", msg)
		}
		if took := time.Since(start); took > 5*time.Second {
			t.Errorf("answered after %s", took)
		}
		if !closed {
			t.Error("the connection stayed open after the 408")
		}
	})

	// A handler that reads no body (/healthz, /openapi.json, an unknown
	// path) still has the rest of it read before its response goes out:
	// the deadline bounds that too, and the connection is closed.
	for _, path := range []string{"/healthz", "/openapi.json", "/nothing"} {
		t.Run("a body that stalls on "+path, func(t *testing.T) {
			head := fmt.Sprintf("GET %s HTTP/1.1\r\nHost: gw\r\nContent-Length: 100\r\n\r\n", path)
			resp, body, closed := rawRequest(t, base, head, func(w io.Writer) {
				_, _ = io.WriteString(w, "{") // and nothing more
			})
			if resp.StatusCode == http.StatusRequestTimeout {
				t.Errorf("status %d (%s): the handler reads no body", resp.StatusCode, body)
			}
			if !closed {
				t.Error("the connection stayed open after the response")
			}
		})
	}

	t.Run("a call that outlasts the body timeout once the body is in", func(t *testing.T) {
		slowBase, _ := startGateway(t, slowOrders{delay: time.Second}, rest.Options{BodyTimeout: 200 * time.Millisecond})
		resp, err := http.Post(slowBase+"/v1/orders", "application/json", strings.NewReader(orderBody))
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status %d (%s), want 200", resp.StatusCode, b)
		}
	})
}

// slowOrders answers CreateOrder as cannedOrders does, after delay, or
// fails when its context ends first.
type slowOrders struct {
	cannedOrders
	delay time.Duration
}

func (s slowOrders) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	select {
	case <-time.After(s.delay):
		return s.cannedOrders.CreateOrder(ctx, req)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// TestBodyOfTheWrongShapeNamesItsField: a body protojson refuses for one
// of its fields (a value of the wrong type or range, a field the request
// has not, one given twice) is a 400 whose google.rpc.BadRequest names
// the field by its proto name (a nested one by its own name); a body
// that is not JSON at all names none.
func TestBodyOfTheWrongShapeNamesItsField(t *testing.T) {
	base, _ := gatewayWithInventory(t)
	for _, tt := range []struct{ body, field string }{
		{`{"request_id": 5}`, "request_id"},
		{`{"requestId": "x", "bogus": 1}`, "bogus"},
		{`{"items": [{"quantity": 99999999999}]}`, "quantity"},
		{`{"items": [{"productId": 7}]}`, "product_id"},
		{`{"request_id": "a", "requestId": "b"}`, "request_id"},
		{`{"request_id": "x"`, ""},
	} {
		req, err := http.NewRequest(http.MethodPost, base+"/v1/orders", strings.NewReader(tt.body))
		if err != nil {
			t.Fatal(err)
		}
		resp, body := send(t, req)
		var st queryViolation
		if resp.StatusCode != http.StatusBadRequest || json.Unmarshal([]byte(body), &st) != nil || st.Code != 3 {
			t.Errorf("%s: %d %s; want 400 INVALID_ARGUMENT", tt.body, resp.StatusCode, body)
			continue
		}
		var fields []string
		for _, d := range st.Details {
			for _, v := range d.FieldViolations {
				fields = append(fields, v.Field)
			}
		}
		if want := []string{tt.field}; tt.field == "" && len(fields) != 0 || tt.field != "" && !slices.Equal(fields, want) {
			t.Errorf("%s: field violations %v (%s); want %q", tt.body, fields, body, tt.field)
		}
	}
}
