// Package grpcapi serves ordermesh.order.v1.OrderService over gRPC. It
// converts requests to the application layer's calls and maps its errors
// to status codes, in one place. Request validation (protovalidate rules)
// happens in the server's interceptor before a handler runs.
package grpcapi

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// Server implements orderv1.OrderServiceServer.
type Server struct {
	orderv1.UnimplementedOrderServiceServer
	app        *app.App
	log        *slog.Logger
	draining   <-chan struct{}
	maxWatches int64
	watches    atomic.Int64
}

var _ orderv1.OrderServiceServer = (*Server)(nil)

// Option tunes a Server.
type Option func(*Server)

// MaxWatches bounds the WatchOrder streams open at once; the stream past
// the bound ends at once with RESOURCE_EXHAUSTED. Each open watch holds
// goroutines and reads the order on every change of it, and a watch of
// a pending order lasts until the order ends (ORDERMESH_ORDER_TIMEOUT),
// so without a bound clients could hold any number. 0 (the default)
// sets none.
func MaxWatches(n int) Option {
	return func(s *Server) { s.maxWatches = int64(max(n, 0)) }
}

// New returns the OrderService backed by a. WatchOrder streams end with
// UNAVAILABLE when draining is closed (the server is shutting down), so
// clients reconnect elsewhere instead of holding up the shutdown.
func New(a *app.App, log *slog.Logger, draining <-chan struct{}, opts ...Option) *Server {
	s := &Server{app: a, log: log, draining: draining}
	for _, o := range opts {
		o(s)
	}
	return s
}

// errorCodes maps the application's sentinel errors to gRPC codes; the
// first match wins, anything unmatched is INTERNAL.
var errorCodes = []grpcserver.ErrorCode{
	{Err: order.ErrNotFound, Code: codes.NotFound},
	{Err: order.ErrRequestConflict, Code: codes.AlreadyExists},
	{Err: order.ErrNotCancellable, Code: codes.FailedPrecondition},
	{Err: order.ErrMixedCurrency, Code: codes.InvalidArgument},
	{Err: order.ErrInvalid, Code: codes.InvalidArgument},
	{Err: app.ErrInvalidPageToken, Code: codes.InvalidArgument},
	{Err: app.ErrUnavailable, Code: codes.Unavailable, Message: app.ErrUnavailable.Error()},
}

func (s *Server) status(ctx context.Context, err error) error {
	return grpcserver.MapError(ctx, s.log, err, errorCodes)
}

// CreateOrder places an order, idempotently on request_id.
func (s *Server) CreateOrder(ctx context.Context, req *orderv1.CreateOrderRequest) (*orderv1.CreateOrderResponse, error) {
	o, err := s.app.Create(ctx, order.Request{
		RequestID:     canonicalID(req.GetRequestId()),
		CustomerEmail: req.GetCustomerEmail(),
		Items:         app.ItemsFromProto(req.GetItems()),
		PaymentToken:  req.GetPaymentToken(),
	})
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &orderv1.CreateOrderResponse{Order: app.OrderToProto(o)}, nil
}

// GetOrder returns one order.
func (s *Server) GetOrder(ctx context.Context, req *orderv1.GetOrderRequest) (*orderv1.GetOrderResponse, error) {
	o, err := s.app.Get(ctx, canonicalID(req.GetOrderId()))
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &orderv1.GetOrderResponse{Order: app.OrderToProto(o)}, nil
}

// ListOrders returns a page of orders, newest first, in the view asked
// for (without line items in the basic view).
func (s *Server) ListOrders(ctx context.Context, req *orderv1.ListOrdersRequest) (*orderv1.ListOrdersResponse, error) {
	f := store.Filter{Status: app.StatusFromProto(req.GetStatus()), CustomerEmail: req.GetCustomerEmail()}
	// Unspecified and full are the whole order; validation lets no other
	// view through.
	withItems := req.GetView() != orderv1.OrderView_ORDER_VIEW_BASIC
	orders, next, err := s.app.List(ctx, f, int(req.GetPageSize()), req.GetPageToken(), withItems)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	resp := &orderv1.ListOrdersResponse{NextPageToken: next, Orders: make([]*orderv1.Order, len(orders))}
	for i, o := range orders {
		resp.Orders[i] = app.OrderToProto(o)
	}
	return resp, nil
}

