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
	pages := 0
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
		if size := proto.Size(resp); size > store.MaxPageBytes {
			t.Errorf("page %d: %d orders in %d bytes, over the %d bytes a page may take", pages, len(got), size, store.MaxPageBytes)
		}
		if next == "" {
			break
		}
		token = next
	}
	if len(seen) != orders || pages < 3 {
		t.Errorf("%d pages listed %d distinct orders, want all %d over several pages", pages, len(seen), orders)
	}
	for id, n := range seen {
		if n != 1 {
			t.Errorf("order %s listed %d times", id, n)
		}
	}
}
