package rest

import (
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Query parameters are refused unless they name a field the route takes
// from the query, as unknown fields in a body are: grpc-gateway ignores
// the others, so a misspelt filter (?state=CONFIRMED for ?status=…) would
// list every order instead of failing, and a parameter on a route that
// reads none (a POST with `body: "*"`, a GET bound wholly by its path)
// would be dropped without a word.

// queryRoute is what a route takes from its query string.
type queryRoute struct {
	input protoreflect.MessageDescriptor
	// fields are the top-level fields the query may set: none for a route
	// whose body is the whole request, else those not bound by the path
	// or the body.
	fields map[string]bool
	// takes lists fields for error messages.
	takes string
	// pathInBody are the top-level fields of a request read wholly from
	// the body (`body: "*"`) that path variables of the same names set, in
	// the path's order: the body may leave them out or repeat the path's
	// values, nothing else (grpc-gateway would let the path's value win
	// without a word).
	pathInBody []protoreflect.FieldDescriptor
	// needsBody is set for a PUT that reads a body: an empty one would be
	// a request for the resource's zero state (a SetStock of 0), more
	// likely a client's mistake than meant.
	needsBody bool
}

// queryRoutes maps "METHOD /path/template", the template as the matched
// route's runtime.Pattern writes it ("/v1/orders/{order_id=*}:cancel"), to
// what the route takes from its query, for every HTTP binding of the
// services' methods.
func queryRoutes(services ...protoreflect.ServiceDescriptor) map[string]*queryRoute {
	routes := map[string]*queryRoute{}
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			m := methods.Get(i)
			rule, ok := proto.GetExtension(m.Options(), annotations.E_Http).(*annotations.HttpRule)
			if !ok || rule == nil {
				continue
			}
			for _, r := range append([]*annotations.HttpRule{rule}, rule.GetAdditionalBindings()...) {
				method, path := ruleMethod(r)
				if method == "" {
					continue
				}
				q := newQueryRoute(m.Input(), path, r.GetBody())
				q.needsBody = method == http.MethodPut && r.GetBody() != ""
				routes[method+" "+patternString(path)] = q
			}
		}
	}
	return routes
}

// ruleMethod returns the HTTP method and path template of a rule.
func ruleMethod(r *annotations.HttpRule) (method, path string) {
	switch p := r.GetPattern().(type) {
	case *annotations.HttpRule_Get:
		return http.MethodGet, p.Get
	case *annotations.HttpRule_Put:
		return http.MethodPut, p.Put
	case *annotations.HttpRule_Post:
		return http.MethodPost, p.Post
	case *annotations.HttpRule_Delete:
		return http.MethodDelete, p.Delete
	case *annotations.HttpRule_Patch:
		return http.MethodPatch, p.Patch
	case *annotations.HttpRule_Custom:
		return p.Custom.GetKind(), p.Custom.GetPath()
	}
	return "", ""
}

func newQueryRoute(input protoreflect.MessageDescriptor, path, body string) *queryRoute {
	q := &queryRoute{input: input, fields: map[string]bool{}}
	if body != "*" {
		bound := map[string]bool{body: true}
		for _, v := range pathVariables(path) {
			top, _, _ := strings.Cut(v, ".")
			bound[top] = true
		}
		fields := input.Fields()
		var names []string
		for i := range fields.Len() {
			if name := string(fields.Get(i).Name()); !bound[name] {
				q.fields[name] = true
				names = append(names, name)
			}
		}
		if len(names) > 0 {
			q.takes = "this route takes " + strings.Join(names, ", ")
		}
	}
	if body == "*" {
		for _, v := range pathVariables(path) {
			if fd := input.Fields().ByName(protoreflect.Name(v)); fd != nil && fd.Kind() == protoreflect.StringKind && !fd.IsList() {
				q.pathInBody = append(q.pathInBody, fd)
			}
		}
	}
	if q.takes == "" {
		var from []string
		if len(pathVariables(path)) > 0 {
			from = append(from, "the path")
		}
		if body != "" {
			from = append(from, "the body")
		}
		q.takes = "this route takes no query parameters"
		if len(from) > 0 {
			q.takes += "; its request comes from " + strings.Join(from, " and ")
		}
	}
	return q
}

// patternString writes a path template as runtime.Pattern's String does:
// a variable without a segment pattern matches one segment, {v=*}.
func patternString(path string) string {
	var b strings.Builder
	for {
		before, rest, ok := strings.Cut(path, "{")
		b.WriteString(before)
		if !ok {
			return b.String()
		}
		v, after, ok := strings.Cut(rest, "}")
		if !ok {
			b.WriteString("{" + rest)
			return b.String()
		}
		if !strings.Contains(v, "=") {
			v += "=*"
		}
		b.WriteString("{" + v + "}")
		path = after
	}
}

// pathVariables returns the field paths a path template binds:
// "order_id" for "/v1/orders/{order_id}:cancel".
func pathVariables(path string) []string {
	var vars []string
	for {
		_, rest, ok := strings.Cut(path, "{")
		if !ok {
			return vars
		}
		v, after, ok := strings.Cut(rest, "}")
		if !ok {
			return vars
		}
		name, _, _ := strings.Cut(v, "=")
		vars = append(vars, name)
		path = after
	}
}

