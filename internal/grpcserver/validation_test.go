package grpcserver

import (
	"testing"

	"buf.build/gen/go/bufbuild/protovalidate/protocolbuffers/go/buf/validate"
	"buf.build/go/protovalidate"
	"github.com/google/go-cmp/cmp"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/testing/protocmp"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

func fieldElem(name string) *validate.FieldPathElement {
	return validate.FieldPathElement_builder{FieldName: proto.String(name)}.Build()
}

func indexElem(name string, i uint64) *validate.FieldPathElement {
	return validate.FieldPathElement_builder{FieldName: proto.String(name), Index: proto.Uint64(i)}.Build()
}

func keyElem(name, key string) *validate.FieldPathElement {
	return validate.FieldPathElement_builder{FieldName: proto.String(name), StringKey: proto.String(key)}.Build()
}

func violation(msg, ruleID string, elems ...*validate.FieldPathElement) *validate.Violation {
	b := validate.Violation_builder{RuleId: proto.String(ruleID)}
	if msg != "" {
		b.Message = proto.String(msg)
	}
	if len(elems) > 0 {
		b.Field = validate.FieldPath_builder{Elements: elems}.Build()
	}
	return b.Build()
}

func TestFieldViolations(t *testing.T) {
	tests := []struct {
		name string
		in   *validate.Violations
		want []*errdetails.BadRequest_FieldViolation
	}{
		{
			name: "nil",
			in:   nil,
			want: []*errdetails.BadRequest_FieldViolation{},
		},
		{
			name: "top-level field",
			in: validate.Violations_builder{Violations: []*validate.Violation{
				violation("must be a valid email address", "string.email", fieldElem("customer_email")),
			}}.Build(),
			want: []*errdetails.BadRequest_FieldViolation{
				{Field: "customer_email", Description: "must be a valid email address"},
			},
		},
		{
			name: "repeated element and nested message, in order",
			in: validate.Violations_builder{Violations: []*validate.Violation{
				violation("must be greater than or equal to 1", "int32.gte", indexElem("items", 0), fieldElem("quantity")),
				violation("does not match regex pattern `^[A-Z]{3}$`", "string.pattern",
					indexElem("items", 2), fieldElem("unit_price"), fieldElem("currency_code")),
			}}.Build(),
			want: []*errdetails.BadRequest_FieldViolation{
				{Field: "items[0].quantity", Description: "must be greater than or equal to 1"},
				{Field: "items[2].unit_price.currency_code", Description: "does not match regex pattern `^[A-Z]{3}$`"},
			},
		},
		{
			name: "map key",
			in: validate.Violations_builder{Violations: []*validate.Violation{
				violation("is required", "required", keyElem("labels", "env")),
			}}.Build(),
			want: []*errdetails.BadRequest_FieldViolation{
				{Field: `labels["env"]`, Description: "is required"},
			},
		},
		{
			name: "message-level rule without a message",
			in: validate.Violations_builder{Violations: []*validate.Violation{
				violation("", "money.sign"),
			}}.Build(),
			want: []*errdetails.BadRequest_FieldViolation{
				{Field: "", Description: "[money.sign]"},
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := FieldViolations(tt.in)
			if diff := cmp.Diff(tt.want, got, protocmp.Transform()); diff != "" {
				t.Errorf("FieldViolations() mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestValidationStatusFromRealRequest runs protovalidate on a generated
// request so the field paths are the ones clients will see.
func TestValidationStatusFromRealRequest(t *testing.T) {
	req := &orderv1.CreateOrderRequest{
		RequestId:     "0191d7a8-7c1e-7a4e-8b7e-2f1c3d4e5f60",
		CustomerEmail: "not-an-email",
		Items: []*orderv1.LineItem{{
			ProductId: "sku-1",
			Quantity:  0,
			UnitPrice: &moneyv1.Money{CurrencyCode: "eur", Units: 1},
		}},
		PaymentToken: "tok_ok",
	}
	err := protovalidate.GlobalValidator.Validate(req)
	verr, ok := err.(*protovalidate.ValidationError)
	if !ok {
		t.Fatalf("Validate() = %v, want a *protovalidate.ValidationError", err)
	}
	st := ValidationStatus(verr.ToProto())
	if st.Code() != codes.InvalidArgument {
		t.Errorf("code = %v, want InvalidArgument", st.Code())
	}

	var gotFields []string
	var gotViolations *validate.Violations
	for _, d := range st.Details() {
		switch d := d.(type) {
		case *errdetails.BadRequest:
			for _, fv := range d.GetFieldViolations() {
				if fv.GetDescription() == "" {
					t.Errorf("field violation %q has no description", fv.GetField())
				}
				gotFields = append(gotFields, fv.GetField())
			}
		case *validate.Violations:
			gotViolations = d
		default:
			t.Errorf("unexpected detail %T", d)
		}
	}
	wantFields := []string{"customer_email", "items[0].quantity", "items[0].unit_price.currency_code"}
	if diff := cmp.Diff(wantFields, gotFields); diff != "" {
		t.Errorf("BadRequest fields mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(verr.ToProto(), gotViolations, protocmp.Transform()); diff != "" {
		t.Errorf("buf.validate.Violations detail mismatch (-want +got):\n%s", diff)
	}
	wantMsg := "invalid request: customer_email: must be a valid email address; " +
		"items[0].quantity: must be greater than or equal to 1 and less than or equal to 10000; " +
		"items[0].unit_price.currency_code: does not match regex pattern `^[A-Z]{3}$`"
	if st.Message() != wantMsg {
		t.Errorf("message = %q, want %q", st.Message(), wantMsg)
	}
}
