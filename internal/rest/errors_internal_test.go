package rest

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
)

// TestErrorHandlerKeepsGatewayHTTPStatus: an error grpc-gateway raises
// with its own HTTP status (a malformed escape in a path) keeps that
// status and reads as INVALID_ARGUMENT, not as a 500 UNKNOWN.
func TestErrorHandlerKeepsGatewayHTTPStatus(t *testing.T) {
	h := errorHandler(slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/v1/orders/x", nil)
	mux := runtime.NewServeMux()
	h(context.Background(), mux, &runtime.JSONPb{}, rec, req, &runtime.HTTPStatusError{
		HTTPStatus: http.StatusBadRequest, Err: runtime.MalformedSequenceError("%zz"),
	})
	var st struct {
		Code int `json:"code"`
	}
	if err := json.Unmarshal(rec.Body.Bytes(), &st); err != nil {
		t.Fatalf("body %q: %v", rec.Body, err)
	}
	if rec.Code != http.StatusBadRequest || st.Code != 3 {
		t.Errorf("status %d, code %d (%s); want 400 and INVALID_ARGUMENT (3)", rec.Code, st.Code, rec.Body)
	}
}
