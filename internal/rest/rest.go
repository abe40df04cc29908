// Package rest serves ordermesh's REST API: the OrderService and
// InventoryService routes generated from their google.api.http rules
// (grpc-gateway), the OpenAPI document, and a health endpoint that reflects
// the upstream gRPC services.
package rest

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/gen/openapiv2"
)

// Upstreams are the gRPC connections the gateway forwards to.
type Upstreams struct {
	Order     grpc.ClientConnInterface
	Inventory grpc.ClientConnInterface
}

// Options tune the handler; the zero value gets the defaults.
type Options struct {
	// MaxBodyBytes caps request bodies; larger ones get 413. Default 1 MiB.
	MaxBodyBytes int64
	// UpstreamTimeout bounds every unary upstream call. Default 10 s.
	// Streams (WatchOrder) are bounded only by the client.
	UpstreamTimeout time.Duration
	// BodyTimeout bounds the time a request body may take to arrive,
	// counted from when the handler starts; a slower one gets 408 and
	// the connection is closed. Default 30 s.
	BodyTimeout time.Duration
	// WriteTimeout bounds the time the client may take to receive each
	// write of a response, counted from the write's start: a unary
	// response (one write), or one message of a WatchOrder stream. When
	// it passes, the connection is closed. A watch itself lasts as long
	// as its client keeps reading. Default 30 s.
	WriteTimeout time.Duration
	// HealthTimeout bounds the upstream health checks of /healthz. Default 2 s.
	HealthTimeout time.Duration
	// Streams, when set, ends every WatchOrder stream once it is done, so
	// long-lived streams do not hold up a graceful shutdown.
	Streams context.Context
	// Draining, when set, makes /healthz answer 503 NOT_SERVING once it is
	// closed: the gateway is shutting down.
	Draining <-chan struct{}
	// Metrics, when set, counts and times every request.
	Metrics *Metrics
}

func (o *Options) defaults() {
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = 1 << 20
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 10 * time.Second
	}
	if o.BodyTimeout <= 0 {
		o.BodyTimeout = 30 * time.Second
	}
	if o.WriteTimeout <= 0 {
		o.WriteTimeout = 30 * time.Second
	}
	if o.HealthTimeout <= 0 {
		o.HealthTimeout = 2 * time.Second
	}
}

// orderServiceName is the health service name that gates /healthz.
const orderServiceName = "ordermesh.order.v1.OrderService"

