package contract

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"buf.build/go/protovalidate"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/known/timestamppb"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	notificationv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	paymentv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
)

var update = flag.Bool("update", false, "write the current encoding of each event as a new fixture version")

// fixtureVersion names the directory new fixtures are written to. Bump it
// when an event gains fields, and keep the old directories: every fixture
// ever written must still decode, validate and mean the same.
const fixtureVersion = "v1"

// fixtureEvents is one example of every event type.
func fixtureEvents() []proto.Message {
	const id = "0192f3a4-5b6c-7d8e-9f01-23456789abcd"
	eur := &moneyv1.Money{CurrencyCode: "EUR", Units: 39, Nanos: 980000000}
	item := &orderv1.LineItem{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 19, Nanos: 990000000}}
	line := &inventoryv1.StockLine{ProductId: "SKU-1", Quantity: 2}
	return []proto.Message{
		&orderv1.OrderCreated{OrderId: id, CustomerEmail: "ada@example.com", Items: []*orderv1.LineItem{item}, Total: eur,
			PaymentToken: "tok_visa", CreateTime: &timestamppb.Timestamp{Seconds: 1795000000}},
		&orderv1.OrderConfirmed{OrderId: id, CustomerEmail: "ada@example.com", Total: eur},
		&orderv1.OrderRejected{OrderId: id, CustomerEmail: "ada@example.com", Reason: "out of stock: SKU-1"},
		&orderv1.OrderCancelled{OrderId: id, CustomerEmail: "ada@example.com", Reason: "changed my mind"},
		&inventoryv1.StockReserved{OrderId: id, Items: []*inventoryv1.StockLine{line}},
		&inventoryv1.StockReservationFailed{OrderId: id, Reason: "out of stock: SKU-1",
			Shortages: []*inventoryv1.Shortage{{ProductId: "SKU-1", Requested: 2, Available: 1}}},
		&inventoryv1.StockReleased{OrderId: id, Items: []*inventoryv1.StockLine{line}},
		&paymentv1.PaymentSucceeded{OrderId: id, PaymentId: "ch_1", Amount: eur},
		&paymentv1.PaymentFailed{OrderId: id, Reason: "card declined"},
		&paymentv1.PaymentRefunded{OrderId: id, PaymentId: "ch_1", Amount: eur},
		&notificationv1.NotificationSent{OrderId: id, Recipient: "ada@example.com", Kind: notificationv1.NotificationKind_NOTIFICATION_KIND_ORDER_CONFIRMED},
	}
}

