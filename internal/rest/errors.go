package rest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// httpStatus maps a gRPC code to the HTTP status the gateway answers with.
// It follows grpc-gateway's table except that FAILED_PRECONDITION (e.g.
// cancelling a rejected order) is 409 Conflict: the request was well formed
// but conflicts with the resource's state.
func httpStatus(c codes.Code) int {
	if c == codes.FailedPrecondition {
		return http.StatusConflict
	}
	return runtime.HTTPStatusFromCode(c)
}

type bodyLimitKey struct{}

// bodyLimit records that a request body hit the size limit or the time
// limit, so the error handler can answer 413 or 408 instead of the
// decoder's generic 400.
type bodyLimit struct {
	max      int64
	timeout  time.Duration
	exceeded atomic.Bool
	timedOut atomic.Bool
}

// limitBody rejects bodies larger than max bytes with 413: at once when
// Content-Length says so, otherwise when reading passes the limit. A body
// must arrive within timeout of the request's start, or it gets 408 and
// the connection is closed: a client that stalls mid-body does not hold
// it. The deadline is the connection's read deadline, which net/http
// clears once the body has been read, so it does not bound the call
// itself or a response stream.
func limitBody(max int64, timeout time.Duration, next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength > max {
			writeStatus(w, http.StatusRequestEntityTooLarge, tooLarge(max))
			return
		}
		if r.Body != http.NoBody {
			// A server that supports no deadlines (not net/http's) reads
			// the body without one.
			_ = http.NewResponseController(w).SetReadDeadline(time.Now().Add(timeout))
		}
		lim := &bodyLimit{max: max, timeout: timeout}
		r.Body = &limitedReader{r: http.MaxBytesReader(w, r.Body, max), lim: lim}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), bodyLimitKey{}, lim)))
	})
}

type limitedReader struct {
	r   io.ReadCloser
	lim *bodyLimit
}

func (l *limitedReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	if err == nil || err == io.EOF {
		return n, err
	}
	if _, ok := err.(*http.MaxBytesError); ok {
		l.lim.exceeded.Store(true)
	}
	if ne, ok := errors.AsType[net.Error](err); ok && ne.Timeout() {
		l.lim.timedOut.Store(true)
	}
	return n, err
}

func (l *limitedReader) Close() error { return l.r.Close() }

func tooLarge(max int64) *status.Status {
	return status.New(codes.InvalidArgument, fmt.Sprintf("request body exceeds %d bytes", max))
}

func tooSlow(timeout time.Duration) *status.Status {
	return status.New(codes.DeadlineExceeded, fmt.Sprintf("request body not received within %s", timeout))
}

// errorHandler writes errors as JSON in the shape of a google.rpc.Status
// ({"code", "message", "details"}), whatever the request's Accept header
// asked for (text/event-stream would have it framed as an event);
// validation failures keep their google.rpc.BadRequest detail, which
// names each offending field.
func errorHandler(log *slog.Logger, names map[string]string) runtime.ErrorHandlerFunc {
	return func(ctx context.Context, _ *runtime.ServeMux, _ runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
		st := status.Convert(err)
		code := httpStatus(st.Code())
		if hse, ok := errors.AsType[*runtime.HTTPStatusError](err); ok {
			// grpc-gateway's own answer with its HTTP status: a path with
			// a malformed escape, say.
			st, code = status.Convert(hse.Err), hse.HTTPStatus
			if st.Code() == codes.Unknown && code < 500 {
				st = status.New(codes.InvalidArgument, st.Message())
			}
		}
		if lim, ok := ctx.Value(bodyLimitKey{}).(*bodyLimit); ok {
			switch {
			case lim.exceeded.Load():
				st, code = tooLarge(lim.max), http.StatusRequestEntityTooLarge
			case lim.timedOut.Load():
				st, code = tooSlow(lim.timeout), http.StatusRequestTimeout
				// The rest of the body may still be on its way: the
				// connection cannot carry another request.
				w.Header().Set("Connection", "close")
			}
		}
		if code >= 500 {
			log.ErrorContext(ctx, "upstream call failed", "method", r.Method, "path", r.URL.Path, "code", st.Code().String(), "error", err.Error())
		}
		st = hideClientError(st)
		if st.Code() == codes.InvalidArgument && len(st.Details()) == 0 {
			st = withBodyViolation(withQueryViolation(st), names)
		}
		writeStatus(w, code, st)
	}
}

