package ctxsleep_test

import (
	"context"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
)

func TestSleep(t *testing.T) {
	if !ctxsleep.Sleep(context.Background(), time.Millisecond) {
		t.Error("Sleep with a live context reported it ended")
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	if ctxsleep.Sleep(ctx, time.Hour) {
		t.Error("Sleep with an ended context reported it live")
	}
	if d := time.Since(start); d > time.Minute {
		t.Errorf("Sleep with an ended context took %s", d)
	}
}
