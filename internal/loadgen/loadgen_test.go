package loadgen

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestPercentile(t *testing.T) {
	ms := func(vs ...int) []time.Duration {
		out := make([]time.Duration, len(vs))
		for i, v := range vs {
			out[i] = time.Duration(v) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name    string
		samples []time.Duration
		p       float64
		want    time.Duration
	}{
		{"empty", nil, 50, 0},
		{"one sample", ms(7), 99, 7 * time.Millisecond},
		{"median of odd count", ms(1, 2, 3, 4, 5), 50, 3 * time.Millisecond},
		{"median of even count is the lower middle", ms(1, 2, 3, 4), 50, 2 * time.Millisecond},
		{"p99 of 1..100", ms(hundred...), 99, 99 * time.Millisecond},
		{"p95 of 1..100", ms(hundred...), 95, 95 * time.Millisecond},
		{"p100 is the max", ms(hundred...), 100, 100 * time.Millisecond},
		{"p99 of ten is the max", ms(1, 2, 3, 4, 5, 6, 7, 8, 9, 10), 99, 10 * time.Millisecond},
		{"p0 clamps to the min", ms(3, 4), 0, 3 * time.Millisecond},
		{"above 100 clamps to the max", ms(3, 4), 150, 4 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Percentile(tt.samples, tt.p); got != tt.want {
				t.Errorf("Percentile(%v, %v) = %v, want %v", tt.samples, tt.p, got, tt.want)
			}
		})
	}
}

func TestSummarize(t *testing.T) {
	samples := []time.Duration{4 * time.Millisecond, 1 * time.Millisecond, 3 * time.Millisecond, 2 * time.Millisecond, 1500 * time.Microsecond}
	got := Summarize(samples)
	want := Latency{Count: 5, P50: 2, P95: 4, P99: 4, Max: 4, Mean: 2.3}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("Summarize (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(Latency{}, Summarize(nil)); diff != "" {
		t.Errorf("Summarize(nil) (-want +got):\n%s", diff)
	}
}

func TestPacer(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		rate float64
		n    int
		want time.Duration // Due(n) - start
	}{
		{"first is at the start", 100, 0, 0},
		{"100/s spaces by 10ms", 100, 1, 10 * time.Millisecond},
		{"100/s, the 250th", 100, 250, 2500 * time.Millisecond},
		{"fractional interval does not drift", 3, 3000, 1000 * time.Second},
		{"1000/s", 1000, 999, 999 * time.Millisecond},
		{"below 1/s", 0.5, 2, 4 * time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := NewPacer(start, tt.rate)
			if got := p.Due(tt.n).Sub(start); got != tt.want {
				t.Errorf("Due(%d) = start+%v, want start+%v", tt.n, got, tt.want)
			}
		})
	}
	t.Run("sends are due in order, none early", func(t *testing.T) {
		p := NewPacer(start, 7)
		prev := p.Due(0)
		for n := 1; n < 1000; n++ {
			due := p.Due(n)
			if !due.After(prev) {
				t.Fatalf("Due(%d) = %v is not after Due(%d) = %v", n, due, n-1, prev)
			}
			if min := time.Duration(float64(n) / 7 * float64(time.Second)); due.Sub(start) < min-time.Nanosecond {
				t.Fatalf("Due(%d) = start+%v, before start+%v", n, due.Sub(start), min)
			}
			prev = due
		}
	})
}

func TestCodeName(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"nil", nil, "OK"},
		{"grpc status", status.Error(codes.Unavailable, "down"), "UNAVAILABLE"},
		{"wrapped deadline", fmt.Errorf("call: %w", context.DeadlineExceeded), "DEADLINE_EXCEEDED"},
		{"cancelled", fmt.Errorf("call: %w", context.Canceled), "CANCELLED"},
		{"plain error", errors.New("boom"), "UNKNOWN"},
		{"unnamed code", status.Error(codes.Code(42), "?"), "CODE_42"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := CodeName(tt.err); got != tt.want {
				t.Errorf("CodeName(%v) = %q, want %q", tt.err, got, tt.want)
			}
		})
	}
}

