package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/google/uuid"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// scenario is one order the demo places and the outcome it expects.
type scenario struct {
	name   string
	sku    string
	token  string
	cancel bool
	want   orderv1.OrderStatus
}

// demoResult is what the demo reports per scenario.
type demoResult struct {
	Scenario string   `json:"scenario"`
	OrderID  string   `json:"order_id"`
	Status   string   `json:"status"`
	Reason   string   `json:"reason,omitempty"`
	History  []string `json:"history"`
	Events   []string `json:"events"`
	Expected string   `json:"expected"`
	OK       bool     `json:"ok"`
}

const (
	demoWidget = "demo-widget"
	demoGadget = "demo-gadget"
)

// demo stocks two products (one sold out) and places four orders that end
// CONFIRMED, REJECTED (out of stock), REJECTED (card declined) and
// CANCELLED, printing each order's final state and the statuses it went
// through. It fails when an order ends otherwise.
func (c *client) demo(ctx context.Context, args []string) error {
	if len(args) != 0 {
		return usagef("demo takes no arguments")
	}
	for sku, n := range map[string]int64{demoWidget: 1000, demoGadget: 0} {
		callCtx, cancel := c.call(ctx)
		_, err := c.inventory.SetStock(callCtx, &inventoryv1.SetStockRequest{ProductId: sku, Available: n})
		cancel()
		if err != nil {
			return fmt.Errorf("stock %s: %w", sku, err)
		}
		c.say("stocked %s: %d available", sku, n)
	}
	scenarios := []scenario{
		{name: "confirmed", sku: demoWidget, token: "tok_visa", want: orderv1.OrderStatus_ORDER_STATUS_CONFIRMED},
		{name: "rejected: out of stock", sku: demoGadget, token: "tok_visa", want: orderv1.OrderStatus_ORDER_STATUS_REJECTED},
		{name: "rejected: card declined", sku: demoWidget, token: "tok_decline", want: orderv1.OrderStatus_ORDER_STATUS_REJECTED},
		{name: "cancelled", sku: demoWidget, token: "tok_visa", cancel: true, want: orderv1.OrderStatus_ORDER_STATUS_CANCELLED},
	}
	failed := 0
	for _, sc := range scenarios {
		res, err := c.runScenario(ctx, sc)
		if err != nil {
			return fmt.Errorf("scenario %q: %w", sc.name, err)
		}
		if !res.OK {
			failed++
		}
		c.report(res)
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d demo orders did not end as expected", failed, len(scenarios))
	}
	return nil
}

func (c *client) runScenario(ctx context.Context, sc scenario) (demoResult, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := c.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{
		RequestId:     uuid.NewString(),
		CustomerEmail: "demo@example.com",
		PaymentToken:  sc.token,
		Items: []*orderv1.LineItem{{
			ProductId: sc.sku, Quantity: 2,
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 19, Nanos: 990000000},
		}},
	})
	if err != nil {
		return demoResult{}, err
	}
	id := resp.GetOrder().GetId()
	var history []string
	last := resp.GetOrder()
	record := func(o *orderv1.Order) {
		name := statusName(o.GetStatus())
		if len(history) == 0 || history[len(history)-1] != name {
			history = append(history, name)
		}
		last = o
	}
	record(last)
	if err := c.watchOrder(ctx, id, record); err != nil {
		return demoResult{}, fmt.Errorf("watch %s: %w", id, err)
	}
	if sc.cancel {
		cr, err := c.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: id, Reason: "demo: customer changed their mind"})
		if err != nil {
			return demoResult{}, fmt.Errorf("cancel %s: %w", id, err)
		}
		record(cr.GetOrder())
	}
	events, err := c.settledEvents(ctx, id)
	if err != nil {
		return demoResult{}, fmt.Errorf("events of %s: %w", id, err)
	}
	return demoResult{
		Events:   events,
		Scenario: sc.name,
		OrderID:  id,
		Status:   statusName(last.GetStatus()),
		Reason:   last.GetStatusReason(),
		History:  history,
		Expected: statusName(sc.want),
		OK:       last.GetStatus() == sc.want,
	}, nil
}

// settledEvents returns order id's timeline once it stops growing (the
// last notifications and compensations arrive shortly after the order's
// final status), waiting at most a few seconds.
func (c *client) settledEvents(ctx context.Context, id string) ([]string, error) {
	var last []string
	deadline := time.Now().Add(5 * time.Second)
	for {
		resp, err := c.orders.ListOrderEvents(ctx, &orderv1.ListOrderEventsRequest{OrderId: id})
		if err != nil {
			return nil, err
		}
		var lines []string
		for _, e := range resp.GetEvents() {
			lines = append(lines, fmt.Sprintf("%-24s %-12s %s", e.GetRoutingKey(), e.GetSource(), e.GetSummary()))
		}
		if (len(lines) == len(last) && len(lines) > 0) || time.Now().After(deadline) {
			return lines, nil
		}
		last = lines
		select {
		case <-ctx.Done():
			return last, nil
		case <-time.After(700 * time.Millisecond):
		}
	}
}

func (c *client) say(format string, args ...any) {
	if !c.opts.json {
		fmt.Fprintf(c.out, format+"\n", args...)
	}
}

func (c *client) report(r demoResult) {
	if c.opts.json {
		b, err := json.Marshal(r)
		if err != nil {
			fmt.Fprintf(c.out, "{\"error\": %q}\n", err.Error())
			return
		}
		fmt.Fprintln(c.out, string(b))
		return
	}
	mark := "ok"
	if !r.OK {
		mark = "UNEXPECTED (wanted " + r.Expected + ")"
	}
	fmt.Fprintf(c.out, "\n%-24s %s  %s\n  order   %s\n  history %s\n", r.Scenario, r.Status, mark, r.OrderID, strings.Join(r.History, " → "))
	if r.Reason != "" {
		fmt.Fprintf(c.out, "  reason  %s\n", r.Reason)
	}
	fmt.Fprintf(c.out, "  events\n")
	for _, e := range r.Events {
		fmt.Fprintf(c.out, "    %s\n", e)
	}
}
