package postgres

import "time"

// SetMigrationLockTimeout sets migrationLockTimeout until the returned
// function restores it.
func SetMigrationLockTimeout(d time.Duration) (restore func()) {
	prev := migrationLockTimeout
	migrationLockTimeout = d
	return func() { migrationLockTimeout = prev }
}

// Queued returns how many calls wait in key's lane of b.
func Queued[T any](b *Batcher[T], key string) int {
	l := b.lanes[laneOf(key, len(b.lanes))]
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.queue)
}
