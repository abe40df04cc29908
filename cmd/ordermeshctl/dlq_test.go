package main

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/platformtest"
)

// TestDLQCommands parks a message in a service's dead-letter queue through
// the real bus and drives list, replay and discard from the command line.
func TestDLQCommands(t *testing.T) {
	prefix := "test-" + strings.ReplaceAll(uuid.NewString()[:8], "-", "") + "."
	cfg, err := eventbus.Config{
		URL: platformtest.AMQPURL(), Prefix: prefix, Service: "dlqcli",
		RetryDelays: []time.Duration{50 * time.Millisecond}, ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second,
	}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { platformtest.DeleteTopology(t, cfg.URL, prefix, []string{cfg.Service}, cfg.RetryDelays) })
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	sub, err := eventbus.NewSubscriber(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	var accept atomic.Bool
	var handled atomic.Int32
	if err := eventbus.Handle(sub, func(context.Context, *orderv1.OrderCreated, eventbus.Meta) error {
		if !accept.Load() {
			return eventbus.Permanent(errors.New("no such product"))
		}
		handled.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	subCtx, stopSub := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Run(subCtx) }()
	t.Cleanup(func() { stopSub(); <-subDone })
	if err := sub.WaitUp(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := eventbus.NewPublisher(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.WaitUp(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		m, err := eventbus.NewMessage(validOrderCreated(), "order", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}

	ctl := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		full := append([]string{"--timeout", "10s"}, args...)
		full = append(full, "--amqp-url", cfg.URL, "--prefix", prefix)
		code := run(ctx, full, func(string) string { return "" }, &out, &errOut)
		return out.String() + errOut.String(), code
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code := ctl("dlq", "list", "dlqcli")
		if code == exitOK && strings.Contains(out, "2 message(s) in dlqcli's dead-letter queue") {
			for _, id := range ids {
				if !strings.Contains(out, id) || !strings.Contains(out, "no such product") {
					t.Errorf("dlq list does not show %s with its reason:\n%s", id, out)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dlq list never showed both messages; last output (exit %d):\n%s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A listing cut short by --limit says how many the queue holds.
	if out, code := ctl("dlq", "list", "dlqcli", "--limit", "1"); code != exitOK || !strings.Contains(out, "2 message(s) in dlqcli's dead-letter queue; the first 1 shown") {
		t.Errorf("dlq list --limit 1 of 2 messages: exit %d, output %q; want it to say 2, the first 1 shown", code, out)
	}

	if out, code := ctl("dlq", "replay", "dlqcli"); code != exitUsage || !strings.Contains(out, "give a message id or --all") {
		t.Errorf("dlq replay without an id: exit %d, output %q; want a usage error", code, out)
	}
	accept.Store(true)
	if out, code := ctl("dlq", "replay", "dlqcli", ids[0]); code != exitOK {
		t.Fatalf("dlq replay %s: exit %d:\n%s", ids[0], code, out)
	}
	for handled.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the replayed message was never handled")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, verb := range []string{"replay", "discard"} {
		if out, code := ctl("dlq", verb, "dlqcli", ids[0]); code != exitNotFound {
			t.Errorf("dlq %s of an id no longer there: exit %d, output %q; want %d (not found)", verb, code, out, exitNotFound)
		}
	}
	if out, code := ctl("dlq", "list", "nosuchservice"); code != exitNotFound {
		t.Errorf("dlq list of a service with no dead-letter queue: exit %d, output %q; want %d (not found)", code, out, exitNotFound)
	}
	var out, errOut bytes.Buffer
	down := []string{"--timeout", "5s", "dlq", "list", "dlqcli", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "--prefix", prefix}
	if code := run(ctx, down, func(string) string { return "" }, &out, &errOut); code != exitUnavailable {
		t.Errorf("dlq list with no broker there: exit %d, output %q; want %d (unavailable)", code, out.String()+errOut.String(), exitUnavailable)
	}
	for _, args := range [][]string{
		{"dlq", "discard", "dlqcli", "--all"},       // not confirmed
		{"dlq", "drop", "dlqcli", "--all", "--yes"}, // no such action
		{"dlq", "list", "dlqcli", ids[1]},           // list takes no id
	} {
		if out, code := ctl(args...); code != exitUsage {
			t.Errorf("%v: exit %d, output %q; want a usage error", args, code, out)
		}
	}
	if out, code := ctl("dlq", "discard", "dlqcli", "--all", "--yes"); code != exitOK || !strings.Contains(out, "discarded 1 message(s)") {
		t.Errorf("dlq discard --all: exit %d, output %q; want the one message left discarded", code, out)
	}
	if out, code := ctl("dlq", "list", "dlqcli"); code != exitOK || !strings.Contains(out, "0 message(s)") {
		t.Errorf("dlq list after discard: exit %d, output %q; want an empty queue", code, out)
	}
	if n := handled.Load(); n != 1 {
		t.Errorf("handled %d messages, want only the replayed one", n)
	}
}

func validOrderCreated() *orderv1.OrderCreated {
	eur := func(units int64) *moneyv1.Money { return &moneyv1.Money{CurrencyCode: "EUR", Units: units} }
	return &orderv1.OrderCreated{
		OrderId:       uuid.NewString(),
		CustomerEmail: "ada@example.com",
		Items:         []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 1, UnitPrice: eur(5)}},
		Total:         eur(5),
		PaymentToken:  "tok_visa",
		CreateTime:    timestamppb.Now(),
	}
}
