package eventbus

import (
	"errors"
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

func TestParseOrderID(t *testing.T) {
	got, err := ParseOrderID("0190A5C2-7B3E-7C4D-8E5F-6A7B8C9D0E1F")
	if err != nil || got != "0190a5c2-7b3e-7c4d-8e5f-6a7b8c9d0e1f" {
		t.Errorf("ParseOrderID(upper case) = %q, %v; want the lower-case form", got, err)
	}
	for _, bad := range []string{"", "not-a-uuid", "0190a5c2-7b3e-7c4d-8e5f"} {
		_, err := ParseOrderID(bad)
		if !IsPermanent(err) || !errors.Is(err, ErrInvalidOrderID) {
			t.Errorf("ParseOrderID(%q) = %v, want a permanent ErrInvalidOrderID", bad, err)
		}
	}
}
