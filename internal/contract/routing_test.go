package contract

import (
	"io/fs"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/ordermesh/ordermesh/internal/eventbus"

	// The generated packages register their files with the global registry;
	// TestEverySchemaIsChecked fails until a new package is imported here.
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/eventbus/v1"
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/notification/v1"
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	_ "github.com/ordermesh/ordermesh/gen/go/ordermesh/payment/v1"
)

var routingKeyPattern = regexp.MustCompile(`^[a-z]+(\.[a-z_]+)+$`)

// producerPrefix is the routing key prefix each producing package owns.
var producerPrefix = map[protoreflect.FullName]string{
	"ordermesh.order.v1":        "order.",
	"ordermesh.inventory.v1":    "stock.",
	"ordermesh.payment.v1":      "payment.",
	"ordermesh.notification.v1": "notification.",
}

// TestEventRoutingKeys walks every ordermesh schema in the generated
// registry: each top-level message of an events.proto that no other message
// of that file uses as a field type is an event and must declare a routing
// key; keys are well-formed, unique and owned by the producing package; no
// message outside events.proto declares one.
func TestEventRoutingKeys(t *testing.T) {
	owner := map[string]protoreflect.FullName{}
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), "ordermesh.") {
			return true
		}
		isEvents := strings.HasSuffix(fd.Path(), "/events.proto")
		parts := partTypes(fd)
		msgs := fd.Messages()
		for i := range msgs.Len() {
			md := msgs.Get(i)
			key, err := eventbus.RoutingKey(md)
			switch {
			case !isEvents && err == nil:
				t.Errorf("%s declares routing key %q outside an events.proto", md.FullName(), key)
			case isEvents && err != nil && !parts[md.FullName()]:
				t.Errorf("%s in %s is not used by another message, so it is an event, but: %v", md.FullName(), fd.Path(), err)
			case err == nil:
				if !routingKeyPattern.MatchString(key) {
					t.Errorf("%s: routing key %q does not match %s", md.FullName(), key, routingKeyPattern)
				}
				if prefix := producerPrefix[fd.Package()]; !strings.HasPrefix(key, prefix) {
					t.Errorf("%s: routing key %q should start with %q, the prefix of package %s", md.FullName(), key, prefix, fd.Package())
				}
				if other, dup := owner[key]; dup {
					t.Errorf("routing key %q declared by both %s and %s", key, other, md.FullName())
				}
				owner[key] = md.FullName()
			}
		}
		return true
	})

	// The event catalogue the design names; a new event is added here on
	// purpose, together with its consumers.
	want := []string{
		"notification.sent",
		"order.cancelled", "order.confirmed", "order.created", "order.rejected",
		"payment.failed", "payment.refunded", "payment.succeeded",
		"stock.released", "stock.reservation_failed", "stock.reserved",
	}
	got := make([]string, 0, len(owner))
	for k := range owner {
		got = append(got, k)
	}
	sort.Strings(got)
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("routing keys (-want +got):\n%s", diff)
	}
}

// partTypes returns the messages of fd that another message of fd uses as
// a field type (e.g. StockLine inside StockReserved).
func partTypes(fd protoreflect.FileDescriptor) map[protoreflect.FullName]bool {
	parts := map[protoreflect.FullName]bool{}
	msgs := fd.Messages()
	for i := range msgs.Len() {
		fields := msgs.Get(i).Fields()
		for j := range fields.Len() {
			if m := fields.Get(j).Message(); m != nil && m.ParentFile() == fd {
				parts[m.FullName()] = true
			}
		}
	}
	return parts
}

func TestRoutingKeyOfNonEvent(t *testing.T) {
	md, err := protoregistry.GlobalFiles.FindDescriptorByName("ordermesh.order.v1.Order")
	if err != nil {
		t.Fatalf("find Order: %v", err)
	}
	if _, err := eventbus.RoutingKey(md.(protoreflect.MessageDescriptor)); err == nil {
		t.Fatal("Order is not an event, but RoutingKey returned no error")
	}
}

// TestEverySchemaIsChecked: every file under proto/ordermesh is in the
// registry these tests walk (its generated package imported above), and
// every package with events owns a routing key prefix. A new package's
// events would otherwise pass every contract check unseen: a key that
// collides with another's, or no fixture.
func TestEverySchemaIsChecked(t *testing.T) {
	root := filepath.Join("..", "..", "proto")
	var files []string
	err := filepath.WalkDir(filepath.Join(root, "ordermesh"), func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Ext(path) != ".proto" {
			return err
		}
		rel, err := filepath.Rel(root, path)
		files = append(files, filepath.ToSlash(rel))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatalf("no .proto files under %s", root)
	}
	for _, f := range files {
		fd, err := protoregistry.GlobalFiles.FindFileByPath(f)
		if err != nil {
			t.Errorf("%s is not registered: import its generated package in internal/contract/routing_test.go (%v)", f, err)
			continue
		}
		if strings.HasSuffix(f, "/events.proto") && producerPrefix[fd.Package()] == "" {
			t.Errorf("%s: package %s has events but no routing key prefix in producerPrefix", f, fd.Package())
		}
	}
}
