package postgres

import "time"

// SetMigrationLockTimeout sets migrationLockTimeout until the returned
// function restores it.
func SetMigrationLockTimeout(d time.Duration) (restore func()) {
	prev := migrationLockTimeout
	migrationLockTimeout = d
	return func() { migrationLockTimeout = prev }
}
