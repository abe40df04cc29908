package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
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
		// A sign after the point was read into the decimals (1.+5 as
		// 1.05); an amount without a currency was split into one.
		{in: "1.+5EUR", wantErr: true},
		{in: "0.-5EUR", wantErr: true},
		{in: "19.9912", wantErr: true},
		{in: "1999", wantErr: true},
		{in: "1.EUR", wantErr: true},
		{in: "1.5E1R", wantErr: true},
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

func TestExitCodes(t *testing.T) {
	for _, tt := range []struct {
		name string
		err  error
		want int
	}{
		{"usage", usagef("bad flag"), exitUsage},
		{"not serving", fmt.Errorf("127.0.0.1:50051: %w", errNotServing), exitUnavailable},
		{"no such dead letter", fmt.Errorf("replay: %w", eventbus.ErrNotFound), exitNotFound},
		{"no dead-letter queue", fmt.Errorf("list: %w", &amqp.Error{Code: amqp.NotFound, Reason: "NOT_FOUND - no queue 'x.dlq'"}), exitNotFound},
		{"broker refused otherwise", &amqp.Error{Code: amqp.AccessRefused, Reason: "ACCESS_REFUSED"}, exitFailure},
		{"dead letter not among the ready ones", fmt.Errorf("replay m-1: %w", &eventbus.NotFoundError{ID: "m-1"}), exitNotFound},
		{"channel-level precondition", &amqp.Error{Code: amqp.PreconditionFailed, Reason: "PRECONDITION_FAILED", Server: true}, exitFailure},
		{"protocol error", amqp.ErrSyntax, exitFailure},
		{"broker closed the connection", fmt.Errorf("list: get: %w", &amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}), exitUnavailable},
		{"link broken", fmt.Errorf("list: get: %w", &amqp.Error{Code: amqp.FrameError, Reason: "EOF"}), exitUnavailable},
		{"call on a lost connection", fmt.Errorf("replay: %w", amqp.ErrClosed), exitUnavailable},
		{"broker out of resources", &amqp.Error{Code: amqp.ResourceError, Reason: "RESOURCE_ERROR", Server: true}, exitUnavailable},
		{"grpc not found", status.Error(codes.NotFound, "order not found"), exitNotFound},
		{"grpc invalid", status.Error(codes.InvalidArgument, "bad"), exitRefused},
		{"grpc unavailable", status.Error(codes.Unavailable, "down"), exitUnavailable},
		{"grpc watch limit", status.Error(codes.ResourceExhausted, "watch again later"), exitUnavailable},
		{"other", errors.New("boom"), exitFailure},
	} {
		if got := exitCode(tt.err); got != tt.want {
			t.Errorf("%s: exitCode(%v) = %d, want %d", tt.name, tt.err, got, tt.want)
		}
	}
}

// TestDLQHelpHidesThePassword: -h prints the --amqp-url default, which
// comes from ORDERMESH_AMQP_URL, without its password.
func TestDLQHelpHidesThePassword(t *testing.T) {
	var out, errOut bytes.Buffer
	env := func(k string) string {
		if k == "ORDERMESH_AMQP_URL" {
			return "amqp://ops:s3cret@broker:5672/"
		}
		return ""
	}
	if code := run(context.Background(), []string{"dlq", "list", "inventory", "-h"}, env, &out, &errOut); code != exitUsage {
		t.Errorf("dlq -h: exit %d, want %d", code, exitUsage)
	}
	help := out.String() + errOut.String()
	if strings.Contains(help, "s3cret") || !strings.Contains(help, "amqp://ops:xxxxx@broker:5672/") {
		t.Errorf("help shows the password, or no redacted URL:\n%s", help)
	}
}