func TestRESTError(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   codes.Code
	}{
		{"gateway error body", 400, `{"code": 3, "message": "invalid customer_email"}`, codes.InvalidArgument},
		{"code in body wins over HTTP status", 500, `{"code": 14, "message": "down"}`, codes.Unavailable},
		{"no body: from status 503", 503, ``, codes.Unavailable},
		{"html from a proxy: from status 504", 504, `<html>timeout</html>`, codes.DeadlineExceeded},
		{"payload too large", 413, `too large`, codes.ResourceExhausted},
		{"unexpected status", 418, `teapot`, codes.Unknown},
		{"code OK in a failure's body: from the status", 503, `{"code": 0}`, codes.Unavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := status.Code(restError(tt.status, []byte(tt.body))); got != tt.want {
				t.Errorf("restError(%d, %q) code = %v, want %v", tt.status, tt.body, got, tt.want)
			}
		})
	}
}

func TestWriteTable(t *testing.T) {
	s := Summary{
		Protocol: "grpc", Concurrency: 50, LoadSeconds: 10, Sent: 1002, Created: 1000, Failed: 2,
		Errors: map[string]int{"UNAVAILABLE": 1, "DEADLINE_EXCEEDED": 1}, CreatedPerSec: 100,
		CreateLatency: Latency{Count: 1000, P50: 1.5, P95: 3, P99: 4.25, Max: 9},
		Tracking:      "test tracking", Final: map[string]int{"CONFIRMED": 998, "PENDING": 2}, Missing: 0,
		ConfirmedPerSec: 90.5, TerminalSeconds: 11, TerminalLatency: Latency{Count: 998, P50: 100, P95: 200, P99: 300, Max: 400},
	}
	var b strings.Builder
	if err := s.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	want := `protocol     grpc, closed loop, 50 clients, 10.0 s
orders       sent 1002, created 1000, failed 2
created/s    100.0
confirmed/s  90.5 (last terminal at 11.0 s)
final        CONFIRMED 998, PENDING 2
errors       DEADLINE_EXCEEDED 1, UNAVAILABLE 1

latency (ms)     n     p50    p95    p99    max
CreateOrder      1000  1.5    3.0    4.2    9.0
create→terminal  998   100.0  200.0  300.0  400.0

terminal tracking: test tracking.
`
	if diff := cmp.Diff(want, b.String()); diff != "" {
		t.Errorf("WriteTable (-want +got):\n%s", diff)
	}
}

func TestWriteTableWithoutTracking(t *testing.T) {
	s := Summary{Protocol: "rest", TargetRate: 250.5, LoadSeconds: 2, Sent: 501, Created: 501, CreatedPerSec: 250.5}
	var b strings.Builder
	if err := s.WriteTable(&b); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	for _, want := range []string{"rest, open loop at 250.5/s, 2.0 s", "errors     none"} {
		if !strings.Contains(got, want) {
			t.Errorf("table lacks %q:\n%s", want, got)
		}
	}
	for _, unwanted := range []string{"confirmed/s", "create→terminal", "tracking"} {
		if strings.Contains(got, unwanted) {
			t.Errorf("untracked table shows %q:\n%s", unwanted, got)
		}
	}
}

