package rest_test

import (
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/rest"
)

// failingWatches ends every watch before its first message with the
// status its order id names.
type failingWatches struct{ cannedOrders }

var watchFailures = map[string]*status.Status{
	"0190f0c4-6f2b-7c3e-9a1d-000000000404": status.New(codes.NotFound, "order not found"),
	"0190f0c4-6f2b-7c3e-9a1d-000000000409": status.New(codes.FailedPrecondition, "cannot watch"),
}

func (failingWatches) WatchOrder(req *orderv1.WatchOrderRequest, _ grpc.ServerStreamingServer[orderv1.WatchOrderResponse]) error {
	return watchFailures[req.GetOrderId()].Err()
}

// TestWatchFailingBeforeItsFirstMessage: a watch that fails before any
// message is answered as every other call's error: the gateway's HTTP
// status for the code (409 for FAILED_PRECONDITION, as elsewhere) and a
// JSON Status, not a stream line {"error": …}, whatever the client
// accepts.
func TestWatchFailingBeforeItsFirstMessage(t *testing.T) {
	base, _ := startGateway(t, failingWatches{}, rest.Options{})
	for id, want := range watchFailures {
		for _, accept := range []string{"", "text/event-stream"} {
			req, err := http.NewRequest(http.MethodGet, base+"/v1/orders/"+id+":watch", nil)
			if err != nil {
				t.Fatal(err)
			}
			if accept != "" {
				req.Header.Set("Accept", accept)
			}
			resp, body := send(t, req)
			var st struct {
				Code    codes.Code `json:"code"`
				Message string     `json:"message"`
			}
			wantHTTP := map[codes.Code]int{codes.NotFound: http.StatusNotFound, codes.FailedPrecondition: http.StatusConflict}[want.Code()]
			if err := json.Unmarshal([]byte(body), &st); err != nil || st.Code != want.Code() || st.Message != want.Message() ||
				resp.StatusCode != wantHTTP || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("watch %s (Accept %q) = %d %s %s, want %d application/json with the status %v %q",
					id, accept, resp.StatusCode, resp.Header.Get("Content-Type"), body, wantHTTP, want.Code(), want.Message())
			}
		}
	}
}

// TestWatchStreamContentType: a watch's stream is labelled as what it is:
// newline-delimited JSON (application/x-ndjson) by default, Server-Sent
// Events for a client that accepts text/event-stream; each line of the
// first is a JSON object of its own.
func TestWatchStreamContentType(t *testing.T) {
	base, _ := startGateway(t, pausingOrders{}, rest.Options{})
	for accept, want := range map[string]string{"": "application/x-ndjson", "application/json": "application/x-ndjson", "text/event-stream": "text/event-stream"} {
		req, err := http.NewRequest(http.MethodGet, base+"/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70:watch", nil)
		if err != nil {
			t.Fatal(err)
		}
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, body := send(t, req)
		if ct := resp.Header.Get("Content-Type"); resp.StatusCode != http.StatusOK || ct != want {
			t.Errorf("watch (Accept %q) = %d, Content-Type %q; want 200 %s", accept, resp.StatusCode, ct, want)
		}
		if want != "application/x-ndjson" {
			continue
		}
		lines := strings.Split(strings.TrimSuffix(body, "\n"), "\n")
		for _, line := range lines {
			if !json.Valid([]byte(line)) {
				t.Errorf("watch line %q is not JSON", line)
			}
		}
		if len(lines) != 2 {
			t.Errorf("watch body %q: %d lines, want 2 (one per message)", body, len(lines))
		}
	}
}