// queryErrors match grpc-gateway's errors for a query parameter it could
// not parse into its field, the field's name in the first group and what
// was wrong in the second, or said by the entry's description.
var queryErrors = []struct {
	re          *regexp.Regexp
	description string
}{
	// `parsing field "page_size": …`
	{re: regexp.MustCompile(`^parsing (?:field|list) "([a-z0-9_]+)": (.+)$`)},
	// ?status=A&status=B
	{re: regexp.MustCompile(`^too many values for field "([a-z0-9_]+)": .*$`), description: "takes one value, given more than once"},
	// ?page_size=5&pageSize=6: one field by its proto and its JSON name
	{re: regexp.MustCompile(`^duplicate field "([a-z0-9_.]+)"$`), description: "given more than once, by its proto and its JSON name"},
	// ?status[]=A, as some clients send lists
	{re: regexp.MustCompile(`^field "([a-z0-9_]+)" is not a map$`), description: "is no map: name it without brackets (status=A)"},
}

// bodyError matches protojson's errors for a request body of the wrong
// shape that name a field, by its JSON name (the leaf's: not where in
// the message it is), after the line and column: a value of the wrong
// type or range, a field the request has not, one given twice. (The
// space after "proto:" may be a no-break space: protobuf-go varies it.)
var bodyError = regexp.MustCompile(`^proto:[ \x{00A0}]\(line \d+:\d+\): (?:invalid value for (\S+) field (\w+): |unknown field "([^"]+)"$|duplicate field "([^"]+)"$)`)

// withBodyViolation returns st, an INVALID_ARGUMENT without details, with
// a google.rpc.BadRequest naming the field when st is protojson's failure
// to decode a request body for a reason that names one, so that it reads
// like every other invalid request; other statuses return as they are.
// names maps the JSON names of the requests' fields to their proto names,
// which a violation names; a nested field is named by its own name alone.
func withBodyViolation(st *status.Status, names map[string]string) *status.Status {
	m := bodyError.FindStringSubmatch(st.Message())
	if m == nil {
		return st
	}
	proto := func(name string) string {
		if p, ok := names[name]; ok {
			return p
		}
		return name
	}
	switch {
	case m[2] != "":
		return fieldViolation(st.Message(), proto(m[2]), "must be a JSON value of type "+m[1])
	case m[3] != "":
		return fieldViolation(st.Message(), m[3], "no such field in the request")
	default:
		return fieldViolation(st.Message(), proto(m[4]), "given more than once, by its proto and its JSON name")
	}
}

// protoNames maps the JSON name of every field of the services' requests,
// nested messages' included, to its proto name, where they differ and no
// two fields of that JSON name have different proto names.
func protoNames(services ...protoreflect.ServiceDescriptor) map[string]string {
	names := map[string]string{}
	ambiguous := map[string]bool{}
	seen := map[protoreflect.FullName]bool{}
	var walk func(md protoreflect.MessageDescriptor)
	walk = func(md protoreflect.MessageDescriptor) {
		if seen[md.FullName()] {
			return
		}
		seen[md.FullName()] = true
		fields := md.Fields()
		for i := range fields.Len() {
			fd := fields.Get(i)
			if json, name := fd.JSONName(), string(fd.Name()); json != name {
				if p, ok := names[json]; ok && p != name {
					ambiguous[json] = true
				}
				names[json] = name
			}
			if m := fd.Message(); m != nil {
				walk(m)
			}
		}
	}
	for _, svc := range services {
		methods := svc.Methods()
		for i := range methods.Len() {
			walk(methods.Get(i).Input())
		}
	}
	for json := range ambiguous {
		delete(names, json)
	}
	return names
}

