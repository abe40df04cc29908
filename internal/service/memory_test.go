package service

import (
	"bytes"
	"context"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/config"
)

func TestLimitFloor(t *testing.T) {
	const mib = 1 << 20
	tests := []struct {
		name string
		s    memorySample
		want int64
	}{
		{
			// 24 MiB counted: 8 of objects, 2 free, so 14 of overhead;
			// 8 live need 10 with their headroom.
			name: "overhead plus the live heap and a quarter of it",
			s:    memorySample{live: 8 * mib, total: 30 * mib, released: 6 * mib, objects: 8 * mib, free: 2 * mib},
			want: 24 * mib,
		},
		{
			name: "rounded up to a MiB",
			s:    memorySample{live: 4*mib + 1, total: 10 * mib, released: 0, objects: 6 * mib, free: 0},
			want: 10 * mib,
		},
		{
			name: "free pages do not count",
			s:    memorySample{live: 4 * mib, total: 30 * mib, released: 0, objects: 6 * mib, free: 20 * mib},
			want: 9 * mib,
		},
		{
			name: "inconsistent reads give no negative overhead",
			s:    memorySample{live: 4 * mib, total: 1 * mib, objects: 6 * mib},
			want: 5 * mib,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := limitFloor(tt.s); got != tt.want {
				t.Errorf("limitFloor = %d MiB + %d, want %d MiB", got/mib, got%mib, tt.want/mib)
			}
		})
	}
}

// syncBuffer is a log sink the guard's goroutine writes while the test
// reads.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestGuardMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	run := func(t *testing.T, limit int64) (got int64, log string) {
		t.Helper()
		debug.SetMemoryLimit(limit)
		var out syncBuffer
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- guardMemoryLimit(ctx, slog.New(slog.NewTextHandler(&out, nil)), config.Bytes(limit), 5*time.Millisecond)
		}()
		// A few rounds of the guard.
		time.Sleep(100 * time.Millisecond)
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("guard: %v", err)
		}
		return debug.SetMemoryLimit(-1), out.String()
	}

	t.Run("a limit below what the process needs is raised", func(t *testing.T) {
		// No Go process runs in 1 MiB: stacks and runtime metadata alone
		// take more.
		got, log := run(t, 1<<20)
		if got <= 1<<20 || got > 1<<40 {
			t.Errorf("limit = %d, want it raised above 1 MiB", got)
		}
		if n := strings.Count(log, "live heap outgrew the memory limit"); n != 1 || !strings.Contains(log, "configured=1MiB") {
			t.Errorf("log = %q, want one warning naming the configured limit", log)
		}
	})
	t.Run("a roomy limit stays", func(t *testing.T) {
		got, log := run(t, 1<<40)
		if got != 1<<40 {
			t.Errorf("limit = %d, want %d", got, int64(1<<40))
		}
		if log != "" {
			t.Errorf("log = %q, want nothing", log)
		}
	})
}
