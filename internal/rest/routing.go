package rest

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// routeMethods are the methods a REST route may take. HEAD is not one:
// grpc-gateway routes no HEAD; the gateway answers it as the GET (see
// headable). Which methods a path allows is grpc-gateway's matching, but
// for the routes whose path variables misfit (see misfits).
var routeMethods = []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete}

// routingError answers a request grpc-gateway found no route for. A path
// that has routes for other methods gets 405 with the Allow header HTTP
// requires (grpc-gateway's default answers 501 without one), one that has
// none the gateway's 404; the rest is grpc-gateway's.
func routingError(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, code int) {
	if _, ok := ctx.Value(probeKey{}).(*bool); ok {
		return // a probe of allowedMethods that found no route
	}
	switch code {
	case http.StatusNotFound:
		writeStatus(w, code, noRoute(r))
		return
	case http.StatusMethodNotAllowed:
	default:
		runtime.DefaultRoutingErrorHandler(ctx, mux, m, w, r, code)
		return
	}
	allowed := allowedMethods(mux, r)
	if i := slices.Index(allowed, http.MethodGet); i >= 0 && headable(r.URL.Path) {
		allowed = slices.Insert(allowed, i+1, http.MethodHead)
	}
	if len(allowed) == 0 {
		// Only routes whose path variables misfit matched (see
		// probeRoute): no resource is there.
		writeStatus(w, http.StatusNotFound, noRoute(r))
		return
	}
	w.Header().Set("Allow", strings.Join(allowed, ", "))
	writeStatus(w, code, status.New(codes.Unimplemented,
		fmt.Sprintf("method %s not allowed on %s; allowed: %s", r.Method, r.URL.Path, strings.Join(allowed, ", "))))
}

// headable reports whether a HEAD of the REST path is answered as its
// GET: every GET route's but a watch's, which is a stream.
func headable(path string) bool { return !strings.HasSuffix(path, ":watch") }

// probeKey marks a request allowedMethods sends through the mux to learn
// whether a route takes it; its value is the *bool probeRoute sets.
type probeKey struct{}

// probeRoute returns the mux's first middleware (mux returns the mux,
// made after its middlewares): on a probe it records whether the probe
// found a route and goes no further. A route whose path variables the
// request's path does not fill (see misfits) does not take the request:
// it is answered as if grpc-gateway had found no route of its method.
func probeRoute(mux func() *runtime.ServeMux) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if found, ok := r.Context().Value(probeKey{}).(*bool); ok {
				*found = !misfits(params)
				return
			}
			if misfits(params) {
				routingError(r.Context(), mux(), nil, w, r, http.StatusMethodNotAllowed)
				return
			}
			next(w, r, params)
		}
	}
}

// allowedMethods returns the methods the mux routes r's path for, asking
// the mux itself with a bodiless probe per method: the routes and their
// matching stay grpc-gateway's.
func allowedMethods(mux *runtime.ServeMux, r *http.Request) []string {
	var allowed []string
	for _, method := range routeMethods {
		found := false
		probe := r.Clone(context.WithValue(r.Context(), probeKey{}, &found))
		probe.Method, probe.Body, probe.ContentLength = method, http.NoBody, 0
		mux.ServeHTTP(discard{header: http.Header{}}, probe)
		if found {
			allowed = append(allowed, method)
		}
	}
	return allowed
}

// discard is a ResponseWriter that keeps nothing.
type discard struct{ header http.Header }

func (d discard) Header() http.Header       { return d.header }
func (discard) Write(b []byte) (int, error) { return len(b), nil }
func (discard) WriteHeader(int)             {}

// misfits reports whether grpc-gateway matched a route's path variables
// to what no route means them to take: an empty segment (GET /v1/orders/
// would read the order "", POST /v1/orders/ be answered that only GET is
// allowed), or a value holding a ':', which in these paths only begins a
// custom verb (GET /v1/orders/ID:cancel would read the order "ID:cancel"
// rather than say that :cancel takes POST; POST /v1/orders/ID:cancle that
// GET is allowed rather than that there is no such verb). Neither an
// order id nor a product id holds a ':'.
func misfits(params map[string]string) bool {
	for _, v := range params {
		if v == "" || strings.Contains(v, ":") {
			return true
		}
	}
	return false
}

// noRoute is the NOT_FOUND status of a request no route takes.
func noRoute(r *http.Request) *status.Status {
	return status.New(codes.NotFound, fmt.Sprintf("no route for %s %s", r.Method, strings.ToValidUTF8(r.URL.Path, "\uFFFD")))
}
