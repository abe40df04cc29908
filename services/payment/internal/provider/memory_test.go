package provider

import (
	"runtime"
	"testing"

	"github.com/google/uuid"
)

// BenchmarkDeterministicMemory reports the heap the provider's record takes
// per order, measured after a collection: "charged" charges 8192 orders
// (heap-B/key: a charge key each), "refunded" also refunds each in full,
// under the same order-id key, as the payment service does (heap-B/order:
// a charge key and a refund key). The provider holds up to two
// generations of DefaultMaxKeys keys.
func BenchmarkDeterministicMemory(b *testing.B) {
	orders := make([]string, DefaultMaxKeys)
	for i := range orders {
		orders[i] = uuid.Must(uuid.NewV7()).String()
	}
	b.Run("charged", func(b *testing.B) { benchmarkMemory(b, orders, false, "heap-B/key") })
	b.Run("refunded", func(b *testing.B) { benchmarkMemory(b, orders, true, "heap-B/order") })
}

func benchmarkMemory(b *testing.B, orders []string, refund bool, unit string) {
	wantKeys := len(orders)
	if refund {
		wantKeys *= 2
	}
	var perOrder float64
	for b.Loop() {
		before := liveHeap()
		p := record(b, orders, refund)
		after := liveHeap()
		if n := p.rememberedKeys(); n != wantKeys {
			b.Fatalf("the provider remembers %d keys, want %d", n, wantKeys)
		}
		perOrder = float64(after-before) / float64(len(orders))
		runtime.KeepAlive(p)
	}
	b.ReportMetric(perOrder, unit)
}

// record returns a provider that charged, and if refund is set refunded,
// each of orders. Each key, token and currency is an allocation of its
// own, as when decoded from an event; the provider keeps what it needs of
// them, and the rest is garbage once record returns.
func record(b *testing.B, orders []string, refund bool) *Deterministic {
	p := &Deterministic{maxKeys: 2*len(orders) + 1}
	for _, o := range orders {
		amount := Money{CurrencyCode: string([]byte("EUR")), Units: 42, Nanos: 500_000_000}
		c, err := p.Charge(b.Context(), ChargeRequest{IdempotencyKey: string([]byte(o)), Amount: amount, Token: string([]byte("tok_visa"))})
		if err != nil {
			b.Fatalf("Charge: %v", err)
		}
		if !refund {
			continue
		}
		if _, err := p.Refund(b.Context(), RefundRequest{IdempotencyKey: string([]byte(o)), ChargeID: c.ID, Amount: amount}); err != nil {
			b.Fatalf("Refund: %v", err)
		}
	}
	return p
}

// liveHeap returns the bytes of heap objects after a collection.
func liveHeap() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
