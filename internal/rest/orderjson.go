package rest

import (
	"math/bits"
	"strconv"
	"time"
	"unicode/utf8"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// appendOrderResponse appends to b the JSON of m as the gateway's
// marshaler renders it (protojson with UseProtoNames and EmitUnpopulated,
// but for protojson's random spaces), when m is one of the OrderService
// responses that carry orders: CreateOrderResponse, GetOrderResponse,
// CancelOrderResponse and ListOrdersResponse. They are most of the
// gateway's responses, and protojson, which walks a message by
// reflection, was about a sixth of the gateway's CPU per CreateOrder.
//
// It reports false for any other message, and for a value protojson
// renders otherwise or refuses (a string that is not valid UTF-8, a
// status without a name, a timestamp out of range): the caller then uses
// protojson. TestOrderJSONMatchesProtojson holds it to protojson's output
// for every field of these messages.
func appendOrderResponse(b []byte, m proto.Message) ([]byte, bool) {
	w := orderJSON{b: b, ok: true}
	switch r := m.(type) {
	case *orderv1.CreateOrderResponse:
		w.orderEnvelope(r.GetOrder())
	case *orderv1.GetOrderResponse:
		w.orderEnvelope(r.GetOrder())
	case *orderv1.CancelOrderResponse:
		w.orderEnvelope(r.GetOrder())
	case *orderv1.ListOrdersResponse:
		w.b = append(w.b, `{"orders":[`...)
		for i, o := range r.GetOrders() {
			if o == nil { // Never decoded from the wire; protojson's to judge.
				return b, false
			}
			if i > 0 {
				w.b = append(w.b, ',')
			}
			w.order(o)
		}
		w.b = append(w.b, `],"next_page_token":`...)
		w.string(r.GetNextPageToken())
		w.b = append(w.b, '}')
	default:
		return b, false
	}
	return w.b, w.ok
}

// orderJSON writes JSON into b; ok turns false at the first value it
// leaves to protojson.
type orderJSON struct {
	b  []byte
	ok bool
}

func (w *orderJSON) orderEnvelope(o *orderv1.Order) {
	w.b = append(w.b, `{"order":`...)
	w.order(o)
	w.b = append(w.b, '}')
}

// order writes o; a nil order (no order field) is null.
func (w *orderJSON) order(o *orderv1.Order) {
	if o == nil {
		w.b = append(w.b, "null"...)
		return
	}
	w.b = append(w.b, `{"id":`...)
	w.string(o.GetId())
	w.b = append(w.b, `,"customer_email":`...)
	w.string(o.GetCustomerEmail())
	w.b = append(w.b, `,"items":[`...)
	for i, it := range o.GetItems() {
		if i > 0 {
			w.b = append(w.b, ',')
		}
		w.lineItem(it)
	}
	w.b = append(w.b, `],"total":`...)
	w.money(o.GetTotal())
	w.b = append(w.b, `,"status":`...)
	name, known := orderv1.OrderStatus_name[int32(o.GetStatus())]
	if !known {
		w.ok = false
	}
	w.string(name)
	w.b = append(w.b, `,"status_reason":`...)
	w.string(o.GetStatusReason())
	w.b = append(w.b, `,"create_time":`...)
	w.timestamp(o.GetCreateTime())
	w.b = append(w.b, `,"update_time":`...)
	w.timestamp(o.GetUpdateTime())
	w.b = append(w.b, '}')
}

func (w *orderJSON) lineItem(it *orderv1.LineItem) {
	if it == nil { // Never decoded from the wire; protojson's to judge.
		w.ok = false
		return
	}
	w.b = append(w.b, `{"product_id":`...)
	w.string(it.GetProductId())
	w.b = append(w.b, `,"quantity":`...)
	w.b = strconv.AppendInt(w.b, int64(it.GetQuantity()), 10)
	w.b = append(w.b, `,"unit_price":`...)
	w.money(it.GetUnitPrice())
	w.b = append(w.b, '}')
}

func (w *orderJSON) money(m *moneyv1.Money) {
	if m == nil {
		w.b = append(w.b, "null"...)
		return
	}
	w.b = append(w.b, `{"currency_code":`...)
	w.string(m.GetCurrencyCode())
	// 64-bit integers are strings in proto3 JSON.
	w.b = append(w.b, `,"units":"`...)
	w.b = strconv.AppendInt(w.b, m.GetUnits(), 10)
	w.b = append(w.b, `","nanos":`...)
	w.b = strconv.AppendInt(w.b, int64(m.GetNanos()), 10)
	w.b = append(w.b, '}')
}

// The range of a timestamp in proto3 JSON: 0001-01-01T00:00:00Z to
// 9999-12-31T23:59:59.999999999Z.
const (
	minTimestampSeconds = -62135596800
	maxTimestampSeconds = 253402300799
)

// timestamp writes ts in RFC 3339, in UTC, with 0, 3, 6 or 9 fractional
// digits, as protojson does.
func (w *orderJSON) timestamp(ts *timestamppb.Timestamp) {
	if ts == nil {
		w.b = append(w.b, "null"...)
		return
	}
	secs, nanos := ts.GetSeconds(), ts.GetNanos()
	if secs < minTimestampSeconds || secs > maxTimestampSeconds || nanos < 0 || nanos > 999_999_999 {
		w.ok = false
		return
	}
	w.b = append(w.b, '"')
	start := len(w.b)
	w.b = time.Unix(secs, int64(nanos)).UTC().AppendFormat(w.b, "2006-01-02T15:04:05.000000000")
	// Drop the fraction's trailing zeros three digits at a time, and the
	// point with the last three.
	for _, suffix := range []string{"000", "000", ".000"} {
		if n := len(w.b); n-start >= len(suffix) && string(w.b[n-len(suffix):]) == suffix {
			w.b = w.b[:n-len(suffix)]
		}
	}
	w.b = append(w.b, `Z"`...)
}

// string writes s as a JSON string, escaping what protojson escapes: '"',
// '\\' and control characters (the usual short escapes, \u00XX for the
// others). A string that is not valid UTF-8 is protojson's to refuse.
func (w *orderJSON) string(s string) {
	w.b = append(w.b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= utf8.RuneSelf {
			r, n := utf8.DecodeRuneInString(s[i:])
			if r == utf8.RuneError && n == 1 {
				w.ok = false
			}
			i += n
			continue
		}
		if c >= ' ' && c != '"' && c != '\\' {
			i++
			continue
		}
		w.b = append(w.b, s[start:i]...)
		w.b = append(w.b, '\\')
		switch c {
		case '"', '\\':
			w.b = append(w.b, c)
		case '\b':
			w.b = append(w.b, 'b')
		case '\f':
			w.b = append(w.b, 'f')
		case '\n':
			w.b = append(w.b, 'n')
		case '\r':
			w.b = append(w.b, 'r')
		case '\t':
			w.b = append(w.b, 't')
		default:
			w.b = append(w.b, 'u')
			w.b = append(w.b, "0000"[1+(bits.Len32(uint32(c))-1)/4:]...)
			w.b = strconv.AppendUint(w.b, uint64(c), 16)
		}
		i++
		start = i
	}
	w.b = append(w.b, s[start:]...)
	w.b = append(w.b, '"')
}
