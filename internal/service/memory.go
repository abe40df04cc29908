package service

import (
	"context"
	"log/slog"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"time"

	"github.com/ordermesh/ordermesh/internal/config"
)

// minHeapHeadroom is the least room for new allocations, as a fraction of
// the live heap, that the memory limit leaves the collector: a limit never
// makes it run more often than GOGC=25 would.
const minHeapHeadroom = 0.25

// memoryGuardInterval is how often the guard looks at the live heap.
const memoryGuardInterval = time.Second

// memoryWarnInterval spaces the guard's warnings: a heap near the limit
// can have it raised and lowered again every few seconds.
const memoryWarnInterval = time.Hour

// memorySample is what the guard reads from runtime/metrics.
type memorySample struct {
	// live is the heap the last collection marked live.
	live uint64
	// total and released give what the limit counts: everything the
	// runtime has mapped less what it returned to the OS.
	total, released uint64
	// objects and free are the heap's allocated objects (live or not yet
	// swept) and its free pages not yet returned.
	objects, free uint64
}

var memoryMetrics = []string{
	"/gc/heap/live:bytes",
	"/memory/classes/total:bytes",
	"/memory/classes/heap/released:bytes",
	"/memory/classes/heap/objects:bytes",
	"/memory/classes/heap/free:bytes",
}

func readMemorySample(samples []runtimemetrics.Sample) memorySample {
	runtimemetrics.Read(samples)
	v := func(i int) uint64 {
		if samples[i].Value.Kind() != runtimemetrics.KindUint64 {
			return 0
		}
		return samples[i].Value.Uint64()
	}
	return memorySample{live: v(0), total: v(1), released: v(2), objects: v(3), free: v(4)}
}

// The runtime's own reserve below a memory limit: the heap goal it derives
// from the limit is what the limit leaves besides non-heap memory, less
// 3 % of that or 1 MiB, whichever is more (memoryLimitHeapGoalHeadroomPercent
// and memoryLimitMinHeapGoalHeadroom in the runtime's GC pacer).
const (
	runtimeReservePercent = 3
	runtimeReserveMin     = 1 << 20
)

// limitFloor returns the lowest memory limit whose heap goal still leaves
// the collector minHeapHeadroom: what the runtime holds besides heap
// objects and free pages (stacks, metadata, partly filled spans), plus the
// live heap and its headroom, plus the runtime's reserve, rounded up to a
// MiB so that small changes of the heap do not move it.
func limitFloor(s memorySample) int64 {
	overhead := int64(s.total) - int64(s.released) - int64(s.objects) - int64(s.free)
	goal := int64(float64(s.live) * (1 + minHeapHeadroom))
	// The smallest room r above the overhead whose goal, r less the
	// reserve, is at least goal.
	room := max(goal+runtimeReserveMin, goal*100/(100-runtimeReservePercent)+1)
	floor := max(overhead, 0) + room
	const mib = 1 << 20
	return (floor + mib - 1) / mib * mib
}

// guardMemoryLimit keeps the process's soft memory limit at limit, raised
// to limitFloor while the live heap needs more: a live heap that outgrew
// the limit would otherwise have the collector run back to back, up to the
// runtime's cap of about half the CPU. It checks every interval until ctx
// ends, and warns when it raises the limit above limit, at most once per
// memoryWarnInterval.
func guardMemoryLimit(ctx context.Context, log *slog.Logger, limit config.Bytes, interval time.Duration) error {
	samples := make([]runtimemetrics.Sample, len(memoryMetrics))
	for i, name := range memoryMetrics {
		samples[i].Name = name
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	current := int64(limit)
	var warned time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		s := readMemorySample(samples)
		want := max(int64(limit), limitFloor(s))
		if want == current {
			continue
		}
		debug.SetMemoryLimit(want)
		current = want
		if want > int64(limit) && (warned.IsZero() || time.Since(warned) >= memoryWarnInterval) {
			log.WarnContext(ctx, "live heap outgrew the memory limit; raised it to keep the collector from running back to back (set ORDERMESH_MEMORY_LIMIT higher)",
				slog.String("limit", config.Bytes(want).String()), slog.String("configured", limit.String()),
				slog.Uint64("live_heap_bytes", s.live))
			warned = time.Now()
		}
	}
}