// NewHandler returns the gateway's HTTP handler: /v1/... REST routes,
// /openapi.json and /healthz.
func NewHandler(ctx context.Context, log *slog.Logger, up Upstreams, opts Options) (http.Handler, error) {
	opts.defaults()
	var gw *runtime.ServeMux // made after its options, which refer to it
	services := []protoreflect.ServiceDescriptor{
		orderv1.File_ordermesh_order_v1_order_service_proto.Services().ByName("OrderService"),
		inventoryv1.File_ordermesh_inventory_v1_inventory_service_proto.Services().ByName("InventoryService"),
	}
	jsonpb := &runtime.JSONPb{
		MarshalOptions:   orderJSONOptions,
		UnmarshalOptions: protojson.UnmarshalOptions{},
	}
	muxOpts := []runtime.ServeMuxOption{
		runtime.WithMarshalerOption(runtime.MIMEWildcard, &jsonMarshaler{JSONPb: jsonpb}),
		runtime.WithMarshalerOption(eventStreamMIME, &sseMarshaler{JSONPb: jsonpb}),
		runtime.WithErrorHandler(errorHandler(log, protoNames(services...))),
		runtime.WithStreamErrorHandler(streamErrorHandler(log)),
		runtime.WithRoutingErrorHandler(routingError),
		// A POST stands in for no other method: grpc-gateway would
		// otherwise run a form-encoded POST as a GET, or as the method an
		// X-HTTP-Method-Override header names, with its body dropped (a
		// SetStock of nothing, say).
		runtime.WithDisablePathLengthFallback(),
		// Routes match the path as sent, and a path variable is decoded
		// after: the default (legacy) mode decodes the whole path before
		// matching, so POST /v1/orders/ID%3Acancel cancelled the order
		// and GET /v1/stock/A%2FB found no route, where the product id
		// "A/B" is refused for what it is.
		runtime.WithUnescapingMode(runtime.UnescapingModeAllExceptReserved),
		runtime.WithDisableHTTPMethodOverride(),
		runtime.WithMiddlewares(probeRoute(func() *runtime.ServeMux { return gw }), checkQuery(queryRoutes(services...)),
			upstreamTimeout(opts.UpstreamTimeout, opts.Streams), noForwarding),
		runtime.WithIncomingHeaderMatcher(traceHeaders),
		runtime.WithOutgoingHeaderMatcher(noHeaders),
		runtime.WithOutgoingTrailerMatcher(noHeaders),
	}
	if opts.Metrics != nil {
		// Records each request's route for its metrics.
		muxOpts = append(muxOpts, runtime.WithMetadata(routeOf))
	}
	gw = runtime.NewServeMux(muxOpts...)
	if err := orderv1.RegisterOrderServiceHandlerClient(ctx, gw, orderv1.NewOrderServiceClient(up.Order)); err != nil {
		return nil, fmt.Errorf("register order routes: %w", err)
	}
	if err := inventoryv1.RegisterInventoryServiceHandlerClient(ctx, gw, inventoryv1.NewInventoryServiceClient(up.Inventory)); err != nil {
		return nil, fmt.Errorf("register inventory routes: %w", err)
	}

	openAPI := getOnly(http.HandlerFunc(serveOpenAPI))
	health := getOnly(&healthHandler{
		timeout:  opts.HealthTimeout,
		draining: opts.Draining,
		checks: []healthCheck{
			{name: orderServiceName, client: healthpb.NewHealthClient(up.Order), gates: true},
			{name: "ordermesh.inventory.v1.InventoryService", client: healthpb.NewHealthClient(up.Inventory)},
		},
	})
	// Routed on the path as sent. An http.ServeMux would clean it first,
	// and answer /v1/stock/SKU-1/../SKU-2 with a redirect to another
	// product's route (a 307, which a client follows with its method and
	// body), /v1//orders with one to /v1/orders, both in HTML.
	mux := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch path := r.URL.Path; {
		case strings.HasPrefix(path, "/v1/"):
			if r.Method == http.MethodHead && headable(path) {
				// grpc-gateway routes no HEAD: the GET, whose body
				// net/http leaves out of the response to a HEAD.
				r = r.Clone(r.Context())
				r.Method = http.MethodGet
			}
			gw.ServeHTTP(w, r)
		case path == "/openapi.json":
			openAPI.ServeHTTP(w, r)
		case path == "/healthz":
			health.ServeHTTP(w, r)
		default:
			writeStatus(w, http.StatusNotFound, noRoute(r))
		}
	})
	// Every request's body is bounded, whatever its path: one the handler
	// does not read is still read to its end before the response (net/http
	// does so to keep the connection), and without a deadline a client
	// that stalls mid-body would hold the connection, and a shutdown, for
	// as long as it liked.
	h := limitBody(opts.MaxBodyBytes, opts.BodyTimeout, mux)
	if opts.Metrics != nil {
		h = opts.Metrics.wrap(h)
	}
	return boundWrites(opts.WriteTimeout, h), nil
}

// getOnly serves GET (and HEAD) requests with h and answers others 405,
// as JSON like every error of the gateway.
func getOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeStatus(w, http.StatusMethodNotAllowed, status.New(codes.Unimplemented,
				fmt.Sprintf("method %s not allowed on %s; allowed: GET, HEAD", r.Method, r.URL.Path)))
			return
		}
		h.ServeHTTP(w, r)
	})
}

// The upstreams read no incoming gRPC metadata but the W3C trace context,
// so the gateway forwards only that: building metadata from the HTTP
// request, and sending and parsing it, cost CPU on every call. Deadlines
// still reach the upstreams (grpc-gateway turns Grpc-Timeout into the
// context's deadline, which gRPC sends). Nor do the services send metadata
// meant for clients, so responses carry no Grpc-Metadata-* or
// Grpc-Trailer-* headers (grpc-gateway's default would repeat the
// upstream's content-type, application/grpc, on every one).

// traceHeaders is the gateway's incoming header matcher: Traceparent and
// Tracestate go to the upstream as the metadata traceparent and
// tracestate, which the services carry on in the events a call causes;
// no other header is forwarded (grpc-gateway's default forwards the
// permanent ones, such as User-Agent and Content-Type, as grpcgateway-*).
func traceHeaders(key string) (string, bool) {
	switch key {
	case "Traceparent", "Tracestate": // grpc-gateway passes canonical keys
		return strings.ToLower(key), true
	}
	return "", false
}

