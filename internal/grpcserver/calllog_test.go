package grpcserver

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// logLines decodes the JSON lines in buf.
func logLines(t *testing.T, buf *bytes.Buffer) []map[string]any {
	t.Helper()
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		if l == "" {
			continue
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("log line %q is not JSON: %v", l, err)
		}
		lines = append(lines, m)
	}
	return lines
}

func TestCallLogWritesOnlyEnabledLines(t *testing.T) {
	var buf bytes.Buffer
	l := callLog{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo}))}
	info := &grpc.UnaryServerInfo{FullMethod: "/ordermesh.order.v1.OrderService/GetOrder"}
	ctx := context.Background()

	ok := func(context.Context, any) (any, error) { return "response", nil }
	if resp, err := l.unary(ctx, nil, info, ok); resp != "response" || err != nil {
		t.Fatalf("unary = %v, %v; want the handler's response", resp, err)
	}
	if buf.Len() != 0 {
		t.Errorf("a successful call at info level wrote %q, want nothing", buf.String())
	}

	notFound := status.Error(codes.NotFound, "no such order")
	failing := func(context.Context, any) (any, error) { return nil, notFound }
	if _, err := l.unary(ctx, nil, info, failing); err != notFound {
		t.Fatalf("unary error = %v, want the handler's", err)
	}
	lines := logLines(t, &buf)
	if len(lines) != 1 {
		t.Fatalf("a failed call wrote %d lines, want 1: %q", len(lines), buf.String())
	}
	want := map[string]any{
		"level": "INFO", "msg": "finished call", "protocol": "grpc", "grpc.component": "server",
		"grpc.service": "ordermesh.order.v1.OrderService", "grpc.method": "GetOrder", "grpc.method_type": "unary",
		"grpc.code": "NotFound", "grpc.error": notFound.Error(),
	}
	for k, v := range want {
		if lines[0][k] != v {
			t.Errorf("%s = %v, want %v", k, lines[0][k], v)
		}
	}
	if _, ok := lines[0]["grpc.time_ms"].(float64); !ok {
		t.Errorf("grpc.time_ms = %#v, want a number", lines[0]["grpc.time_ms"])
	}
	if _, ok := lines[0]["peer.address"]; ok {
		t.Errorf("a call without a peer logged peer.address %v", lines[0]["peer.address"])
	}
}

// ctxStream is a server stream that has nothing but a context.
type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s ctxStream) Context() context.Context { return s.ctx }

func TestCallLogStreams(t *testing.T) {
	for _, tt := range []struct {
		name           string
		client, server bool
		err            error
		wantType       string
		wantCode       string
		wantLevel      string
	}{
		{"server stream ends", false, true, nil, "server_stream", "OK", "DEBUG"},
		{"client stream ends with EOF", true, false, nil, "client_stream", "OK", "DEBUG"},
		{"bidi stream cancelled", true, true, status.Error(codes.Canceled, "client left"), "bidi_stream", "Canceled", "INFO"},
		{"server stream fails", false, true, status.Error(codes.Unavailable, "database down"), "server_stream", "Unavailable", "WARN"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			l := callLog{log: slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))}
			info := &grpc.StreamServerInfo{
				FullMethod: "/ordermesh.order.v1.OrderService/WatchOrder", IsClientStream: tt.client, IsServerStream: tt.server,
			}
			err := tt.err
			if tt.client && !tt.server && err == nil {
				err = io.EOF // a client stream's handler may end with io.EOF: that is OK
			}
			got := l.stream(nil, ctxStream{ctx: context.Background()}, info, func(any, grpc.ServerStream) error { return err })
			if got != err {
				t.Errorf("stream = %v, want the handler's %v", got, err)
			}
			lines := logLines(t, &buf)
			if len(lines) != 1 {
				t.Fatalf("wrote %d lines, want 1: %q", len(lines), buf.String())
			}
			if lines[0]["grpc.method_type"] != tt.wantType || lines[0]["grpc.code"] != tt.wantCode || lines[0]["level"] != tt.wantLevel {
				t.Errorf("logged method type %v, code %v, level %v; want %s, %s, %s", lines[0]["grpc.method_type"],
					lines[0]["grpc.code"], lines[0]["level"], tt.wantType, tt.wantCode, tt.wantLevel)
			}
		})
	}
}
