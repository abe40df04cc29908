package provider

import (
	"runtime"
	"testing"

	"github.com/google/uuid"
)

// BenchmarkDeterministicMemory reports the heap a full generation of
// charge keys takes (heap-B/key): DefaultMaxKeys charges under order-id
// keys, as the payment service makes them, measured after a collection.
// The provider holds up to two such generations.
func BenchmarkDeterministicMemory(b *testing.B) {
	keys := make([]string, DefaultMaxKeys)
	for i := range keys {
		keys[i] = uuid.Must(uuid.NewV7()).String()
	}
	var perKey float64
	for b.Loop() {
		// Each key and token is its own allocation, as when decoded from an
		// event; the provider keeps what it needs of them.
		before := heapInUse()
		reqs := make([]ChargeRequest, len(keys))
		for i, k := range keys {
			reqs[i] = ChargeRequest{IdempotencyKey: string([]byte(k)), Amount: Money{CurrencyCode: string([]byte("EUR")), Units: 42, Nanos: 500_000_000}, Token: string([]byte("tok_visa"))}
		}
		p := &Deterministic{maxKeys: len(keys) + 1}
		for _, req := range reqs {
			if _, err := p.Charge(b.Context(), req); err != nil {
				b.Fatalf("Charge: %v", err)
			}
		}
		reqs = nil
		after := heapInUse()
		if n := p.rememberedKeys(); n != len(keys) {
			b.Fatalf("the provider remembers %d keys, want %d", n, len(keys))
		}
		perKey = float64(after-before) / float64(len(keys))
		runtime.KeepAlive(p)
	}
	b.ReportMetric(perKey, "heap-B/key")
}

// heapInUse returns the bytes of live heap objects after a collection.
func heapInUse() int64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return int64(ms.HeapAlloc)
}