func TestFormatCounts(t *testing.T) {
	tests := []struct {
		name    string
		counts  map[string]int
		missing int
		want    string
	}{
		{"none", nil, 0, "none"},
		{"zero counts are left out", map[string]int{"A": 0}, 0, "none"},
		{"by count then name", map[string]int{"B": 1, "A": 1, "C": 5}, 0, "C 5, A 1, B 1"},
		{"missing last", map[string]int{"CONFIRMED": 3}, 2, "CONFIRMED 3, not found 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := formatCounts(tt.counts, tt.missing); got != tt.want {
				t.Errorf("formatCounts = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestProgressLine(t *testing.T) {
	tests := []struct {
		name     string
		tracking bool
		want     string
	}{
		{"tracking", true, "  12.5s  sent 1200  created 1190 (98/s)  failed 3  in flight 7  terminal 1000  pending 190"},
		{"not tracking", false, "  12.5s  sent 1200  created 1190 (98/s)  failed 3  in flight 7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ProgressLine(12500*time.Millisecond, 1200, 1190, 3, 7, 97.6, tt.tracking, 1000, 190)
			if got != tt.want {
				t.Errorf("ProgressLine =\n%q, want\n%q", got, tt.want)
			}
		})
	}
}

func TestConfigDefaults(t *testing.T) {
	base := func() Config {
		return Config{Creator: NewRESTCreator("http://x", nil), Concurrency: 1, Count: 1, Products: []string{"P"}}
	}
	tests := []struct {
		name   string
		modify func(*Config)
		ok     bool
	}{
		{"closed loop by count", func(*Config) {}, true},
		{"open loop by duration", func(c *Config) { c.Concurrency, c.Rate, c.Count, c.Duration = 0, 10, 0, time.Second }, true},
		{"both rate and concurrency", func(c *Config) { c.Rate = 10 }, false},
		{"neither rate nor concurrency", func(c *Config) { c.Concurrency = 0 }, false},
		{"no bound", func(c *Config) { c.Count = 0 }, false},
		{"no products", func(c *Config) { c.Products = nil }, false},
		{"no creator", func(c *Config) { c.Creator = nil }, false},
		{"negative count", func(c *Config) { c.Count = -1; c.Duration = time.Second }, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := base()
			tt.modify(&c)
			err := c.defaults()
			if (err == nil) != tt.ok {
				t.Errorf("defaults() = %v, want ok=%v", err, tt.ok)
			}
		})
	}
}

func TestRequest(t *testing.T) {
	products := []string{"A", "B", "C"}
	r := Request(4, products, "tok_visa")
	if got := r.GetItems()[0].GetProductId(); got != "B" {
		t.Errorf("product of request 4 = %q, want B (round-robin)", got)
	}
	if r.GetRequestId() == Request(4, products, "tok_visa").GetRequestId() {
		t.Error("two requests share a request id")
	}
	if got := r.GetPaymentToken(); got != "tok_visa" {
		t.Errorf("token = %q", got)
	}
}

func TestAddOutcome(t *testing.T) {
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	loadEnd := start.Add(10 * time.Second)
	var confirmedAt []time.Time
	for i := range 100 { // 40 during the load, 60 in the 6 s after it
		if i < 40 {
			confirmedAt = append(confirmedAt, start.Add(time.Duration(i)*200*time.Millisecond))
		} else {
			confirmedAt = append(confirmedAt, loadEnd.Add(time.Duration(i-39)*100*time.Millisecond))
		}
	}
	var s Summary
	s.addOutcome(Outcome{Statuses: map[string]int{"CONFIRMED": 100}, ConfirmedAt: confirmedAt,
		LastTerminal: loadEnd.Add(6 * time.Second)}, start, loadEnd)
	if s.TerminalSeconds != 16 || s.ConfirmedPerSec != 100.0/16 || s.DrainConfirmedPerSec != 10 {
		t.Errorf("terminal %v s, confirmed %v/s, drain %v/s; want 16 s, 6.25/s, 10/s", s.TerminalSeconds, s.ConfirmedPerSec, s.DrainConfirmedPerSec)
	}
	var small Summary
	small.addOutcome(Outcome{Statuses: map[string]int{"CONFIRMED": 2}, ConfirmedAt: []time.Time{loadEnd.Add(time.Second)},
		LastTerminal: loadEnd.Add(time.Second)}, start, loadEnd)
	if small.DrainConfirmedPerSec != 0 {
		t.Errorf("drain rate from 1 order = %v, want 0 (no backlog)", small.DrainConfirmedPerSec)
	}
}

func TestDrainPause(t *testing.T) {
	for _, c := range []struct {
		pending  int
		interval time.Duration
		want     time.Duration
	}{
		{0, time.Second, 200 * time.Millisecond},
		{fewPending, time.Second, 200 * time.Millisecond},
		{fewPending + 1, time.Second, time.Second},
		{5000, 3 * time.Second, 3 * time.Second},
		{10, 50 * time.Millisecond, 50 * time.Millisecond},
	} {
		if got := drainPause(c.pending, c.interval); got != c.want {
			t.Errorf("drainPause(%d, %v) = %v, want %v", c.pending, c.interval, got, c.want)
		}
	}
}
