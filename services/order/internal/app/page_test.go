package app_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/services/order/internal/app"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// TestListPagesStayReadable: a page of the largest orders the API takes
// (100 lines, 64-character product ids) at the largest page size (1000)
// would be far past the 4 MiB a gRPC client reads by default; List ends
// such pages early, each well under that limit, and the pages still list
// every order once.
func TestListPagesStayReadable(t *testing.T) {
	// grpcDefaultMaxRecv is the largest message a gRPC client reads unless
	// told otherwise (grpc-go's defaultClientMaxReceiveMessageSize): it is
	// the client's limit, not one of the code under test.
	const grpcDefaultMaxRecv = 4 << 20
	// What keeps every page readable is the bound being no more than the
	// limit: List bounds a page by an estimate of its size above the real
	// one (by about a fifth for these orders), so the pages below would
	// stay under the limit with a bound a little past it.
	if store.MaxPageBytes > grpcDefaultMaxRecv {
		t.Errorf("pages are bounded at %d bytes, want at most the %d bytes a gRPC client reads by default", store.MaxPageBytes, grpcDefaultMaxRecv)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	f := newFixture(t)
	const orders, lines = 1000, 100
	now := time.Now().UTC().Truncate(time.Microsecond)
	b := &pgx.Batch{}
	for i := range orders {
		req := order.Request{RequestID: uuid.NewString(), CustomerEmail: "big@example.com", PaymentToken: "tok_visa"}
		for l := range lines {
			req.Items = append(req.Items, order.LineItem{
				ProductID: fmt.Sprintf("%s-%03d-%04d", strings.Repeat("P", 55), l, i)[:64],
				Quantity:  10000, UnitPrice: order.Money{CurrencyCode: "EUR", Units: 123456789, Nanos: 990000000},
			})
		}
		o, err := order.New(uuid.NewString(), req, now)
		if err != nil {
			t.Fatal(err)
		}
		if err := store.QueueInsertAll(b, o); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.pool.SendBatch(ctx, b).Close(); err != nil {
		t.Fatal(err)
	}

	seen := map[string]int{}
	pages, largest := 0, 0
	for token := ""; ; {
		got, next, err := f.app.List(ctx, store.Filter{}, orders, token, true)
		if err != nil {
			t.Fatal(err)
		}
		pages++
		resp := &orderv1.ListOrdersResponse{NextPageToken: next}
		for _, o := range got {
			seen[o.ID]++
			resp.Orders = append(resp.Orders, app.OrderToProto(o))
		}
		// Within the bound, so within the client's limit.
		size := proto.Size(resp)
		if size > store.MaxPageBytes {
			t.Errorf("page %d: %d orders in %d bytes, over the %d bytes a page may take", pages, len(got), size, store.MaxPageBytes)
		}
		largest = max(largest, size)
		if next == "" {
			break
		}
		token = next
	}
	t.Logf("%d pages, the largest %d bytes", pages, largest)
	if len(seen) != orders || pages < 3 {
		t.Errorf("%d pages listed %d distinct orders, want all %d over several pages", pages, len(seen), orders)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("order %s listed %d times", id, n)
		}
	}
}
