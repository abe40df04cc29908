package app

// CreateBatches returns how many transactions Create calls have shared.
func (a *App) CreateBatches() int64 {
	batches, _ := a.creates.Stats()
	return batches
}

// Unavailable is unavailable, for tests of which errors it marks.
var Unavailable = unavailable
