// Package ctxsleep waits for a while unless a context ends first: the
// pause between retries of the relay, the inbox, the event bus's
// reconnects and the migrations.
package ctxsleep

import (
	"context"
	"time"
)

// Sleep waits d, or less if ctx ends first; it reports whether ctx is
// still live.
func Sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
