// Package grpcapi serves ordermesh.inventory.v1.InventoryService over gRPC.
// It converts requests to the application layer's calls and maps its
// errors to status codes, in one place. Request validation (protovalidate
// rules) happens in the server's interceptor before a handler runs; the
// application checks its invariants again.
package grpcapi

import (
	"context"
	"log/slog"

	"google.golang.org/grpc/codes"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/services/inventory/internal/app"
	"github.com/ordermesh/ordermesh/services/inventory/internal/stock"
)

// Server implements inventoryv1.InventoryServiceServer.
type Server struct {
	inventoryv1.UnimplementedInventoryServiceServer
	app *app.App
	log *slog.Logger
}

var _ inventoryv1.InventoryServiceServer = (*Server)(nil)

// New returns the InventoryService backed by a.
func New(a *app.App, log *slog.Logger) *Server {
	return &Server{app: a, log: log}
}

// errorCodes maps the application's sentinel errors to gRPC codes; the
// first match wins, anything unmatched is INTERNAL.
var errorCodes = []grpcserver.ErrorCode{
	{Err: stock.ErrNotFound, Code: codes.NotFound},
	{Err: stock.ErrInvalid, Code: codes.InvalidArgument},
	{Err: stock.ErrLevelChanged, Code: codes.FailedPrecondition},
	{Err: app.ErrUnavailable, Code: codes.Unavailable, Message: app.ErrUnavailable.Error()},
}

func (s *Server) status(ctx context.Context, err error) error {
	return grpcserver.MapError(ctx, s.log, err, errorCodes)
}

// SetStock sets a product's available units, creating the product if new;
// with expected_available, only if they are still that many.
func (s *Server) SetStock(ctx context.Context, req *inventoryv1.SetStockRequest) (*inventoryv1.SetStockResponse, error) {
	l, err := s.app.SetStock(ctx, req.GetProductId(), req.GetAvailable(), req.ExpectedAvailable)
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &inventoryv1.SetStockResponse{Stock: levelToProto(l)}, nil
}

// GetStock returns a product's stock, or NOT_FOUND for one never stocked.
func (s *Server) GetStock(ctx context.Context, req *inventoryv1.GetStockRequest) (*inventoryv1.GetStockResponse, error) {
	l, err := s.app.GetStock(ctx, req.GetProductId())
	if err != nil {
		return nil, s.status(ctx, err)
	}
	return &inventoryv1.GetStockResponse{Stock: levelToProto(l)}, nil
}

func levelToProto(l stock.Level) *inventoryv1.Stock {
	return &inventoryv1.Stock{ProductId: l.ProductID, Available: l.Available, Reserved: l.Reserved}
}