// noHeaders is the gateway's outgoing header and trailer matcher: it
// forwards no metadata as an HTTP header.
func noHeaders(string) (string, bool) { return "", false }

// forwardedHeaders are what grpc-gateway forwards whatever the header
// matcher says: Authorization as authorization, the X-Forwarded ones
// joined with the request's own host and address.
var forwardedHeaders = []string{"Authorization", "X-Forwarded-For", "X-Forwarded-Host"}

// noForwarding hides from grpc-gateway what it would forward regardless of
// the header matcher: the request's Host and RemoteAddr (as
// x-forwarded-host and x-forwarded-for) and the forwardedHeaders.
func noForwarding(next runtime.HandlerFunc) runtime.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
		r2 := *r
		r2.Host, r2.RemoteAddr = "", ""
		for _, h := range forwardedHeaders {
			if _, ok := r.Header[h]; ok {
				// A handler must not modify its request, so strip a copy.
				r2.Header = r.Header.Clone()
				for _, h := range forwardedHeaders {
					r2.Header.Del(h)
				}
				break
			}
		}
		next(w, &r2, params)
	}
}

func serveOpenAPI(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openapiv2.JSON)
}

// upstreamTimeout bounds unary calls; WatchOrder streams (":watch") run as
// long as the client stays, or until streams ends. A unary call answers
// JSON even to a client that accepts only Server-Sent Events, or sends its
// request as one: they frame stream messages only.
func upstreamTimeout(d time.Duration, streams context.Context) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if strings.HasSuffix(r.URL.Path, ":watch") {
				if streams != nil {
					ctx, cancel := context.WithCancelCause(r.Context())
					defer cancel(nil)
					stop := context.AfterFunc(streams, func() { cancel(errShuttingDown) })
					defer stop()
					r = r.WithContext(ctx)
				}
				serveWatch(w, r, params, next)
				return
			}
			ctx, cancel := context.WithTimeout(r.Context(), d)
			defer cancel()
			r = r.WithContext(ctx)
			// grpc-gateway picks the response's format by Accept, then by
			// the request's Content-Type: neither may make it SSE.
			accept, contentType := slices.Contains(r.Header.Values("Accept"), eventStreamMIME), isEventStream(r.Header.Get("Content-Type"))
			if accept || contentType {
				r.Header = r.Header.Clone()
				if accept {
					r.Header.Del("Accept")
				}
				if contentType {
					r.Header.Del("Content-Type")
				}
			}
			next(w, r, params)
		}
	}
}

// isEventStream reports whether the media type ct names is
// text/event-stream, whatever its parameters. It runs for every unary
// call, so it does not parse the parameters (mime.ParseMediaType
// allocates a map for them).
func isEventStream(ct string) bool {
	mt, _, _ := strings.Cut(ct, ";")
	return strings.EqualFold(strings.TrimSpace(mt), eventStreamMIME)
}

type healthCheck struct {
	name   string
	client healthpb.HealthClient
	// gates makes /healthz answer 503 while this upstream is not SERVING.
	gates bool
}

type healthHandler struct {
	timeout  time.Duration
	draining <-chan struct{}
	checks   []healthCheck
}

// ServeHTTP answers 200 when every gating upstream is SERVING and the
// gateway is not draining, 503 otherwise, with each upstream's status in
// the body. The upstreams are
// asked at once, each within the timeout, so one that hangs does not
// make the others read UNREACHABLE.
func (h *healthHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), h.timeout)
	defer cancel()
	statuses := make([]string, len(h.checks))
	var wg sync.WaitGroup
	for i, c := range h.checks {
		wg.Go(func() {
			statuses[i] = "UNREACHABLE"
			if resp, err := c.client.Check(ctx, &healthpb.HealthCheckRequest{Service: c.name}); err == nil {
				statuses[i] = resp.GetStatus().String()
			}
		})
	}
	wg.Wait()
	upstreams := make(map[string]string, len(h.checks))
	code := http.StatusOK
	for i, c := range h.checks {
		upstreams[c.name] = statuses[i]
		if c.gates && statuses[i] != healthpb.HealthCheckResponse_SERVING.String() {
			code = http.StatusServiceUnavailable
		}
	}
	select {
	case <-h.draining: // nil: never
		code = http.StatusServiceUnavailable
	default:
	}
	overall := "SERVING"
	if code != http.StatusOK {
		overall = "NOT_SERVING"
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]any{"status": overall, "upstreams": upstreams})
}
