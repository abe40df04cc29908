package loadgen

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// Creator places one order and returns its id. A failure is an error
// carrying a gRPC status (status.Code gives its code), whichever protocol
// was used.
type Creator interface {
	CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (string, error)
}

// GRPCCreator places orders over gRPC, spreading calls round-robin over
// its connections. It is safe for concurrent use.
type GRPCCreator struct {
	clients []orderv1.OrderServiceClient
	next    atomic.Uint64
}

// NewGRPCCreator returns a creator using conns, which must not be empty.
func NewGRPCCreator(conns ...grpc.ClientConnInterface) *GRPCCreator {
	c := &GRPCCreator{}
	for _, cc := range conns {
		c.clients = append(c.clients, orderv1.NewOrderServiceClient(cc))
	}
	return c
}

// CreateOrder calls OrderService.CreateOrder.
func (c *GRPCCreator) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (string, error) {
	cl := c.clients[c.next.Add(1)%uint64(len(c.clients))]
	resp, err := cl.CreateOrder(ctx, req)
	if err != nil {
		return "", err
	}
	return resp.GetOrder().GetId(), nil
}

// RESTCreator places orders with POST /v1/orders through the gateway. It
// is safe for concurrent use.
type RESTCreator struct {
	base   string
	client *http.Client
}

// NewRESTCreator returns a creator posting to base (e.g.
// "http://127.0.0.1:8080") with client.
func NewRESTCreator(base string, client *http.Client) *RESTCreator {
	return &RESTCreator{base: base, client: client}
}

// CreateOrder posts req as JSON (what protojson.Marshal writes). A
// transport failure is reported as UNAVAILABLE; an error response carries
// the code of the gateway's error body, or one derived from the HTTP
// status when the body has none.
func (c *RESTCreator) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (string, error) {
	body, err := appendCreateOrderJSON(make([]byte, 0, 256), req)
	if err != nil {
		return "", status.Errorf(codes.Internal, "encode request: %v", err)
	}
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, c.base+"/v1/orders", bytes.NewReader(body))
	if err != nil {
		return "", status.Errorf(codes.InvalidArgument, "new request: %v", err)
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := c.client.Do(hreq)
	if err != nil {
		return "", transportError(ctx, "post order", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", transportError(ctx, "read response", err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", restError(resp.StatusCode, b)
	}
	var out struct {
		Order struct {
			ID string `json:"id"`
		} `json:"order"`
	}
	if err := json.Unmarshal(b, &out); err != nil || out.Order.ID == "" {
		return "", status.Errorf(codes.Internal, "decode response: %s", truncate(string(b), 200))
	}
	return out.Order.ID, nil
}

// transportError is the status of a request that failed on the way
// (what: where): the context's when it ended, UNAVAILABLE otherwise.
func transportError(ctx context.Context, what string, err error) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		return status.FromContextError(ctxErr).Err()
	}
	return status.Errorf(codes.Unavailable, "%s: %v", what, err)
}

// restError turns a gateway error response into a gRPC status error. A
// body that is not the gateway's (no code, or OK, which an error is not)
// is described by the HTTP status.
func restError(httpStatus int, body []byte) error {
	var e struct {
		Code    *int   `json:"code"`
		Message string `json:"message"`
	}
	if json.Unmarshal(body, &e) == nil && e.Code != nil && codes.Code(*e.Code) != codes.OK {
		return status.Error(codes.Code(*e.Code), e.Message)
	}
	return status.Errorf(codeOfHTTP(httpStatus), "HTTP %d: %s", httpStatus, truncate(string(body), 200))
}

// codeOfHTTP maps an HTTP status to the gRPC code grpc-gateway would have
// produced it from.
func codeOfHTTP(s int) codes.Code {
	switch s {
	case http.StatusBadRequest:
		return codes.InvalidArgument
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.NotFound
	case http.StatusConflict:
		return codes.Aborted
	case http.StatusRequestEntityTooLarge, http.StatusTooManyRequests:
		return codes.ResourceExhausted
	case http.StatusNotImplemented:
		return codes.Unimplemented
	case http.StatusServiceUnavailable, http.StatusBadGateway:
		return codes.Unavailable
	case http.StatusGatewayTimeout:
		return codes.DeadlineExceeded
	default:
		return codes.Unknown
	}
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// CodeName is the name under which err is counted: its gRPC code
// ("UNAVAILABLE", "DEADLINE_EXCEEDED", …), or "OK" for nil.
func CodeName(err error) string {
	if err == nil {
		return "OK"
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return codeString(codes.DeadlineExceeded)
	}
	if errors.Is(err, context.Canceled) {
		return codeString(codes.Canceled)
	}
	return codeString(status.Code(err))
}

func codeString(c codes.Code) string {
	name := map[codes.Code]string{
		codes.OK: "OK", codes.Canceled: "CANCELLED", codes.Unknown: "UNKNOWN",
		codes.InvalidArgument: "INVALID_ARGUMENT", codes.DeadlineExceeded: "DEADLINE_EXCEEDED",
		codes.NotFound: "NOT_FOUND", codes.AlreadyExists: "ALREADY_EXISTS",
		codes.PermissionDenied: "PERMISSION_DENIED", codes.ResourceExhausted: "RESOURCE_EXHAUSTED",
		codes.FailedPrecondition: "FAILED_PRECONDITION", codes.Aborted: "ABORTED",
		codes.OutOfRange: "OUT_OF_RANGE", codes.Unimplemented: "UNIMPLEMENTED",
		codes.Internal: "INTERNAL", codes.Unavailable: "UNAVAILABLE", codes.DataLoss: "DATA_LOSS",
		codes.Unauthenticated: "UNAUTHENTICATED",
	}[c]
	if name == "" {
		return fmt.Sprintf("CODE_%d", c)
	}
	return name
}
