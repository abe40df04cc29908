package eventbus

import (
	"context"
	"errors"
	"testing"
	"time"
)

// watchFor runs m.watch until the test ends and returns a channel that
// receives the cause it cancelled with, if it does.
func watchFor(t *testing.T, m *mover) <-chan error {
	t.Helper()
	done := make(chan struct{})
	causes := make(chan error, 1)
	go m.watch(done, func(cause error) { causes <- cause })
	t.Cleanup(func() { close(done) })
	return causes
}

// TestMoverCountsOnlyUnblockedTime: a copy's wait for its confirm gives up
// after the timeout counted while the broker did not block the
// connection; time blocked does not count, however it falls.
func TestMoverCountsOnlyUnblockedTime(t *testing.T) {
	const timeout = time.Second
	m := newMover(nil, timeout, make(chan struct{}))
	start := time.Now()
	causes := watchFor(t, m)
	time.Sleep(50 * time.Millisecond)
	m.setBlocked(true)
	time.Sleep(850 * time.Millisecond)
	m.setBlocked(false) // 50 ms counted so far; 950 left
	select {
	case cause := <-causes:
		t.Fatalf("gave up %s after the start, with 950 ms of unblocked time left after the unblock at 900 ms: %v", time.Since(start), cause)
	case <-time.After(400 * time.Millisecond):
	}
	select {
	case cause := <-causes:
		if !errors.Is(cause, errConfirmTimeout) {
			t.Errorf("cause %v, want errConfirmTimeout", cause)
		}
		if took := time.Since(start); took < 1700*time.Millisecond {
			t.Errorf("gave up after %s; want the 1 s of unblocked time plus the 850 ms blocked", took)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("did not give up")
	}
}

// TestMoverStopGivesUpOnlyWhileBlocked: a stop does not give up on a
// confirm that is coming, but does on a copy an alarm holds.
func TestMoverStopGivesUpOnlyWhileBlocked(t *testing.T) {
	stopping := make(chan struct{})
	m := newMover(nil, time.Hour, stopping)
	causes := watchFor(t, m)
	close(stopping)
	select {
	case cause := <-causes:
		t.Fatalf("gave up on a stop while not blocked: %v", cause)
	case <-time.After(200 * time.Millisecond):
	}
	m.setBlocked(true)
	select {
	case cause := <-causes:
		if !errors.Is(cause, errStopping) {
			t.Errorf("cause %v, want errStopping", cause)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a stop while blocked did not give up")
	}
	// publish waits for nothing once stopped while blocked.
	if err := m.publish(context.Background(), nil); !errors.Is(err, errStopping) {
		t.Errorf("publish while blocked and stopping: %v, want errStopping", err)
	}
}