// CancelOrder cancels a pending or confirmed order.
func (s *Server) CancelOrder(ctx context.Context, req *orderv1.CancelOrderRequest) (*orderv1.CancelOrderResponse, error) {
	o, err := s.app.Cancel(ctx, canonicalID(req.GetOrderId()), req.GetReason())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &orderv1.CancelOrderResponse{Order: app.OrderToProto(o)}, nil
}

// ListOrderEvents returns the order's event timeline.
func (s *Server) ListOrderEvents(ctx context.Context, req *orderv1.ListOrderEventsRequest) (*orderv1.ListOrderEventsResponse, error) {
	events, err := s.app.Events(ctx, canonicalID(req.GetOrderId()))
	if err != nil {
		return nil, s.status(ctx, err)
	}
	resp := &orderv1.ListOrderEventsResponse{Events: make([]*orderv1.OrderEvent, len(events))}
	for i, e := range events {
		resp.Events[i] = &orderv1.OrderEvent{
			EventId:    e.EventID,
			RoutingKey: e.RoutingKey,
			Type:       e.Type,
			Source:     e.Source,
			Time:       timestamppb.New(e.Time),
			Summary:    e.Summary,
		}
	}
	return resp, nil
}

// watchRetryDelay is when a watch refused for the watch limit may try
// again, as its google.rpc.RetryInfo says (REST: Retry-After).
const watchRetryDelay = 5 * time.Second

// WatchOrder streams the order now and after every change until it is
// terminal or the client leaves.
func (s *Server) WatchOrder(req *orderv1.WatchOrderRequest, stream orderv1.OrderService_WatchOrderServer) error {
	if !s.openWatch() {
		return grpcserver.WithRetryInfo(status.Newf(codes.ResourceExhausted,
			"%d watches are open, the most this server takes; watch again later", s.maxWatches), watchRetryDelay).Err()
	}
	defer s.watches.Add(-1)
	ctx, cancel := context.WithCancelCause(stream.Context())
	defer cancel(nil)
	if s.draining != nil {
		go func() {
			select {
			case <-s.draining:
				cancel(errShuttingDown)
			case <-ctx.Done():
			}
		}()
	}
	err := s.app.Watch(ctx, canonicalID(req.GetOrderId()), func(o order.Order) error {
		return stream.Send(&orderv1.WatchOrderResponse{Order: app.OrderToProto(o)})
	})
	// A watch that ended with the order's terminal status (err nil) ended
	// normally, even if the server began draining meanwhile.
	if err != nil && errors.Is(context.Cause(ctx), errShuttingDown) {
		return grpcserver.Unavailable("server shutting down; watch again", 0)
	}
	return s.status(stream.Context(), err)
}

var errShuttingDown = errors.New("server shutting down")

// openWatch counts a watch in, unless MaxWatches are open. A refused one
// is never counted, so it cannot crowd out a watch that comes as another
// closes.
func (s *Server) openWatch() bool {
	for {
		n := s.watches.Load()
		if s.maxWatches > 0 && n >= s.maxWatches {
			return false
		}
		if s.watches.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// canonicalID returns a UUID in its canonical lower-case form, so that
// "0192F3A4-…" and "0192f3a4-…" name the same order or request (the
// validation interceptor has already checked that it is a UUID; anything
// else is passed on unchanged and is not found).
func canonicalID(id string) string {
	u, err := uuid.Parse(id)
	if err != nil {
		return id
	}
	return u.String()
}
