package postgres_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

func TestBatcherGathersConcurrentCallsAndFlushesEachOnce(t *testing.T) {
	var inFlight, overlap atomic.Int32
	flushed := make(map[int]int)
	var mu sync.Mutex
	b := postgres.NewBatcher(16, 1, func(_ context.Context, items []*int) {
		if inFlight.Add(1) > 1 {
			overlap.Add(1)
		}
		defer inFlight.Add(-1)
		time.Sleep(2 * time.Millisecond) // a commit, as far as the callers can tell
		mu.Lock()
		defer mu.Unlock()
		for _, it := range items {
			flushed[*it]++
			*it = -*it // the result, read by the caller after Do
		}
	})
	const calls = 200
	results := make([]int, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v := i + 1
			if err := b.Do(context.Background(), "one lane", &v); err != nil {
				t.Errorf("Do(%d) = %v", i, err)
			}
			results[i] = v
		}()
	}
	wg.Wait()
	for i, r := range results {
		if r != -(i+1) || flushed[i+1] != 1 {
			t.Errorf("item %d: result %d flushed %d times, want result %d flushed once", i+1, r, flushed[i+1], -(i + 1))
		}
	}
	batches, items := b.Stats()
	if items != calls || batches >= calls {
		t.Errorf("Stats = %d batches, %d items; want %d items in fewer batches", batches, items, calls)
	}
	if overlap.Load() != 0 {
		t.Errorf("%d flushes overlapped in one lane", overlap.Load())
	}
	t.Logf("%d calls in %d batches", items, batches)
}

func TestBatcherRunsLanesInParallel(t *testing.T) {
	release := make(chan struct{})
	started := make(chan string, 2)
	b := postgres.NewBatcher(8, 64, func(_ context.Context, items []string) {
		started <- items[0]
		<-release
	})
	// "a" and "b" hash to different lanes of 64.
	var wg sync.WaitGroup
	for _, key := range []string{"a", "b"} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = b.Do(context.Background(), key, key)
		}()
	}
	timeout := time.After(5 * time.Second)
	for range 2 {
		select {
		case <-started:
		case <-timeout:
			t.Fatal("the second lane's flush did not start while the first was in flight")
		}
	}
	close(release)
	wg.Wait()
}

func TestBatcherDoesNotFlushForAnEndedContext(t *testing.T) {
	b := postgres.NewBatcher(8, 1, func(context.Context, []int) { t.Error("flushed an item whose context had ended") })
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Do(ctx, "k", 1); !errors.Is(err, context.Canceled) {
		t.Errorf("Do = %v, want context.Canceled", err)
	}
}

// TestBatcherSurvivesAPanickingFlush: a flush that panics fails every
// call of its batch, leader and followers, with ErrFlushPanicked and the
// panic's stack, and the lane goes on flushing the calls after it (the
// lead used to stay with the panicked batch, and every later call on the
// lane waited forever).
func TestBatcherSurvivesAPanickingFlush(t *testing.T) {
	first := make(chan struct{})
	var flushes atomic.Int32
	b := postgres.NewBatcher(16, 1, func(_ context.Context, items []*int) {
		if flushes.Add(1) == 1 {
			<-first // hold the lane while the next two calls queue
			return
		}
		for _, it := range items {
			if *it < 0 {
				panic("a bad item")
			}
			*it *= 10
		}
	})
	var wg sync.WaitGroup
	zero := 0
	wg.Go(func() { _ = b.Do(context.Background(), "k", &zero) })
	for flushes.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	errs := make([]error, 2)
	items := []int{-1, -2}
	for i := range items {
		wg.Go(func() { errs[i] = b.Do(context.Background(), "k", &items[i]) })
	}
	// Both queue behind the held batch and go together in the next.
	for deadline := time.Now().Add(time.Minute); b.Queued() < 2; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the two calls did not queue within a minute")
		}
	}
	close(first)
	wg.Wait()
	for i, err := range errs {
		if !errors.Is(err, postgres.ErrFlushPanicked) || !strings.Contains(err.Error(), "batcher_test.go") {
			t.Errorf("call %d of the panicking batch: %v, want ErrFlushPanicked with the panic's stack", i, err)
		}
	}
	if n := flushes.Load(); n != 2 {
		t.Fatalf("%d flushes, want 2 (the two bad items in one batch)", n)
	}

	done := make(chan error, 1)
	good := 2
	go func() { done <- b.Do(context.Background(), "k", &good) }()
	select {
	case err := <-done:
		if err != nil || good != 20 {
			t.Fatalf("Do after the panic = %v with result %d, want nil and 20", err, good)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Do after a panicking flush still waits after 10 s: the lane is jammed")
	}
}

// TestBatcherLetsAWaitingCallGo: a call waiting behind the batch in
// flight returns its context's error as soon as the context ends, and its
// item is never flushed; the lane goes on with the calls after it.
func TestBatcherLetsAWaitingCallGo(t *testing.T) {
	entered, release := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var flushed []int
	b := postgres.NewBatcher(8, 1, func(_ context.Context, items []int) {
		if slices.Contains(items, 1) {
			close(entered)
			<-release
		}
		mu.Lock()
		flushed = append(flushed, items...)
		mu.Unlock()
	})
	first := make(chan error, 1)
	go func() { first <- b.Do(context.Background(), "k", 1) }()
	select {
	case <-entered:
	case <-time.After(5 * time.Second):
		t.Fatal("the first call's flush did not start")
	}
	ctx, cancel := context.WithCancel(context.Background())
	waiting := make(chan error, 1)
	go func() { waiting <- b.Do(ctx, "k", 2) }()
	waitFor(t, "the second call queued", func() bool { return b.Queued() == 1 })
	cancel()
	select {
	case err := <-waiting:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("waiting call = %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a waiting call whose context ended is still waiting 5 s on")
	}
	if n := b.Queued(); n != 0 {
		t.Errorf("%d calls queued after the waiting one left, want 0", n)
	}
	close(release)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	if err := b.Do(context.Background(), "k", 3); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(flushed, []int{1, 3}) {
		t.Errorf("flushed %v, want [1 3] (never the item whose call left)", flushed)
	}
}

// TestBatcherCallsLeavingWhileTheLeadMoves: calls end their contexts at
// random while batches come and go, some of them just as the lead is
// handed to them: each call either returns nil with its item flushed
// once, or its context's error with its item never flushed, and the lane
// never stalls.
func TestBatcherCallsLeavingWhileTheLeadMoves(t *testing.T) {
	var mu sync.Mutex
	times := map[int]int{}
	b := postgres.NewBatcher(4, 1, func(_ context.Context, items []int) {
		time.Sleep(200 * time.Microsecond)
		mu.Lock()
		for _, it := range items {
			times[it]++
		}
		mu.Unlock()
	})
	const n = 2000
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Duration(rand.IntN(400))*time.Microsecond)
			defer cancel()
			errs[i] = b.Do(ctx, "k", i)
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("calls still waiting 30 s on: the lane stalled")
	}
	left := 0
	for i, err := range errs {
		switch {
		case err == nil && times[i] != 1:
			t.Errorf("call %d returned nil, its item flushed %d times", i, times[i])
		case err != nil && (!errors.Is(err, context.DeadlineExceeded) || times[i] != 0):
			t.Errorf("call %d returned %v, its item flushed %d times", i, err, times[i])
		case err != nil:
			left++
		}
	}
	if left == 0 || left == n {
		t.Errorf("%d of %d calls left before a batch took them; the test shows nothing unless some do and some do not", left, n)
	}
}

// waitFor polls cond every millisecond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}
