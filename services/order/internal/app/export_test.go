package app

// CreateBatches returns how many transactions Create calls have shared.
func (a *App) CreateBatches() int64 { return a.creates.batches.Load() }
