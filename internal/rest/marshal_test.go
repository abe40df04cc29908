package rest

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// errAfter reads s, then fails with err instead of io.EOF.
func errAfter(s string, err error) io.Reader {
	return io.MultiReader(strings.NewReader(s), failingReader{err})
}

// failingReader returns err from every Read.
type failingReader struct{ err error }

func (f failingReader) Read([]byte) (int, error) { return 0, f.err }

// TestBodyDecoderDecodesAsJSONPb checks that jsonMarshaler's decoder
// gives the message and the error runtime.JSONPb's does, for bodies its
// fast path takes and for those it hands over.
func TestBodyDecoderDecodesAsJSONPb(t *testing.T) {
	const order = `{"request_id": "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", "customer_email": "ada@example.com",
		"items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": {"currency_code": "EUR", "units": "9", "nanos": 500000000}}]}`
	tests := []struct {
		name string
		body func() io.Reader
	}{
		{"order", func() io.Reader { return strings.NewReader(order) }},
		{"camelCase names", func() io.Reader { return strings.NewReader(`{"requestId": "x", "customerEmail": "a@b.c"}`) }},
		{"surrounded by whitespace", func() io.Reader { return strings.NewReader("\n\t " + order + " \r\n") }},
		{"empty", func() io.Reader { return strings.NewReader("") }},
		{"whitespace only", func() io.Reader { return strings.NewReader(" \n ") }},
		{"a non-breaking space only", func() io.Reader { return strings.NewReader("\u00a0") }},
		{"empty object", func() io.Reader { return strings.NewReader("{}") }},
		{"malformed", func() io.Reader { return strings.NewReader(`{"request_id": `) }},
		{"unknown field", func() io.Reader { return strings.NewReader(`{"requestid": "x"}`) }},
		{"wrong type", func() io.Reader { return strings.NewReader(`{"items": 3}`) }},
		{"not an object", func() io.Reader { return strings.NewReader(`[1, 2]`) }},
		{"invalid UTF-8", func() io.Reader { return strings.NewReader("{\"customer_email\": \"a\xffb\"}") }},
	}
	jsonpb := &runtime.JSONPb{
		MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	}
	m := &jsonMarshaler{JSONPb: jsonpb}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want, got orderv1.CreateOrderRequest
			wantErr := jsonpb.NewDecoder(tt.body()).Decode(&want)
			gotErr := m.NewDecoder(tt.body()).Decode(&got)
			if errString(gotErr) != errString(wantErr) {
				t.Errorf("error = %v, want %v", gotErr, wantErr)
			}
			if !errors.Is(gotErr, io.EOF) != !errors.Is(wantErr, io.EOF) {
				t.Errorf("errors.Is(%v, io.EOF) differs from JSONPb's %v", gotErr, wantErr)
			}
			if wantErr == nil && !proto.Equal(&got, &want) {
				t.Errorf("decoded %v, want %v", &got, &want)
			}
		})
	}
}

// TestBodyDecoderRefusesDataAfterTheValue: JSONPb's decoder would take
// the first JSON value of the body and drop the rest; the gateway's
// refuses the body, saying where the value ended, and once refused stays
// so. An invalid first value is JSONPb's error, as for a body of one.
func TestBodyDecoderRefusesDataAfterTheValue(t *testing.T) {
	for _, tt := range []struct{ name, body, want string }{
		{"two values", `{"request_id": "a"} {"request_id": "b"}`, "unexpected data after the JSON value, at offset 19"},
		{"trailing garbage", `{"request_id": "a"}xyz`, "unexpected data after the JSON value, at offset 19"},
		{"a trailing non-breaking space", "{\"request_id\": \"a\"} \u00a0", "unexpected data after the JSON value, at offset 19"},
		{"an invalid first value", `{"requestid": "a"} {}`, "unknown field"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := (&jsonMarshaler{JSONPb: &runtime.JSONPb{}}).NewDecoder(strings.NewReader(tt.body))
			var got orderv1.CreateOrderRequest
			err := d.Decode(&got)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Decode = %v, want an error saying %q", err, tt.want)
			}
			if !strings.Contains(tt.want, "unexpected data") {
				return
			}
			if err2 := d.Decode(&got); err2 == nil || errors.Is(err2, io.EOF) {
				t.Errorf("second Decode = %v, want an error", err2)
			}
		})
	}
}

// TestBodyDecoderReadError checks that a body cut short by a read error
// is that error, even where what was read holds a whole JSON value (which
// JSONPb's decoder would take): a body over the size limit or too slow to
// arrive is refused, not decoded from its first part.
func TestBodyDecoderReadError(t *testing.T) {
	tooLarge := &http.MaxBytesError{Limit: 64}
	for _, tt := range []struct {
		name string
		body io.Reader
	}{
		{"inside the value", errAfter(`{"request_id": "a`, tooLarge)},
		{"after the value", errAfter(`{"request_id": "a"}  `, tooLarge)},
		{"at once", errAfter("", tooLarge)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := (&jsonMarshaler{JSONPb: &runtime.JSONPb{}}).NewDecoder(tt.body)
			var got orderv1.CreateOrderRequest
			if err := d.Decode(&got); err != tooLarge {
				t.Fatalf("Decode = %v, want the read error", err)
			}
			if err := d.Decode(&got); err != tooLarge {
				t.Errorf("second Decode = %v, want the read error again", err)
			}
		})
	}
}

func errString(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

// TestJSONMarshalerMarshalsAsJSONPb checks that jsonMarshaler writes
// what runtime.JSONPb writes, but for protojson's random spaces, for
// messages it writes itself (appendOrderResponse) or with protojson, and
// for a stream chunk; and that with other options than the gateway's it
// leaves messages to protojson.
func TestJSONMarshalerMarshalsAsJSONPb(t *testing.T) {
	jsonpb := &runtime.JSONPb{
		MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true},
	}
	m := &jsonMarshaler{JSONPb: jsonpb}
	order := &orderv1.Order{Id: "7f1b0b5e-3c55-4bb3-9a8e-2a1c1f0b8f11", CustomerEmail: "ada@example.com",
		Items: []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 2}}}
	compact := func(b []byte) string {
		var c bytes.Buffer
		if err := json.Compact(&c, b); err != nil {
			return string(b)
		}
		return c.String()
	}
	for _, v := range []any{
		&orderv1.CreateOrderResponse{Order: order},
		&orderv1.ListOrdersResponse{Orders: []*orderv1.Order{order, order}, NextPageToken: "next"},
		&orderv1.WatchOrderResponse{Order: order},
		map[string]any{"result": &orderv1.WatchOrderResponse{Order: order}},
	} {
		want, wantErr := jsonpb.Marshal(v)
		got, gotErr := m.Marshal(v)
		if compact(got) != compact(want) || errString(gotErr) != errString(wantErr) {
			t.Errorf("Marshal(%T) = %s, %v; want %s, %v", v, got, gotErr, want, wantErr)
		}
	}

	indented := &jsonMarshaler{JSONPb: &runtime.JSONPb{
		MarshalOptions: protojson.MarshalOptions{UseProtoNames: true, EmitUnpopulated: true, Indent: "  "},
	}}
	if got, err := indented.Marshal(&orderv1.CreateOrderResponse{Order: order}); err != nil || !strings.Contains(string(got), "\n  ") {
		t.Errorf("with an indent: %s, %v; want protojson's indented output", got, err)
	}
}
