package postgres

import "time"

// SetMigrationLockTimeout sets migrationLockTimeout until the returned
// function restores it.
func SetMigrationLockTimeout(d time.Duration) (restore func()) {
	prev := migrationLockTimeout
	migrationLockTimeout = d
	return func() { migrationLockTimeout = prev }
}

// SetMaintenanceDatabase sets the database CreateDatabaseIfMissing
// creates others from until the returned function restores it.
func SetMaintenanceDatabase(name string) (restore func()) {
	prev := maintenanceDatabase
	maintenanceDatabase = name
	return func() { maintenanceDatabase = prev }
}

// SetMigrationLockPatience sets migrationLockPatience until the returned
// func restores it.
func SetMigrationLockPatience(d time.Duration) (restore func()) {
	prev := migrationLockPatience
	migrationLockPatience = d
	return func() { migrationLockPatience = prev }
}