// unknownParameter returns the first query parameter, in sorted order,
// that names no field the route takes, and whether there is one. A name
// is a field's proto or JSON name, a.b for a field of a message field,
// m[k] for an entry of a map field, as grpc-gateway reads them.
func (q *queryRoute) unknownParameter(values url.Values) (string, bool) {
	for _, key := range slices.Sorted(maps.Keys(values)) {
		if !q.names(key) {
			return key, true
		}
	}
	return "", false
}

func (q *queryRoute) names(key string) bool {
	if i := strings.IndexByte(key, '['); i >= 0 && strings.HasSuffix(key, "]") {
		key = key[:i]
	}
	desc := q.input
	for depth, name := range strings.Split(key, ".") {
		if desc == nil {
			return false // a path through a field that is no message
		}
		fields := desc.Fields()
		fd := fields.ByTextName(name)
		if fd == nil {
			fd = fields.ByJSONName(name)
		}
		if fd == nil || depth == 0 && !q.fields[string(fd.Name())] {
			return false
		}
		desc = fd.Message()
	}
	return true
}

// checkQuery is a mux middleware answering 400 INVALID_ARGUMENT, with a
// field violation naming the parameter, to a request whose query names a
// field its route does not take from the query (see queryRoutes), or
// holds a path or query parameter that is not UTF-8 once percent-decoded:
// grpc-gateway would put it in a string field of the request as it is,
// which the gRPC client then fails to marshal (an INTERNAL error, 500).
// It checks the route's body too (see checkBody).
func checkQuery(routes map[string]*queryRoute) runtime.Middleware {
	return func(next runtime.HandlerFunc) runtime.HandlerFunc {
		return func(w http.ResponseWriter, r *http.Request, params map[string]string) {
			if name, ok := invalidPathParameter(params); ok {
				writeStatus(w, http.StatusBadRequest, fieldViolation(
					fmt.Sprintf("path parameter %q is not valid UTF-8", name), name, notUTF8))
				return
			}
			if r.URL.RawQuery == "" && len(params) == 0 && r.Method != http.MethodPut {
				// Nothing to check: no query, no path variable a body
				// could repeat, no PUT (CreateOrder takes this path).
				next(w, r, params)
				return
			}
			method := r.Method
			if method == http.MethodHead {
				method = http.MethodGet
			}
			pattern, ok := runtime.HTTPPattern(r.Context())
			if !ok {
				next(w, r, params)
				return
			}
			route, ok := routes[method+" "+pattern.String()]
			if !ok {
				next(w, r, params)
				return
			}
			if st := route.checkBody(r, params); st != nil {
				writeStatus(w, http.StatusBadRequest, st)
				return
			}
			if r.URL.RawQuery == "" {
				next(w, r, params)
				return
			}
			values, err := url.ParseQuery(r.URL.RawQuery)
			if err != nil {
				// grpc-gateway parses the query only for routes that take
				// one, so answer for all of them here.
				writeStatus(w, http.StatusBadRequest, status.New(codes.InvalidArgument, "malformed query string: "+err.Error()))
				return
			}
			if key, ok := invalidQueryParameter(values); ok {
				// The violation's field is a proto string, which must be
				// UTF-8 itself.
				writeStatus(w, http.StatusBadRequest, fieldViolation(
					fmt.Sprintf("query parameter %q is not valid UTF-8", key), strings.ToValidUTF8(key, "\uFFFD"), notUTF8))
				return
			}
			if key, ok := route.unknownParameter(values); ok {
				writeStatus(w, http.StatusBadRequest, fieldViolation(
					fmt.Sprintf("unknown query parameter %q: %s", key, route.takes),
					key, "unknown query parameter; "+route.takes))
				return
			}
			next(w, r, params)
		}
	}
}

// notUTF8 describes the violation of a parameter that is not UTF-8.
const notUTF8 = "not valid UTF-8 once percent-decoded"

// invalidPathParameter returns the first path parameter (a variable of
// the route's template), in sorted order, whose value is not valid UTF-8,
// and whether there is one.
func invalidPathParameter(params map[string]string) (string, bool) {
	return firstKey(params, func(_, v string) bool { return !utf8.ValidString(v) })
}

// invalidQueryParameter returns the first query parameter, in sorted
// order, whose name or a value is not valid UTF-8, and whether there is
// one.
func invalidQueryParameter(values url.Values) (string, bool) {
	return firstKey(values, func(key string, vs []string) bool { return !utf8.ValidString(key) || !allUTF8(vs) })
}

// firstKey returns the first key of m, in sorted order, whose entry bad
// holds for, and whether there is one; the answer does not depend on the
// map's iteration order.
func firstKey[V any](m map[string]V, bad func(string, V) bool) (string, bool) {
	first, found := "", false
	for k, v := range m {
		if (!found || k < first) && bad(k, v) {
			first, found = k, true
		}
	}
	return first, found
}

func allUTF8(vs []string) bool {
	for _, v := range vs {
		if !utf8.ValidString(v) {
			return false
		}
	}
	return true
}
