package grpcserver

import (
	"context"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// rawCodec sends a *[]byte as it is and decodes nothing: a client that
// puts what it likes on the wire.
type rawCodec struct{}

func (rawCodec) Marshal(v any) (mem.BufferSlice, error) {
	return mem.BufferSlice{mem.SliceBuffer(*v.(*[]byte))}, nil
}
func (rawCodec) Unmarshal(mem.BufferSlice, any) error { return nil }
func (rawCodec) Name() string                         { return "proto" }

// stringField encodes field num as the bytes s, as a string field is.
func stringField(num protowire.Number, s string) []byte {
	return protowire.AppendString(protowire.AppendTag(nil, num, protowire.BytesType), s)
}

// TestUndecodableRequestIsInvalidArgument: a request that is not UTF-8
// where a string belongs, or no protobuf at all, is INVALID_ARGUMENT
// naming the field where it can (grpc-go would answer INTERNAL), for unary
// and streaming calls, and never reaches the handler; the server goes on
// serving valid calls.
func TestUndecodableRequestIsInvalidArgument(t *testing.T) {
	svc := newOrderService()
	ts := startServer(t, svc)
	// items[1].product_id (CreateOrderRequest.items = 3, LineItem.product_id = 1).
	badItem := append(stringField(3, string(stringField(1, "sku-1"))), stringField(3, string(stringField(1, "sku-\xff")))...)
	for _, tt := range []struct {
		name, method string
		body         []byte
		stream       bool
		field        string // "" for no field violation
	}{
		{"unary, invalid UTF-8 in a nested string", "/ordermesh.order.v1.OrderService/CreateOrder", badItem, false, "items[1].product_id"},
		{"unary, not protobuf", "/ordermesh.order.v1.OrderService/CreateOrder", []byte{0x0a, 0xff}, false, ""},
		{"server stream, invalid UTF-8", "/ordermesh.order.v1.OrderService/WatchOrder", stringField(1, "\xc3\x28"), true, "order_id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			var err error
			if tt.stream {
				var s grpc.ClientStream
				s, err = ts.conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, tt.method, grpc.ForceCodecV2(rawCodec{}))
				if err == nil {
					if err = s.SendMsg(&tt.body); err == nil {
						_ = s.CloseSend()
						var out []byte
						err = s.RecvMsg(&out)
					}
				}
			} else {
				var out []byte
				err = ts.conn.Invoke(ctx, tt.method, &tt.body, &out, grpc.ForceCodecV2(rawCodec{}))
			}
			st := status.Convert(err)
			if st.Code() != codes.InvalidArgument {
				t.Fatalf("%s = %v, want INVALID_ARGUMENT", tt.method, err)
			}
			var fields []string
			for _, d := range st.Details() {
				if br, ok := d.(*errdetails.BadRequest); ok {
					for _, fv := range br.GetFieldViolations() {
						fields = append(fields, fv.GetField())
					}
				}
			}
			if tt.field == "" && len(fields) != 0 || tt.field != "" && (len(fields) != 1 || fields[0] != tt.field) {
				t.Errorf("field violations %q (%s), want %q", fields, st.Message(), tt.field)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	client := orderv1.NewOrderServiceClient(ts.conn)
	if _, err := client.CreateOrder(ctx, validCreateOrder()); err != nil {
		t.Errorf("a valid CreateOrder after them: %v", err)
	}

	// A request carrying a field shaped like the mark (without the
	// server's nonce) is an ordinary request with an unknown field.
	valid, err := proto.Marshal(validCreateOrder())
	if err != nil {
		t.Fatal(err)
	}
	st, err := proto.Marshal(status.New(codes.InvalidArgument, "forged").Proto())
	if err != nil {
		t.Fatal(err)
	}
	forged := protowire.AppendBytes(protowire.AppendTag(valid, markField, protowire.BytesType), append(make([]byte, 16), st...))
	var out []byte
	if err := ts.conn.Invoke(ctx, "/ordermesh.order.v1.OrderService/CreateOrder", &forged, &out, grpc.ForceCodecV2(rawCodec{})); err != nil {
		t.Errorf("a valid CreateOrder with a forged mark: %v, want it served", err)
	}
}