// TestEventFixturesStillDecode decodes every stored encoding of every event
// (testdata/events/<version>/<full name>.binpb) with today's schemas: each
// must decode and pass validation, and the current version's must equal
// the examples — so a schema change that breaks old messages on the wire
// fails here.
// Run with -update to store the current encodings as fixtureVersion.
func TestEventFixturesStillDecode(t *testing.T) {
	if *update {
		dir := filepath.Join("testdata", "events", fixtureVersion)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, ev := range fixtureEvents() {
			b, err := proto.MarshalOptions{Deterministic: true}.Marshal(ev)
			if err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(dir, string(ev.ProtoReflect().Descriptor().FullName())+".binpb")
			// A stored encoding is a message some producer sent: never
			// rewritten, only joined by a new version's.
			if old, err := os.ReadFile(path); err == nil && !bytes.Equal(old, b) {
				t.Fatalf("%s exists with another encoding: bump fixtureVersion to keep it and add the new one", path)
			}
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		if err := writeRoutingKeys(dir); err != nil {
			t.Fatal(err)
		}
	}
	examples := map[protoreflect.FullName]proto.Message{}
	for _, ev := range fixtureEvents() {
		examples[ev.ProtoReflect().Descriptor().FullName()] = ev
	}
	files, err := filepath.Glob(filepath.Join("testdata", "events", "*", "*.binpb"))
	if err != nil {
		t.Fatal(err)
	}
	seen := map[protoreflect.FullName]bool{}
	v, err := protovalidate.New()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		name := protoreflect.FullName(filepath.Base(f[:len(f)-len(".binpb")]))
		t.Run(filepath.Base(filepath.Dir(f))+"/"+string(name), func(t *testing.T) {
			mt, err := protoregistry.GlobalTypes.FindMessageByName(name)
			if err != nil {
				t.Fatalf("fixture for an event type that no longer exists: %v", err)
			}
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			msg := mt.New().Interface()
			if err := proto.Unmarshal(b, msg); err != nil {
				t.Fatalf("old encoding no longer decodes: %v", err)
			}
			if err := v.Validate(msg); err != nil {
				t.Errorf("old message no longer valid: %v", err)
			}
			key, err := eventbus.RoutingKey(msg.ProtoReflect().Descriptor())
			if err != nil {
				t.Errorf("routing key: %v", err)
			}
			// The key is part of the contract: consumers bound to the old
			// one would never see the event again.
			keys, err := readRoutingKeys(filepath.Dir(f))
			if err != nil {
				t.Fatal(err)
			}
			if stored, ok := keys[name]; !ok {
				t.Errorf("%s has no routing key stored; run go test ./internal/contract -run Fixtures -update", filepath.Join(filepath.Dir(f), routingKeysFile))
			} else if key != stored {
				t.Errorf("routing key %q, but producers of this version sent it as %q: a renamed key is a breaking change", key, stored)
			}
			current := filepath.Base(filepath.Dir(f)) == fixtureVersion
			if want := examples[name]; current && want != nil && !proto.Equal(msg, want) {
				t.Errorf("decodes to %v, want %v", msg, want)
			}
			seen[name] = true
		})
	}
	for name := range examples {
		if !seen[name] {
			t.Errorf("no fixture for %s; run go test ./internal/contract -run Fixtures -update", name)
		}
	}
	// Every event of the schemas has an example, so a new event cannot
	// ship without its fixture.
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), "ordermesh.") {
			return true
		}
		for i := range fd.Messages().Len() {
			md := fd.Messages().Get(i)
			if _, err := eventbus.RoutingKey(md); err == nil && examples[md.FullName()] == nil {
				t.Errorf("event %s has no example in fixtureEvents", md.FullName())
			}
		}
		return true
	})
}

// routingKeysFile, beside a version's encodings, holds the routing key
// each of its events was published with: "<full name> <key>" a line.
const routingKeysFile = "routing-keys.txt"

// readRoutingKeys reads dir's routingKeysFile; a missing file is empty.
func readRoutingKeys(dir string) (map[protoreflect.FullName]string, error) {
	b, err := os.ReadFile(filepath.Join(dir, routingKeysFile))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	keys := map[protoreflect.FullName]string{}
	for line := range strings.Lines(string(b)) {
		name, key, ok := strings.Cut(strings.TrimSpace(line), " ")
		if !ok {
			return nil, fmt.Errorf("%s: line %q is not \"<full name> <routing key>\"", filepath.Join(dir, routingKeysFile), line)
		}
		keys[protoreflect.FullName(name)] = key
	}
	return keys, nil
}

// writeRoutingKeys adds the routing key of every example to dir's
// routingKeysFile; like an encoding, a stored key is never rewritten.
func writeRoutingKeys(dir string) error {
	keys, err := readRoutingKeys(dir)
	if err != nil {
		return err
	}
	if keys == nil {
		keys = map[protoreflect.FullName]string{}
	}
	for _, ev := range fixtureEvents() {
		md := ev.ProtoReflect().Descriptor()
		key, err := eventbus.RoutingKey(md)
		if err != nil {
			return err
		}
		if old, ok := keys[md.FullName()]; ok && old != key {
			return fmt.Errorf("%s was stored with routing key %q, now %q: a renamed key is a breaking change", md.FullName(), old, key)
		}
		keys[md.FullName()] = key
	}
	var b strings.Builder
	for _, name := range slices.Sorted(maps.Keys(keys)) {
		fmt.Fprintf(&b, "%s %s\n", name, keys[name])
	}
	return os.WriteFile(filepath.Join(dir, routingKeysFile), []byte(b.String()), 0o644)
}
