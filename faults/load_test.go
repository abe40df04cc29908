package faults

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// kind is what an order of the load is designed to end as.
type kind int

const (
	kindConfirm    kind = iota // stocked product, good card
	kindOutOfStock             // product with no stock
	kindDecline                // tok_decline
	kindCancel                 // cancelled right after it was placed
	kindFlaky                  // tok_unavailable: two provider errors, then success
)

func (k kind) String() string {
	return [...]string{"confirm", "out-of-stock", "decline", "cancel", "flaky"}[k]
}

const (
	skuStocked   = "FAULTS-STOCKED"
	skuEmpty     = "FAULTS-EMPTY"
	initialStock = 10_000_000
	// callTimeout bounds each CreateOrder and CancelOrder call.
	callTimeout = 10 * time.Second
)

// order is one CreateOrder of the load and what came of it.
type order struct {
	n         int
	kind      kind
	requestID string
	email     string
	quantity  int32
	// code is CreateOrder's status code; id is set when it is OK.
	code codes.Code
	msg  string
	id   string
	// cancelCode is CancelOrder's status code, for kindCancel orders
	// created OK.
	cancelCode codes.Code
	at         time.Time
}

func (o *order) request() *orderv1.CreateOrderRequest {
	token, sku := "tok_visa", skuStocked
	switch o.kind {
	case kindOutOfStock:
		sku = skuEmpty
	case kindDecline:
		token = "tok_decline"
	case kindFlaky:
		token = "tok_unavailable"
	}
	return &orderv1.CreateOrderRequest{
		RequestId: o.requestID, CustomerEmail: o.email, PaymentToken: token,
		Items: []*orderv1.LineItem{{ProductId: sku, Quantity: o.quantity,
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 990000000}}},
	}
}

// load places orders at a steady rate with bounded concurrency: 70%
// confirmed, 8% out of stock, 8% declined, 8% cancelled, 6% flaky payment.
type load struct {
	client orderv1.OrderServiceClient
	tag    string

	mu     sync.Mutex
	orders []*order
}

func newLoad(client orderv1.OrderServiceClient, tag string) *load {
	return &load{client: client, tag: tag}
}

func kindOf(i int) kind {
	switch i % 50 {
	case 3, 13, 23, 33:
		return kindOutOfStock
	case 5, 15, 25, 45:
		return kindDecline
	case 7, 17, 37, 47:
		return kindCancel
	case 9, 29, 49:
		return kindFlaky
	default:
		return kindConfirm
	}
}

// run places n orders at rate per second, at most concurrency at once,
// and returns when every call has returned or ctx ended.
func (l *load) run(ctx context.Context, n int, rate float64, concurrency int) {
	start := time.Now()
	g, ctx := errgroup.WithContext(ctx)
	g.SetLimit(concurrency)
	for i := range n {
		due := start.Add(time.Duration(float64(i) / rate * float64(time.Second)))
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Until(due)):
		}
		o := &order{n: i, kind: kindOf(i), requestID: uuid.NewString(),
			email: fmt.Sprintf("%s-%05d@example.com", l.tag, i), quantity: int32(1 + i%3)}
		g.Go(func() error {
			l.place(ctx, o)
			return nil
		})
	}
	_ = g.Wait()
}

func (l *load) place(ctx context.Context, o *order) {
	o.at = time.Now()
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	resp, err := l.client.CreateOrder(cctx, o.request())
	cancel()
	st := status.Convert(err)
	o.code, o.msg = st.Code(), st.Message()
	if err == nil {
		o.id = resp.GetOrder().GetId()
		if o.kind == kindCancel {
			cctx, cancel := context.WithTimeout(ctx, callTimeout)
			_, err := l.client.CancelOrder(cctx, &orderv1.CancelOrderRequest{OrderId: o.id, Reason: "faults"})
			cancel()
			o.cancelCode = status.Code(err)
		}
	}
	l.mu.Lock()
	l.orders = append(l.orders, o)
	l.mu.Unlock()
}

// placed returns every order whose CreateOrder returned.
func (l *load) placed() []*order {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]*order(nil), l.orders...)
}

// codes counts CreateOrder results by code.
func (l *load) codes() map[codes.Code]int {
	out := map[codes.Code]int{}
	for _, o := range l.placed() {
		out[o.code]++
	}
	return out
}