// withQueryViolation returns st, an INVALID_ARGUMENT without details, with
// a google.rpc.BadRequest naming the query parameter when st is the
// gateway's failure to parse it, so that it reads like every other
// invalid request; other statuses return as they are. The gateway's query
// parameters are top-level fields, named as in the request message.
func withQueryViolation(st *status.Status) *status.Status {
	for _, e := range queryErrors {
		m := e.re.FindStringSubmatch(st.Message())
		if m == nil {
			continue
		}
		if e.description != "" {
			return fieldViolation(st.Message(), m[1], e.description)
		}
		return fieldViolation(st.Message(), m[1], m[2])
	}
	return st
}

// fieldViolation returns an INVALID_ARGUMENT with message and a
// google.rpc.BadRequest holding one violation of field.
func fieldViolation(message, field, description string) *status.Status {
	st := status.New(codes.InvalidArgument, message)
	withDetails, err := st.WithDetails(&errdetails.BadRequest{FieldViolations: []*errdetails.BadRequest_FieldViolation{
		{Field: field, Description: description},
	}})
	if err != nil {
		return st
	}
	return withDetails
}

// errShuttingDown is the cause of a watch stream's end when the gateway
// shuts down (Options.Streams).
var errShuttingDown = errors.New("gateway shutting down")

// streamErrorHandler returns the status a watch stream ends with, written
// as its last line ({"error": status}), or as the response with its HTTP
// status when the stream had not begun. A stream the gateway ended to
// shut down ends UNAVAILABLE "gateway shutting down; watch again", as the
// order service's own do, so clients tell it from their own cancel and
// reconnect; failures of the upstream (5xx) are logged.
func streamErrorHandler(log *slog.Logger) runtime.StreamErrorHandlerFunc {
	return func(ctx context.Context, err error) *status.Status {
		st := status.New(codes.Unavailable, "gateway shutting down; watch again")
		if !errors.Is(context.Cause(ctx), errShuttingDown) {
			st = status.Convert(err)
			if httpStatus(st.Code()) >= 500 {
				log.ErrorContext(ctx, "upstream stream failed", "code", st.Code().String(), "error", err.Error())
			}
			st = hideClientError(st)
		}
		if w, ok := ctx.Value(watchKey{}).(*watchWriter); ok {
			w.ended = st
		}
		return st
	}
}

// writeStatus writes st as JSON outside grpc-gateway (before routing), in
// the shape errorHandler's responses have.
func writeStatus(w http.ResponseWriter, code int, st *status.Status) {
	if msg := st.Message(); !utf8.ValidString(msg) {
		// A message quoting a path that is not UTF-8: JSON cannot carry
		// it as it is.
		st = status.New(st.Code(), strings.ToValidUTF8(msg, "\uFFFD"))
	}
	body, err := (&runtime.JSONPb{MarshalOptions: orderJSONOptions}).Marshal(st.Proto())
	if err != nil {
		http.Error(w, st.Message(), code)
		return
	}
	if d, ok := retryDelay(st); ok {
		// The google.rpc.RetryInfo's delay, for HTTP clients that read
		// the header rather than the body's details.
		w.Header().Set("Retry-After", strconv.FormatInt(int64(math.Ceil(d.Seconds())), 10))
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(body)
}

// retryDelay returns the delay of st's google.rpc.RetryInfo, if it has
// one.
func retryDelay(st *status.Status) (time.Duration, bool) {
	for _, d := range st.Details() {
		if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay().IsValid() {
			return max(ri.GetRetryDelay().AsDuration(), 0), true
		}
	}
	return 0, false
}
