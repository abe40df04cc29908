package postgres

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
)

// Batcher gathers concurrent calls into batches, so that under load one
// piece of work (typically one transaction and its commit) serves many
// callers.
//
// Items are spread over lanes by a key; each lane has at most one batch in
// flight. A call of Do joins its lane's queue. When the lane has no batch
// in flight the call leads: it hands every queued item (up to the batch
// size) to the flush function, and when flush returns hands the lead to
// the first call that queued meanwhile. Alone, a call flushes at once;
// under load a batch carries what arrived while the previous one was in
// flight. Nothing runs in the background: leaders are callers.
//
// Items that touch the same rows should share a key (or use one lane),
// so that two lanes never wait for each other.
type Batcher[T any] struct {
	max   int
	flush func(ctx context.Context, items []T)
	lanes []*batchLane[T]

	batches, items atomic.Int64
}

// batchLane is one queue of a Batcher with at most one batch in flight.
type batchLane[T any] struct {
	mu      sync.Mutex
	queue   []*batchCall[T]
	leading bool
}

type batchCall[T any] struct {
	item T
	done chan struct{}
	lead chan struct{}
	// err is the batch's failure to flush, set before done closes.
	err error
}

// ErrFlushPanicked is returned by Do to every call of a batch whose flush
// panicked; the items' results are then unknown.
var ErrFlushPanicked = errors.New("batch flush panicked")

// ErrNotRun marks Do's error for a call whose context ended before a batch
// took it (with the context's error): its item was never flushed, so its
// failure says nothing about the item, only that batches ahead of it
// took too long.
var ErrNotRun = errors.New("no batch took the call before its context ended")

// NewBatcher returns a Batcher with lanes lanes (at least 1) handing at
// most batch items (at least 1) at a time to flush. flush must deal with
// every item it gets, reporting results through the items themselves (T
// is typically a pointer), and must not retain the slice. It gets a
// context that does not follow any caller's: a batch belongs to all its
// callers, so flush should bound its own work.
func NewBatcher[T any](batch, lanes int, flush func(ctx context.Context, items []T)) *Batcher[T] {
	b := &Batcher[T]{max: max(batch, 1), flush: flush, lanes: make([]*batchLane[T], max(lanes, 1))}
	for i := range b.lanes {
		b.lanes[i] = &batchLane[T]{}
	}
	return b
}

// Do hands item to a flush shared with concurrent calls of the same lane
// (chosen by key) and returns once that flush returned. It returns ctx's
// error, marked ErrNotRun, without flushing item, if ctx has ended before
// the call, and
// when ctx ends while the call waits behind the batch in flight (a caller
// that has gone is not served later); a batch may still take an item
// whose ctx ended just then, and once one has, Do waits for its flush
// even when ctx ends, because the batch belongs to all its callers. A flush that panics fails its batch's calls
// with ErrFlushPanicked and leaves the lane working.
func (b *Batcher[T]) Do(ctx context.Context, key string, item T) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrNotRun, err)
	}
	l := b.lanes[laneOf(key, len(b.lanes))]
	c := &batchCall[T]{item: item, done: make(chan struct{}), lead: make(chan struct{})}
	l.mu.Lock()
	l.queue = append(l.queue, c)
	if l.leading {
		l.mu.Unlock()
		select {
		case <-c.done:
			return c.err
		case <-c.lead:
		case <-ctx.Done():
		}
		// With ctx ended (even as the lead came), the call leaves the
		// queue, handing on the lead it may hold; if it is no longer
		// queued, a batch took it (a call handed the lead stays at the
		// head until it takes its batch), which it waits for.
		if ctx.Err() != nil {
			if l.leave(c) {
				return fmt.Errorf("%w: %w", ErrNotRun, ctx.Err())
			}
			<-c.done
			return c.err
		}
		l.mu.Lock()
	}
	l.leading = true
	n := min(len(l.queue), b.max)
	batch := l.queue[:n:n]
	l.queue = l.queue[n:]
	l.mu.Unlock()

	b.run(context.WithoutCancel(ctx), batch)

	l.mu.Lock()
	if len(l.queue) > 0 {
		close(l.queue[0].lead)
	} else {
		l.leading = false
	}
	l.mu.Unlock()
	// The leader is always in the batch it flushed: it was at the head of
	// the queue when it took the lead.
	return c.err
}

// leave takes c out of the lane's queue, if no batch has taken it, and
// reports whether it did. Had c been handed the lead (it was at the head
// of the queue), the lead goes on to the next call, or the lane is idle.
func (l *batchLane[T]) leave(c *batchCall[T]) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	i := slices.Index(l.queue, c)
	if i < 0 {
		return false
	}
	l.queue = slices.Delete(l.queue, i, i+1)
	select {
	case <-c.lead:
		if len(l.queue) > 0 {
			close(l.queue[0].lead)
		} else {
			l.leading = false
		}
	default:
	}
	return true
}

// run flushes batch and releases its calls, turning a panic of flush into
// ErrFlushPanicked so that the lane's lead is handed on.
func (b *Batcher[T]) run(ctx context.Context, batch []*batchCall[T]) {
	var err error
	defer func() {
		if p := recover(); p != nil {
			// The stack goes with the error: where the panic happened is
			// what whoever logs it needs.
			err = fmt.Errorf("%w: %v\n%s", ErrFlushPanicked, p, debug.Stack())
		}
		for _, c := range batch {
			c.err = err
			close(c.done)
		}
	}()
	b.batches.Add(1)
	b.items.Add(int64(len(batch)))
	items := make([]T, len(batch))
	for i, c := range batch {
		items[i] = c.item
	}
	b.flush(ctx, items)
}

// Stats returns how many batches were flushed and how many items they
// carried.
func (b *Batcher[T]) Stats() (batches, items int64) {
	return b.batches.Load(), b.items.Load()
}

// Queued returns how many calls wait in b's lanes for a batch to carry
// them: those that arrived while their lane's batch was in flight.
func (b *Batcher[T]) Queued() int {
	n := 0
	for _, l := range b.lanes {
		l.mu.Lock()
		n += len(l.queue)
		l.mu.Unlock()
	}
	return n
}

// laneOf maps a key to one of n lanes (FNV-1a).
func laneOf(key string, n int) int {
	if n == 1 {
		return 0
	}
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return int(h % uint32(n))
}
