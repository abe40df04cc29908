package rest

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/metadata"
)

// Metrics are the gateway's request metrics, by route: the method and
// path template of a REST route ("POST /v1/orders"), "/healthz",
// "/openapi.json", or "other" for a request no route took (404, 405).
type Metrics struct {
	requests   *prometheus.CounterVec
	seconds    *prometheus.HistogramVec
	unfinished *prometheus.CounterVec
}

// NewMetrics registers the gateway's request metrics on reg.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ordermesh", Name: "gateway_requests_total",
			Help: "HTTP requests answered, by route and status code.",
		}, []string{"route", "code"}),
		seconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: "ordermesh", Name: "gateway_request_seconds",
			Help:    "Time from a request's arrival to the end of its response (a watch: its whole stream), by route.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"route"}),
		unfinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "ordermesh", Name: "gateway_responses_unfinished_total",
			Help: "Responses a write or flush of which failed while the gateway was writing them, by route: the client went away, or took none of a write for ORDERMESH_WRITE_TIMEOUT (what net/http writes after the handler, a small response's body, is not seen). They count in gateway_requests_total too, with the status they began with.",
		}, []string{"route"}),
	}
	for _, c := range []prometheus.Collector{m.requests, m.seconds, m.unfinished} {
		if err := reg.Register(c); err != nil {
			return nil, errors.Join(errors.New("register gateway metrics"), err)
		}
	}
	return m, nil
}

// recorderKey carries a request's *requestRecorder in its context, where
// routeOf finds it once grpc-gateway has routed the request.
type recorderKey struct{}

// routeOf is the gateway mux's metadata annotator: it adds no metadata,
// and records the route grpc-gateway matched for the request's metrics.
func routeOf(ctx context.Context, r *http.Request) metadata.MD {
	if rec, ok := r.Context().Value(recorderKey{}).(*requestRecorder); ok {
		if pattern, ok := runtime.HTTPPathPattern(ctx); ok {
			rec.route = r.Method + " " + pattern
		}
	}
	return nil
}

// wrap counts and times every request next serves.
func (m *Metrics) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &requestRecorder{ResponseWriter: w}
		next.ServeHTTP(rec, r.WithContext(context.WithValue(r.Context(), recorderKey{}, rec)))
		route := rec.route
		if route == "" {
			route = "other"
			if r.URL.Path == "/healthz" || r.URL.Path == "/openapi.json" {
				route = r.URL.Path
			}
		}
		code := rec.code
		if code == 0 {
			code = http.StatusOK
		}
		m.requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		m.seconds.WithLabelValues(route).Observe(time.Since(start).Seconds())
		if rec.failed {
			m.unfinished.WithLabelValues(route).Inc()
		}
	})
}

// requestRecorder is a response as it goes out, noting its status code,
// and the route grpc-gateway matched for its request (routeOf).
type requestRecorder struct {
	http.ResponseWriter
	code   int
	route  string
	failed bool // a write or flush failed
}

func (w *requestRecorder) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *requestRecorder) Write(b []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.failed = w.failed || err != nil
	return n, err
}

// FlushError flushes what went out (streams flush after every message).
func (w *requestRecorder) FlushError() error {
	err := http.NewResponseController(w.ResponseWriter).Flush()
	w.failed = w.failed || err != nil
	return err
}

// Unwrap lets http.ResponseController reach the connection.
func (w *requestRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }
