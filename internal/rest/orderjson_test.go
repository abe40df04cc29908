package rest

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// protojsonCompact is m as the gateway's options render it with protojson,
// without protojson's random spaces.
func protojsonCompact(t *testing.T, m proto.Message) ([]byte, error) {
	t.Helper()
	b, err := orderJSONOptions.Marshal(m)
	if err != nil {
		return nil, err
	}
	var c bytes.Buffer
	if err := json.Compact(&c, b); err != nil {
		t.Fatalf("compact protojson's %s: %v", b, err)
	}
	return c.Bytes(), nil
}

// checkOrderJSON wants appendOrderResponse to write m as protojson does,
// and to take it (ok) unless wantOK is false.
func checkOrderJSON(t *testing.T, m proto.Message, wantOK bool) {
	t.Helper()
	got, ok := appendOrderResponse(nil, m)
	want, err := protojsonCompact(t, m)
	if !ok {
		if wantOK {
			t.Fatalf("appendOrderResponse left %v to protojson (protojson: %s, %v)", m, want, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("appendOrderResponse wrote %s for %v, which protojson refuses: %v", got, m, err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("appendOrderResponse(%v):\n got %s\nwant %s", m, got, want)
	}
}

var trickyStrings = []string{"", "plain", `quote " and \ backslash`, "nul\x00 bel\x07 esc\x1b del\x7f",
	"\b\f\n\r\t", "ünïcødé € \u2028 \U0001F600", "<script>&amp;</script>", "\uFFFD replacement"}

func randomTimestamp(rng *rand.Rand) *timestamppb.Timestamp {
	secs := minTimestampSeconds + rng.Int64N(maxTimestampSeconds-minTimestampSeconds+1)
	var nanos int32
	switch rng.IntN(5) {
	case 0:
	case 1:
		nanos = rng.Int32N(1000) * 1_000_000
	case 2:
		nanos = rng.Int32N(1_000_000) * 1000
	default:
		nanos = rng.Int32N(1_000_000_000)
	}
	return &timestamppb.Timestamp{Seconds: secs, Nanos: nanos}
}

func randomOrder(rng *rand.Rand) *orderv1.Order {
	s := func() string { return trickyStrings[rng.IntN(len(trickyStrings))] }
	money := func() *moneyv1.Money {
		if rng.IntN(5) == 0 {
			return nil
		}
		return &moneyv1.Money{CurrencyCode: s(), Units: rng.Int64() - rng.Int64(), Nanos: rng.Int32() - rng.Int32()}
	}
	ts := func() *timestamppb.Timestamp {
		if rng.IntN(5) == 0 {
			return nil
		}
		return randomTimestamp(rng)
	}
	o := &orderv1.Order{
		Id: s(), CustomerEmail: s(), Total: money(), Status: orderv1.OrderStatus(rng.IntN(5)),
		StatusReason: s(), CreateTime: ts(), UpdateTime: ts(),
	}
	for range rng.IntN(4) {
		o.Items = append(o.Items, &orderv1.LineItem{ProductId: s(), Quantity: rng.Int32() - rng.Int32(), UnitPrice: money()})
	}
	return o
}

func TestOrderJSONMatchesProtojson(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	for range 3000 {
		o := randomOrder(rng)
		checkOrderJSON(t, &orderv1.CreateOrderResponse{Order: o}, true)
		checkOrderJSON(t, &orderv1.GetOrderResponse{Order: o}, true)
		checkOrderJSON(t, &orderv1.CancelOrderResponse{Order: o}, true)
		list := &orderv1.ListOrdersResponse{NextPageToken: trickyStrings[rng.IntN(len(trickyStrings))]}
		for range rng.IntN(4) {
			list.Orders = append(list.Orders, randomOrder(rng))
		}
		checkOrderJSON(t, list, true)
	}
	// No order at all, and the extremes of a timestamp.
	checkOrderJSON(t, &orderv1.CreateOrderResponse{}, true)
	checkOrderJSON(t, &orderv1.ListOrdersResponse{}, true)
	for _, ts := range []*timestamppb.Timestamp{
		{Seconds: minTimestampSeconds}, {Seconds: maxTimestampSeconds, Nanos: 999_999_999}, {Seconds: 0, Nanos: 1},
	} {
		checkOrderJSON(t, &orderv1.GetOrderResponse{Order: &orderv1.Order{CreateTime: ts}}, true)
	}
}

func TestOrderJSONLeavesTheUnusualToProtojson(t *testing.T) {
	for name, m := range map[string]proto.Message{
		"invalid UTF-8":          &orderv1.GetOrderResponse{Order: &orderv1.Order{Id: "bad \xff"}},
		"invalid UTF-8 in items": &orderv1.GetOrderResponse{Order: &orderv1.Order{Items: []*orderv1.LineItem{{ProductId: "\xc3"}}}},
		"status without a name":  &orderv1.GetOrderResponse{Order: &orderv1.Order{Status: 42}},
		"timestamp too early":    &orderv1.GetOrderResponse{Order: &orderv1.Order{CreateTime: &timestamppb.Timestamp{Seconds: minTimestampSeconds - 1}}},
		"timestamp too late":     &orderv1.GetOrderResponse{Order: &orderv1.Order{UpdateTime: &timestamppb.Timestamp{Seconds: maxTimestampSeconds + 1}}},
		"negative nanos":         &orderv1.GetOrderResponse{Order: &orderv1.Order{UpdateTime: &timestamppb.Timestamp{Nanos: -1}}},
		"nanos of a second more": &orderv1.GetOrderResponse{Order: &orderv1.Order{UpdateTime: &timestamppb.Timestamp{Nanos: 1_000_000_000}}},
		"nil order in a list":    &orderv1.ListOrdersResponse{Orders: []*orderv1.Order{{Id: "x"}, nil}},
		"nil line item":          &orderv1.GetOrderResponse{Order: &orderv1.Order{Items: []*orderv1.LineItem{nil}}},
		"another message":        &orderv1.GetOrderRequest{OrderId: "x"},
	} {
		if b, ok := appendOrderResponse(nil, m); ok {
			t.Errorf("%s: appendOrderResponse took %v and wrote %s", name, m, b)
		}
	}
}

// fill sets every field of m, and of the messages in it, to a value that
// is not its default, through reflection, so that a field added to these
// messages is set too.
func fill(m protoreflect.Message) {
	fields := m.Descriptor().Fields()
	for i := range fields.Len() {
		fd := fields.Get(i)
		switch {
		case fd.IsList() && fd.Message() != nil:
			list := m.Mutable(fd).List()
			for range 2 {
				e := list.NewElement()
				fill(e.Message())
				list.Append(e)
			}
		case fd.IsList():
			m.Mutable(fd).List().Append(scalar(fd))
		case fd.Message() != nil:
			fill(m.Mutable(fd).Message())
		default:
			m.Set(fd, scalar(fd))
		}
	}
}

// scalar is a value of fd's kind that is not its default.
func scalar(fd protoreflect.FieldDescriptor) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(string(fd.Name()) + " \"value\"\n")
	case protoreflect.BoolKind:
		return protoreflect.ValueOfBool(true)
	case protoreflect.EnumKind:
		vals := fd.Enum().Values()
		return protoreflect.ValueOfEnum(vals.Get(vals.Len() - 1).Number())
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return protoreflect.ValueOfInt32(int32(-7 - fd.Number()))
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return protoreflect.ValueOfInt64(-1234567890123 - int64(fd.Number()))
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return protoreflect.ValueOfUint32(uint32(7 + fd.Number()))
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return protoreflect.ValueOfUint64(1234567890123 + uint64(fd.Number()))
	case protoreflect.DoubleKind:
		return protoreflect.ValueOfFloat64(1.5)
	case protoreflect.FloatKind:
		return protoreflect.ValueOfFloat32(2.5)
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte{1, 2, 3})
	}
	panic("no value for kind " + fd.Kind().String())
}

// TestOrderJSONKnowsEveryField fills every field of each response it
// writes, so that a field added to Order, LineItem, Money or the responses
// makes it differ from protojson until it writes that field too.
func TestOrderJSONKnowsEveryField(t *testing.T) {
	for _, m := range []proto.Message{
		&orderv1.CreateOrderResponse{}, &orderv1.GetOrderResponse{}, &orderv1.CancelOrderResponse{}, &orderv1.ListOrdersResponse{},
	} {
		fill(m.ProtoReflect())
		// fill gives timestamps seconds out of JSON's range.
		fixTimestamps(m.ProtoReflect())
		checkOrderJSON(t, m, true)
	}
}

// fixTimestamps brings every timestamp in m into the range JSON allows.
func fixTimestamps(m protoreflect.Message) {
	if ts, ok := m.Interface().(*timestamppb.Timestamp); ok {
		ts.Seconds, ts.Nanos = 1_700_000_000, 123_000_000
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				fixTimestamps(v.List().Get(i).Message())
			}
		case fd.Message() != nil && !fd.IsMap():
			fixTimestamps(v.Message())
		}
		return true
	})
}

// BenchmarkOrderJSON renders the gateway's CreateOrder response for an
// order of two lines, with protojson (the baseline, as JSONPb did) and
// with appendOrderResponse.
//
//	go test -run '^$' -bench OrderJSON -benchmem ./internal/rest/
func BenchmarkOrderJSON(b *testing.B) {
	now := timestamppb.Now()
	resp := &orderv1.CreateOrderResponse{Order: &orderv1.Order{
		Id: "01938b6e-7d3a-7c1e-9f4b-5a2d8c6e1f30", CustomerEmail: "ada@example.com",
		Items: []*orderv1.LineItem{
			{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500_000_000}},
			{ProductId: "SKU-2", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}},
		},
		Total:  &moneyv1.Money{CurrencyCode: "EUR", Units: 20},
		Status: orderv1.OrderStatus_ORDER_STATUS_PENDING, CreateTime: now, UpdateTime: now,
	}}
	b.Run("protojson", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := orderJSONOptions.Marshal(resp); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendOrderResponse", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := appendOrderResponse(make([]byte, 0, 512), resp); !ok {
				b.Fatal("not taken")
			}
		}
	})
}
