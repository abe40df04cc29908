package eventbus

import (
	"testing"

	"google.golang.org/protobuf/proto"

	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
)

func TestDecode(t *testing.T) {
	ev := &paymentv1.PaymentFailed{OrderId: "0192f3a4-5b6c-7d8e-9f01-23456789abcd", Reason: "card declined"}
	m, err := NewMessage(ev, "payment", ev.GetOrderId())
	if err != nil {
		t.Fatal(err)
	}
	got, err := Decode(m)
	if err != nil || !proto.Equal(got, ev) {
		t.Fatalf("Decode = %v, %v; want %v", got, err, ev)
	}
	m.Type = "ordermesh.nothing.v1.Nope"
	if _, err := Decode(m); err == nil {
		t.Error("Decode of an unknown type: want an error")
	}
	m.Type, m.Body = "ordermesh.payment.v1.PaymentFailed", []byte{0xff, 0xff}
	if _, err := Decode(m); err == nil {
		t.Error("Decode of a garbled body: want an error")
	}
}
