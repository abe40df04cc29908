package rest_test

import (
	"bufio"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/ordermesh/ordermesh/internal/rest"
)

// TestGatewayMetrics: every request is counted by its route (a REST
// route's method and path template, /healthz, or "other" for what no route
// took) and status code, and timed by route; the route probes behind a 405
// count as nothing.
func TestGatewayMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := rest.NewMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	base, _ := startGateway(t, watchingOrders{}, rest.Options{Metrics: m})
	postOrder(t, base, nil)
	postOrder(t, base, nil)
	for _, path := range []string{"/v1/orders/not-a-uuid", "/healthz", "/nothing"} {
		get(t, base+path)
	}
	req, err := http.NewRequest(http.MethodDelete, base+"/v1/orders", nil)
	if err != nil {
		t.Fatal(err)
	}
	send(t, req)
	// A watch's first message arrives while the stream is open: the
	// metrics' writer passes the flushes on. The stream is counted once
	// it ends, here when the client goes.
	resp, err := http.Get(base + "/v1/orders/0190f0c4-6f2b-7c3e-9a1d-2b3c4d5e6f70:watch")
	if err != nil {
		t.Fatal(err)
	}
	if line, err := bufio.NewReader(resp.Body).ReadString('\n'); err != nil || !strings.Contains(line, `"result"`) {
		t.Fatalf("first line of the watch: %q, %v", line, err)
	}
	resp.Body.Close()
	watch := `code="200",route="GET /v1/orders/{order_id}:watch"`
	for deadline := time.Now().Add(10 * time.Second); gatherCounts(t, reg)[watch] != 1; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the watch was not counted: %v", gatherCounts(t, reg))
		}
	}

	// Labels in name order, as the registry gathers them.
	want := map[string]float64{
		`code="200",route="POST /v1/orders"`:           2,
		`code="501",route="GET /v1/orders/{order_id}"`: 1, // watchingOrders has no GetOrder
		`code="503",route="/healthz"`:                  1, // the upstream serves no health
		`code="404",route="other"`:                     1,
		`code="405",route="other"`:                     1,
		watch:                                          1,
	}
	got := gatherCounts(t, reg)
	if len(got) != len(want) {
		t.Errorf("requests counted %v, want %v", got, want)
	}
	for k, n := range want {
		if got[k] != n {
			t.Errorf("requests{%s} = %v, want %v (all: %v)", k, got[k], n, got)
		}
	}
	if timed := gatherTimed(t, reg); timed[`route="POST /v1/orders"`] != 2 || timed[`route="other"`] != 2 {
		t.Errorf("requests timed %v, want 2 for POST /v1/orders and 2 for other", timed)
	}
}

// gatherCounts returns ordermesh_gateway_requests_total by its labels.
func gatherCounts(t *testing.T, reg *prometheus.Registry) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for key, m := range gatherFamily(t, reg, "ordermesh_gateway_requests_total") {
		out[key] = m.GetCounter().GetValue()
	}
	return out
}

// gatherTimed returns the sample counts of ordermesh_gateway_request_seconds
// by its labels.
func gatherTimed(t *testing.T, reg *prometheus.Registry) map[string]uint64 {
	t.Helper()
	out := map[string]uint64{}
	for key, m := range gatherFamily(t, reg, "ordermesh_gateway_request_seconds") {
		out[key] = m.GetHistogram().GetSampleCount()
	}
	return out
}

// gatherFamily returns the metrics of the family name by their labels,
// written name="value" in name order.
func gatherFamily(t *testing.T, reg *prometheus.Registry, name string) map[string]*dto.Metric {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]*dto.Metric{}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var labels []string
			for _, l := range m.GetLabel() {
				labels = append(labels, l.GetName()+`="`+l.GetValue()+`"`)
			}
			out[strings.Join(labels, ",")] = m
		}
	}
	return out
}
