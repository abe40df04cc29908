package grpcserver

import (
	"context"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"github.com/ordermesh/ordermesh/internal/telemetry"
)

// traceUnary gives the handler the call's W3C trace context, sent as the
// metadata traceparent and tracestate (telemetry.TraceContextFrom), so
// that the events a call causes carry it on.
func traceUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(withTraceContext(ctx), req)
}

// traceStream is traceUnary for streams.
func traceStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := withTraceContext(ss.Context())
	if ctx == ss.Context() {
		return handler(srv, ss)
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

func withTraceContext(ctx context.Context) context.Context {
	// ValueFromIncomingContext reads the one key without copying the
	// call's metadata, as FromIncomingContext would on every call.
	parent := metadata.ValueFromIncomingContext(ctx, "traceparent")
	if len(parent) == 0 {
		return ctx
	}
	state := metadata.ValueFromIncomingContext(ctx, "tracestate")
	return telemetry.WithTraceContext(ctx, telemetry.ParseTraceContext(parent[0], strings.Join(state, ",")))
}

// contextStream is a stream whose context is ctx.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (s *contextStream) Context() context.Context { return s.ctx }
