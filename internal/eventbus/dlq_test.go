package eventbus

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

func TestDLQListReplayDiscard(t *testing.T) {
	cfg := testConfig(t, "dlqadmin")
	sub, err := NewSubscriber(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	var accept atomic.Bool
	var mu sync.Mutex
	var handled []Meta
	if err := Handle(sub, func(_ context.Context, _ *orderv1.OrderCreated, meta Meta) error {
		if !accept.Load() {
			return Permanent(errors.New("not today"))
		}
		mu.Lock()
		handled = append(handled, meta)
		mu.Unlock()
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	startSubscriber(t, sub)
	pub := startPublisher(t, cfg)
	q, err := NewDLQ(cfg, testLogger())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	var ids []string
	for range 3 {
		_, m := newOrderCreated(t)
		ids = append(ids, m.ID)
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	listed := deadLetters(t, q, 3)
	again, err := q.List(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	idsOf := func(dls []DeadLetter) []string {
		var out []string
		for _, dl := range dls {
			out = append(out, dl.ID)
		}
		return out
	}
	sortStrings := cmpopts.SortSlices(func(a, b string) bool { return a < b })
	if diff := cmp.Diff(idsOf(listed), idsOf(again), sortStrings); diff != "" {
		t.Errorf("second List differs (-first +second):\n%s", diff)
	}
	if diff := cmp.Diff(ids, idsOf(listed), sortStrings); diff != "" {
		t.Errorf("listed ids (-want +got):\n%s", diff)
	}
	for _, dl := range listed {
		if dl.Reason != ReasonPermanent || dl.Error != "not today" || dl.RoutingKey != "order.created" || dl.DeadLetteredAt.IsZero() {
			t.Errorf("dead letter %s: reason=%q error=%q key=%q at=%v", dl.ID, dl.Reason, dl.Error, dl.RoutingKey, dl.DeadLetteredAt)
		}
	}
	if got, err := q.List(ctx, 2); err != nil || len(got) != 2 {
		t.Errorf("List(2) = %d messages, %v", len(got), err)
	}

	accept.Store(true)
	t.Run("replay one", func(t *testing.T) {
		if err := q.Replay(ctx, ids[0]); err != nil {
			t.Fatalf("Replay: %v", err)
		}
		eventually(t, 5*time.Second, "replayed message handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == 1
		})
		mu.Lock()
		m := handled[0]
		mu.Unlock()
		if m.ID != ids[0] || m.RoutingKey != "order.created" || m.Attempt != 1 {
			t.Errorf("handled %+v, want id %s, key order.created, attempt 1", m, ids[0])
		}
		if err := q.Replay(ctx, "no-such-id"); !errors.Is(err, ErrNotFound) {
			t.Errorf("Replay(unknown) = %v, want ErrNotFound", err)
		}
	})
	t.Run("discard one", func(t *testing.T) {
		if err := q.Discard(ctx, ids[1]); err != nil {
			t.Fatalf("Discard: %v", err)
		}
		if err := q.Discard(ctx, ids[1]); !errors.Is(err, ErrNotFound) {
			t.Errorf("second Discard = %v, want ErrNotFound", err)
		}
		left, err := q.List(ctx, 0)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff([]string{ids[2]}, idsOf(left)); diff != "" {
			t.Errorf("left in DLQ (-want +got):\n%s", diff)
		}
	})
	t.Run("replay all", func(t *testing.T) {
		n, err := q.ReplayAll(ctx)
		if err != nil || n != 1 {
			t.Fatalf("ReplayAll = %d, %v; want 1", n, err)
		}
		eventually(t, 5*time.Second, "replayed message handled", func() bool {
			mu.Lock()
			defer mu.Unlock()
			return len(handled) == 2 && handled[1].ID == ids[2]
		})
	})
	t.Run("discard all", func(t *testing.T) {
		accept.Store(false)
		for range 2 {
			_, m := newOrderCreated(t)
			if err := pub.Publish(ctx, m); err != nil {
				t.Fatal(err)
			}
		}
		deadLetters(t, q, 2)
		n, err := q.DiscardAll(ctx)
		if err != nil || n != 2 {
			t.Fatalf("DiscardAll = %d, %v; want 2", n, err)
		}
		if left, err := q.List(ctx, 0); err != nil || len(left) != 0 {
			t.Errorf("List after DiscardAll = %d, %v", len(left), err)
		}
	})
}
