package telemetry

import (
	"context"
	"strings"
	"testing"
)

func TestParseTraceContext(t *testing.T) {
	const valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	for _, tt := range []struct {
		name, parent, state string
		want                TraceContext
	}{
		{name: "valid", parent: valid, state: "congo=t61rcWkgMzE", want: TraceContext{valid, "congo=t61rcWkgMzE"}},
		{name: "valid, spaces around", parent: " " + valid + " ", want: TraceContext{Parent: valid}},
		{name: "a later version with more fields", parent: "01" + valid[2:] + "-" + strings.Repeat("x", 4000), want: TraceContext{Parent: "01" + valid[2:]}},
		{name: "version 00 with more fields", parent: valid + "-extra"},
		{name: "version ff", parent: "ff" + valid[2:]},
		{name: "upper case", parent: strings.ToUpper(valid)},
		{name: "trace id all zeros", parent: "00-00000000000000000000000000000000-00f067aa0ba902b7-01"},
		{name: "parent id all zeros", parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"},
		{name: "too short", parent: valid[:54]},
		{name: "misplaced dash", parent: "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01"},
		{name: "not hex", parent: "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"},
		{name: "empty"},
		{name: "state without a valid parent", parent: "nope", state: "a=b"},
		{name: "state too long", parent: valid, state: strings.Repeat("a", 513), want: TraceContext{Parent: valid}},
		{name: "state with a control character", parent: valid, state: "a=b\nc=d", want: TraceContext{Parent: valid}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := ParseTraceContext(tt.parent, tt.state); got != tt.want {
				t.Errorf("ParseTraceContext(%q, %q) = %+v, want %+v", tt.parent, tt.state, got, tt.want)
			}
		})
	}
}

func TestTraceContextTravelsInContext(t *testing.T) {
	ctx := context.Background()
	if got := TraceContextFrom(ctx); got != (TraceContext{}) {
		t.Errorf("TraceContextFrom(empty) = %+v, want zero", got)
	}
	tc := TraceContext{Parent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", State: "a=b"}
	if got := TraceContextFrom(WithTraceContext(ctx, tc)); got != tc {
		t.Errorf("TraceContextFrom = %+v, want %+v", got, tc)
	}
}
