package loadgen

import (
	"bytes"
	"encoding/json"
	"errors"
	"slices"
	"testing"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// TestAppendCreateOrderJSON checks that appendCreateOrderJSON writes what
// protojson.Marshal writes (but for protojson's random whitespace), and
// that it decodes to the same request.
func TestAppendCreateOrderJSON(t *testing.T) {
	eur := func(units int64, nanos int32) *moneyv1.Money {
		return &moneyv1.Money{CurrencyCode: "EUR", Units: units, Nanos: nanos}
	}
	tests := []struct {
		name string
		req  *orderv1.CreateOrderRequest
	}{
		{"load generator's", Request(7, Products("BENCH", 16), "tok_visa")},
		{"empty", &orderv1.CreateOrderRequest{}},
		{"several items", &orderv1.CreateOrderRequest{RequestId: "r", CustomerEmail: "a@b.c", PaymentToken: "t",
			Items: []*orderv1.LineItem{
				{ProductId: "SKU-1", Quantity: 2, UnitPrice: eur(9, 500000000)},
				{ProductId: "SKU-2", Quantity: -1, UnitPrice: eur(-3, -250000000)},
				{ProductId: "SKU-3"},
				{},
				{UnitPrice: &moneyv1.Money{}},
				{UnitPrice: eur(1<<62, 0)},
			}}},
		{"characters to escape", &orderv1.CreateOrderRequest{
			RequestId:     "\"quoted\" back\\slash /slash",
			CustomerEmail: "ctl \x00\x01\x08\x09\x0a\x0c\x0d\x1f\x7f end",
			PaymentToken:  "ünïcödé € 𝄞 \u2028 <>&",
			Items:         []*orderv1.LineItem{{ProductId: "\t"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := appendCreateOrderJSON([]byte("prefix"), tt.req)
			if err != nil {
				t.Fatalf("append: %v", err)
			}
			got, ok := bytes.CutPrefix(got, []byte("prefix"))
			if !ok {
				t.Fatalf("lost what it appended to: %s", got)
			}
			want, err := protojson.Marshal(tt.req)
			if err != nil {
				t.Fatalf("protojson: %v", err)
			}
			var compact bytes.Buffer
			if err := json.Compact(&compact, want); err != nil {
				t.Fatalf("compact protojson's %s: %v", want, err)
			}
			if !bytes.Equal(got, compact.Bytes()) {
				t.Errorf("got  %s\nwant %s", got, compact.Bytes())
			}
			var back orderv1.CreateOrderRequest
			if err := protojson.Unmarshal(got, &back); err != nil {
				t.Fatalf("decode %s: %v", got, err)
			}
			if !proto.Equal(&back, tt.req) {
				t.Errorf("decoded %v, want %v", &back, tt.req)
			}
		})
	}
}

func TestAppendCreateOrderJSONRejectsInvalidUTF8(t *testing.T) {
	for _, req := range []*orderv1.CreateOrderRequest{
		{RequestId: "a\xffb"},
		{Items: []*orderv1.LineItem{{ProductId: "\xc3"}}},
		{Items: []*orderv1.LineItem{{UnitPrice: &moneyv1.Money{CurrencyCode: "\xff"}}}},
	} {
		if _, err := protojson.Marshal(req); err == nil {
			t.Fatalf("protojson accepts %q", req)
		}
		if _, err := appendCreateOrderJSON(nil, req); !errors.Is(err, errInvalidUTF8) {
			t.Errorf("appendCreateOrderJSON(%q) = %v, want errInvalidUTF8", req, err)
		}
	}
}

// TestAppendCreateOrderJSONKnowsEveryField fails when a field is added to
// one of the messages appendCreateOrderJSON writes, until it writes that
// field too (and the cases above cover it).
func TestAppendCreateOrderJSONKnowsEveryField(t *testing.T) {
	for _, m := range []struct {
		desc   protoreflect.MessageDescriptor
		fields []string
	}{
		{(&orderv1.CreateOrderRequest{}).ProtoReflect().Descriptor(), []string{"request_id", "customer_email", "items", "payment_token"}},
		{(&orderv1.LineItem{}).ProtoReflect().Descriptor(), []string{"product_id", "quantity", "unit_price"}},
		{(&moneyv1.Money{}).ProtoReflect().Descriptor(), []string{"currency_code", "units", "nanos"}},
	} {
		var names []string
		fields := m.desc.Fields()
		for i := range fields.Len() {
			names = append(names, string(fields.Get(i).Name()))
		}
		if !slices.Equal(names, m.fields) {
			t.Errorf("%s has fields %v; appendCreateOrderJSON writes %v", m.desc.FullName(), names, m.fields)
		}
	}
}
