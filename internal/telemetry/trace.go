package telemetry

import (
	"context"
	"strings"
)

// TraceContext is a W3C Trace Context (https://www.w3.org/TR/trace-context/):
// the traceparent and tracestate a request or an event carries. ordermesh
// records no spans of its own; it carries the context a caller sends along
// the saga's events (AMQP headers traceparent and tracestate), so that a
// tracing system can tie a request to everything it set off.
type TraceContext struct {
	Parent, State string
}

// maxTraceState is the longest tracestate kept: the specification's 32
// list members of at most 256 characters each leave it unbounded in
// practice, and propagators may drop a longer one.
const maxTraceState = 512

// ParseTraceContext returns the trace context of a traceparent and
// tracestate as received, a later version's traceparent cut to the fields
// of version 00. An invalid traceparent gives the zero context
// (the specification says to start afresh rather than fail the request);
// a tracestate is kept only beside a valid traceparent and only when it is
// printable ASCII of at most 512 characters.
func ParseTraceContext(parent, state string) TraceContext {
	parent = strings.TrimSpace(parent)
	if !validTraceParent(parent) {
		return TraceContext{}
	}
	// Of a later version's traceparent, what this code understands: its
	// version-00 fields. The rest could be any length.
	parent = parent[:55]
	state = strings.TrimSpace(state)
	if len(state) > maxTraceState || strings.IndexFunc(state, func(r rune) bool { return r < 0x20 || r > 0x7e }) >= 0 {
		state = ""
	}
	return TraceContext{Parent: parent, State: state}
}

// validTraceParent reports whether s is a traceparent this code can carry:
// version-traceid-parentid-flags in lower-case hex, version not ff, the
// ids not all zeros. Version 00 has exactly these four fields; a later
// version may append more after a dash.
func validTraceParent(s string) bool {
	if len(s) < 55 || (len(s) > 55 && (s[:2] == "00" || s[55] != '-')) {
		return false
	}
	if s[2] != '-' || s[35] != '-' || s[52] != '-' || s[:2] == "ff" {
		return false
	}
	for _, f := range []string{s[:2], s[3:35], s[36:52], s[53:55]} {
		for i := 0; i < len(f); i++ {
			if c := f[i]; (c < '0' || c > '9') && (c < 'a' || c > 'f') {
				return false
			}
		}
	}
	return strings.Trim(s[3:35], "0") != "" && strings.Trim(s[36:52], "0") != ""
}

type traceKey struct{}

// WithTraceContext returns ctx carrying tc (see TraceContextFrom).
func WithTraceContext(ctx context.Context, tc TraceContext) context.Context {
	if tc.Parent == "" {
		return ctx
	}
	return context.WithValue(ctx, traceKey{}, tc)
}

// TraceContextFrom returns the trace context ctx carries, or the zero
// one.
func TraceContextFrom(ctx context.Context) TraceContext {
	tc, _ := ctx.Value(traceKey{}).(TraceContext)
	return tc
}
