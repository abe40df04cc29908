package main

import (
	"testing"

	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
)

func TestParseMoney(t *testing.T) {
	tests := []struct {
		in      string
		want    *moneyv1.Money
		wantErr bool
	}{
		{in: "19.99EUR", want: &moneyv1.Money{CurrencyCode: "EUR", Units: 19, Nanos: 990000000}},
		{in: "5usd", want: &moneyv1.Money{CurrencyCode: "USD", Units: 5}},
		{in: "0.000000001CHF", want: &moneyv1.Money{CurrencyCode: "CHF", Nanos: 1}},
		{in: "1.0000000001EUR", wantErr: true},
		{in: "-1EUR", wantErr: true},
		{in: "-0.50EUR", wantErr: true},
		{in: "+1EUR", wantErr: true},
		{in: "EUR", wantErr: true},
		{in: "x.yEUR", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := parseMoney(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("parseMoney(%q) = %v, want an error", tt.in, got)
				}
				return
			}
			if err != nil || !proto.Equal(got, tt.want) {
				t.Fatalf("parseMoney(%q) = %v, %v; want %v", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormatMoney(t *testing.T) {
	for in, want := range map[*moneyv1.Money]string{
		{CurrencyCode: "EUR", Units: 19, Nanos: 990000000}: "19.99 EUR",
		{CurrencyCode: "EUR", Units: 20}:                   "20.00 EUR",
		{CurrencyCode: "EUR", Nanos: 1}:                    "0.000000001 EUR",
	} {
		if got := formatMoney(in); got != want {
			t.Errorf("formatMoney(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestParseItem(t *testing.T) {
	it, err := parseItem("SKU-1:3:2.50EUR")
	if err != nil || it.GetProductId() != "SKU-1" || it.GetQuantity() != 3 || it.GetUnitPrice().GetNanos() != 500000000 {
		t.Fatalf("parseItem = %v, %v", it, err)
	}
	for _, bad := range []string{"SKU-1", "SKU-1:x:1EUR", "SKU-1:1:1"} {
		if _, err := parseItem(bad); err == nil {
			t.Errorf("parseItem(%q): want an error", bad)
		}
	}
}
