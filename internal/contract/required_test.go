package contract

import (
	"slices"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/genproto/googleapis/api/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// The OpenAPI document lists a field as required where its proto says
// (google.api.field_behavior) = REQUIRED. That must agree with the rules
// protovalidate enforces: in every API request, and every message a valid
// request holds, a field is REQUIRED exactly when clearing it in a valid
// request makes the request invalid.
func TestRequiredFieldsAgreeWithTheRules(t *testing.T) {
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	expected := int64(3)
	requests := []proto.Message{
		&orderv1.CreateOrderRequest{RequestId: validUUID, CustomerEmail: validEmail, PaymentToken: "tok_visa", Items: []*orderv1.LineItem{lineItem()}},
		&orderv1.GetOrderRequest{OrderId: validUUID},
		&orderv1.ListOrdersRequest{PageSize: 10, Status: orderv1.OrderStatus_ORDER_STATUS_PENDING, CustomerEmail: validEmail},
		&orderv1.CancelOrderRequest{OrderId: validUUID, Reason: "changed my mind"},
		&orderv1.WatchOrderRequest{OrderId: validUUID},
		&orderv1.ListOrderEventsRequest{OrderId: validUUID},
		&inventoryv1.SetStockRequest{ProductId: "SKU-1", Available: 5, ExpectedAvailable: &expected},
		&inventoryv1.GetStockRequest{ProductId: "SKU-1"},
	}
	checked := 0
	// walk checks the fields of the message at(root) in a copy of root,
	// then those of the messages it holds.
	var walk func(root proto.Message, at func(proto.Message) protoreflect.Message, path string)
	walk = func(root proto.Message, at func(proto.Message) protoreflect.Message, path string) {
		fields := at(root).Descriptor().Fields()
		for i := range fields.Len() {
			f := fields.Get(i)
			name := path + string(f.Name())
			c := proto.Clone(root)
			at(c).Clear(f)
			refused := v.Validate(c) != nil
			behaviors, _ := proto.GetExtension(f.Options(), annotations.E_FieldBehavior).([]annotations.FieldBehavior)
			required := slices.Contains(behaviors, annotations.FieldBehavior_REQUIRED)
			if refused != required {
				t.Errorf("%s: REQUIRED %v, but a valid request without it is refused: %v", name, required, refused)
			}
			checked++
			if f.Kind() != protoreflect.MessageKind || f.IsMap() || !at(root).Has(f) {
				continue
			}
			if f.IsList() {
				walk(root, func(m proto.Message) protoreflect.Message { return at(m).Get(f).List().Get(0).Message() }, name+"[0].")
			} else {
				walk(root, func(m proto.Message) protoreflect.Message { return at(m).Get(f).Message() }, name+".")
			}
		}
	}
	for _, r := range requests {
		if err := v.Validate(r); err != nil {
			t.Fatalf("%s: the valid request is refused: %v", proto.MessageName(r), err)
		}
		walk(r, func(m proto.Message) protoreflect.Message { return m.ProtoReflect() }, string(proto.MessageName(r).Name())+".")
	}
	if checked < 20 {
		t.Errorf("checked %d fields, want every field of the requests", checked)
	}
}
