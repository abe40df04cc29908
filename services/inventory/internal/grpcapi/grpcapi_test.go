package grpcapi_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/inventory/internal/app"
	"github.com/ordermesh/ordermesh/services/inventory/internal/grpcapi"
	"github.com/ordermesh/ordermesh/services/inventory/internal/store"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// startServer serves InventoryService, backed by its own schema, on
// 127.0.0.1:0 and returns a client. Cleanup stops the server and waits
// for it.
func startServer(t *testing.T) (inventoryv1.InventoryServiceClient, fixture) {
	t.Helper()
	pool, _ := postgrestest.NewSchema(t, store.Migrations, outbox.Migrations)
	a := app.New(pool, quiet)
	srv, err := grpcserver.New(quiet)
	if err != nil {
		t.Fatalf("new server: %v", err)
	}
	inventoryv1.RegisterInventoryServiceServer(srv, grpcapi.New(a, quiet))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx, lis) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-errc:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Error("serve did not return")
		}
	})
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })

	return inventoryv1.NewInventoryServiceClient(conn), fixture{app: a, pool: pool}
}

// fixture is the application behind a test server and its pool.
type fixture struct {
	app  *app.App
	pool *pgxpool.Pool
}

// reserve reserves qty units of product for a new order through the
// order events' handler, the way the inbox runner calls it.
func (f fixture) reserve(t *testing.T, product string, qty int32) {
	t.Helper()
	ctx := context.Background()
	ev := &orderv1.OrderCreated{
		OrderId:       uuid.NewString(),
		CustomerEmail: "ada@example.com",
		Items:         []*orderv1.LineItem{{ProductId: product, Quantity: qty, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}}},
		Total:         &moneyv1.Money{CurrencyCode: "EUR", Units: int64(qty)},
		PaymentToken:  "tok_visa",
		CreateTime:    timestamppb.Now(),
	}
	err := postgres.WithTx(ctx, f.pool, func(tx pgx.Tx) error {
		res, err := f.app.Handle(ctx, tx, []inbox.Delivery{{Event: ev}})
		if err != nil {
			return err
		}
		if err := res[0].Err; err != nil {
			return err
		}
		return outbox.AddEvents(ctx, tx, app.Source, "", res[0].Events...)
	})
	if err != nil {
		t.Fatalf("reserve: %v", err)
	}
}

func TestSetAndGetStock(t *testing.T) {
	client, f := startServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	_, err := client.GetStock(ctx, &inventoryv1.GetStockRequest{ProductId: "SKU-1"})
	if code := status.Code(err); code != codes.NotFound {
		t.Fatalf("GetStock of a product never stocked: %v, want NOT_FOUND", err)
	}

	set, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 5})
	if err != nil {
		t.Fatalf("SetStock: %v", err)
	}
	want := &inventoryv1.Stock{ProductId: "SKU-1", Available: 5}
	if diff := cmp.Diff(want, set.GetStock(), protocmp.Transform()); diff != "" {
		t.Errorf("SetStock stock (-want +got):\n%s", diff)
	}

	// Reserve 2, then set the level again: reserved units stay reserved.
	f.reserve(t, "SKU-1", 2)
	set, err = client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 7})
	if err != nil {
		t.Fatalf("SetStock: %v", err)
	}
	want = &inventoryv1.Stock{ProductId: "SKU-1", Available: 7, Reserved: 2}
	if diff := cmp.Diff(want, set.GetStock(), protocmp.Transform()); diff != "" {
		t.Errorf("SetStock stock (-want +got):\n%s", diff)
	}
	got, err := client.GetStock(ctx, &inventoryv1.GetStockRequest{ProductId: "SKU-1"})
	if err != nil {
		t.Fatalf("GetStock: %v", err)
	}
	if diff := cmp.Diff(want, got.GetStock(), protocmp.Transform()); diff != "" {
		t.Errorf("GetStock stock (-want +got):\n%s", diff)
	}

	// Zero is a valid level.
	if _, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-2", Available: 0}); err != nil {
		t.Errorf("SetStock to 0: %v", err)
	}

	// On the condition that the level is still as read: 7 is, 5 is not.
	stale, current := int64(5), int64(7)
	_, err = client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 9, ExpectedAvailable: &stale})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("SetStock expecting 5 where 7 are available: %v, want FailedPrecondition", err)
	}
	set, err = client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 9, ExpectedAvailable: &current})
	if err != nil || set.GetStock().GetAvailable() != 9 {
		t.Errorf("SetStock expecting 7 where 7 are available: %v, %v; want 9 available", set, err)
	}
}

func TestInvalidRequests(t *testing.T) {
	client, _ := startServer(t)
	tests := []struct {
		name      string
		call      func(ctx context.Context) error
		wantField string
	}{
		{"set: empty product", func(ctx context.Context) error {
			_, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{Available: 1})
			return err
		}, "product_id"},
		{"set: product with a space", func(ctx context.Context) error {
			_, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU 1", Available: 1})
			return err
		}, "product_id"},
		{"set: negative level", func(ctx context.Context) error {
			_, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: -1})
			return err
		}, "available"},
		{"set: level too high", func(ctx context.Context) error {
			_, err := client.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 1_000_000_001})
			return err
		}, "available"},
		{"get: empty product", func(ctx context.Context) error {
			_, err := client.GetStock(ctx, &inventoryv1.GetStockRequest{})
			return err
		}, "product_id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			st := status.Convert(tt.call(ctx))
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("got %v %q, want INVALID_ARGUMENT", st.Code(), st.Message())
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, fv := range br.GetFieldViolations() {
						fields = append(fields, fv.GetField())
					}
				}
			}
			// A field may break several rules (an empty id is too short
			// and fails the pattern); each is reported.
			if len(fields) == 0 || slices.ContainsFunc(fields, func(f string) bool { return f != tt.wantField }) {
				t.Errorf("field violations on %v, want on %s only", fields, tt.wantField)
			}
		})
	}
}
