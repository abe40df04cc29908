package app

import (
	"fmt"
	"strings"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// MoneyToProto converts a domain amount to its wire form.
func MoneyToProto(m order.Money) *moneyv1.Money {
	return &moneyv1.Money{CurrencyCode: m.CurrencyCode, Units: m.Units, Nanos: m.Nanos}
}

// MoneyFromProto converts a wire amount to the domain; nil is the zero Money.
func MoneyFromProto(m *moneyv1.Money) order.Money {
	return order.Money{CurrencyCode: m.GetCurrencyCode(), Units: m.GetUnits(), Nanos: m.GetNanos()}
}

// ItemsToProto converts domain line items to their wire form.
func ItemsToProto(items []order.LineItem) []*orderv1.LineItem {
	out := make([]*orderv1.LineItem, len(items))
	for i, it := range items {
		out[i] = &orderv1.LineItem{ProductId: it.ProductID, Quantity: it.Quantity, UnitPrice: MoneyToProto(it.UnitPrice)}
	}
	return out
}

// ItemsFromProto converts wire line items to the domain.
func ItemsFromProto(items []*orderv1.LineItem) []order.LineItem {
	out := make([]order.LineItem, len(items))
	for i, it := range items {
		out[i] = order.LineItem{ProductID: it.GetProductId(), Quantity: it.GetQuantity(), UnitPrice: MoneyFromProto(it.GetUnitPrice())}
	}
	return out
}

// StatusToProto converts a domain status to the API enum.
func StatusToProto(s order.Status) orderv1.OrderStatus {
	switch s {
	case order.StatusPending:
		return orderv1.OrderStatus_ORDER_STATUS_PENDING
	case order.StatusConfirmed:
		return orderv1.OrderStatus_ORDER_STATUS_CONFIRMED
	case order.StatusRejected:
		return orderv1.OrderStatus_ORDER_STATUS_REJECTED
	case order.StatusCancelled:
		return orderv1.OrderStatus_ORDER_STATUS_CANCELLED
	default:
		return orderv1.OrderStatus_ORDER_STATUS_UNSPECIFIED
	}
}

// StatusFromProto converts the API enum to a domain status; UNSPECIFIED
// (any status, as a filter) is order.StatusUnspecified.
func StatusFromProto(s orderv1.OrderStatus) order.Status {
	switch s {
	case orderv1.OrderStatus_ORDER_STATUS_PENDING:
		return order.StatusPending
	case orderv1.OrderStatus_ORDER_STATUS_CONFIRMED:
		return order.StatusConfirmed
	case orderv1.OrderStatus_ORDER_STATUS_REJECTED:
		return order.StatusRejected
	case orderv1.OrderStatus_ORDER_STATUS_CANCELLED:
		return order.StatusCancelled
	default:
		return order.StatusUnspecified
	}
}

// OrderToProto converts a domain order to the API resource. The payment
// token and saga bookkeeping stay inside the service.
func OrderToProto(o order.Order) *orderv1.Order {
	return &orderv1.Order{
		Id:            o.ID,
		CustomerEmail: o.CustomerEmail,
		Items:         ItemsToProto(o.Items),
		Total:         MoneyToProto(o.Total),
		Status:        StatusToProto(o.Status),
		StatusReason:  o.StatusReason,
		CreateTime:    timestamppb.New(o.CreateTime),
		UpdateTime:    timestamppb.New(o.UpdateTime),
	}
}

func orderCreated(o order.Order) *orderv1.OrderCreated {
	return &orderv1.OrderCreated{
		OrderId:       o.ID,
		CustomerEmail: o.CustomerEmail,
		Items:         ItemsToProto(o.Items),
		Total:         MoneyToProto(o.Total),
		PaymentToken:  o.PaymentToken,
		CreateTime:    timestamppb.New(o.CreateTime),
	}
}

// eventToProto builds the wire event for a domain event of order o.
func eventToProto(o order.Order, ev order.Event) (proto.Message, error) {
	switch ev := ev.(type) {
	case order.Confirmed:
		return &orderv1.OrderConfirmed{OrderId: o.ID, CustomerEmail: o.CustomerEmail, Total: MoneyToProto(o.Total)}, nil
	case order.Rejected:
		return &orderv1.OrderRejected{OrderId: o.ID, CustomerEmail: o.CustomerEmail, Reason: ev.Reason}, nil
	case order.Cancelled:
		return &orderv1.OrderCancelled{OrderId: o.ID, CustomerEmail: o.CustomerEmail, Reason: ev.Reason}, nil
	default:
		return nil, fmt.Errorf("no wire event for domain event %T", ev)
	}
}

// eventRecord is the timeline entry of an event about order id.
func eventRecord(id string, meta eventbus.Meta, ev proto.Message) store.Event {
	return store.Event{
		OrderID:    id,
		EventID:    meta.ID,
		RoutingKey: meta.RoutingKey,
		Type:       meta.Type,
		Source:     meta.Source,
		Time:       meta.Time,
		Summary:    summarize(ev),
	}
}

// summarize describes an event in one line for the timeline.
func summarize(ev proto.Message) string {
	switch ev := ev.(type) {
	case *orderv1.OrderCreated:
		return fmt.Sprintf("%d line(s), total %s", len(ev.GetItems()), moneyText(ev.GetTotal()))
	case *orderv1.OrderConfirmed:
		return "confirmed, total " + moneyText(ev.GetTotal())
	case *orderv1.OrderRejected:
		return ev.GetReason()
	case *orderv1.OrderCancelled:
		return ev.GetReason()
	case *inventoryv1.StockReserved:
		return fmt.Sprintf("reserved %d unit(s)", units(ev.GetItems()))
	case *inventoryv1.StockReservationFailed:
		return ev.GetReason()
	case *inventoryv1.StockReleased:
		return fmt.Sprintf("released %d unit(s)", units(ev.GetItems()))
	case *paymentv1.PaymentSucceeded:
		return fmt.Sprintf("charged %s (%s)", moneyText(ev.GetAmount()), ev.GetPaymentId())
	case *paymentv1.PaymentFailed:
		return ev.GetReason()
	case *paymentv1.PaymentRefunded:
		return fmt.Sprintf("refunded %s (%s)", moneyText(ev.GetAmount()), ev.GetPaymentId())
	case *notificationv1.NotificationSent:
		kind := strings.ToLower(strings.TrimPrefix(ev.GetKind().String(), "NOTIFICATION_KIND_"))
		return fmt.Sprintf("emailed %s: %s", ev.GetRecipient(), strings.ReplaceAll(kind, "_", " "))
	default:
		return ""
	}
}

func units(lines []*inventoryv1.StockLine) int64 {
	var n int64
	for _, l := range lines {
		n += int64(l.GetQuantity())
	}
	return n
}

func moneyText(m *moneyv1.Money) string {
	return MoneyFromProto(m).String()
}
