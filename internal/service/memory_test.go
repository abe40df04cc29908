package service

import (
	"context"
	"fmt"
	"log/slog"
	"regexp"
	"runtime"
	"runtime/debug"
	runtimemetrics "runtime/metrics"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/config"

	"github.com/ordermesh/ordermesh/internal/logtest"
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
			// 8 live need 10 with their headroom, and the runtime keeps
			// 1 MiB in reserve below the limit.
			name: "overhead plus the live heap, a quarter of it and the reserve",
			s:    memorySample{live: 8 * mib, total: 30 * mib, released: 6 * mib, objects: 8 * mib, free: 2 * mib},
			want: 25 * mib,
		},
		{
			name: "rounded up to a MiB",
			s:    memorySample{live: 4*mib + 1, total: 10 * mib, released: 0, objects: 6 * mib, free: 0},
			want: 11 * mib,
		},
		{
			name: "free pages do not count",
			s:    memorySample{live: 4 * mib, total: 30 * mib, released: 0, objects: 6 * mib, free: 20 * mib},
			want: 10 * mib,
		},
		{
			name: "inconsistent reads give no negative overhead",
			s:    memorySample{live: 4 * mib, total: 1 * mib, objects: 6 * mib},
			want: 6 * mib,
		},
		{
			// 50 MiB of goal: 3 % of the room is more than 1 MiB.
			name: "a large heap's reserve is 3 % of the room",
			s:    memorySample{live: 40 * mib, total: 40 * mib, objects: 40 * mib},
			want: 52 * mib,
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

func TestGuardMemoryLimit(t *testing.T) {
	prev := debug.SetMemoryLimit(-1)
	t.Cleanup(func() { debug.SetMemoryLimit(prev) })

	// start sets the memory limit and has the guard keep it until stop,
	// which returns the limit the guard left; stop may be called again.
	start := func(t *testing.T, limit int64) (log *logtest.Buffer, stop func() int64) {
		t.Helper()
		debug.SetMemoryLimit(limit)
		log = &logtest.Buffer{}
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error, 1)
		go func() {
			done <- guardMemoryLimit(ctx, slog.New(slog.NewTextHandler(log, nil)), config.Bytes(limit), 5*time.Millisecond)
		}()
		return log, sync.OnceValue(func() int64 {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("guard: %v", err)
			}
			return debug.SetMemoryLimit(-1)
		})
	}
	// run has the guard keep limit until until accepts its log (nil: at
	// once), then for a few more rounds (a grace of 20 intervals, for what
	// must not happen), and returns the limit it left and its log.
	run := func(t *testing.T, limit int64, until func(log string) bool) (got int64, log string) {
		t.Helper()
		out, stop := start(t, limit)
		defer stop()
		for deadline := time.Now().Add(30 * time.Second); until != nil && !until(out.String()); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("log %q after 30s: not what the test waits for", out.String())
			}
		}
		time.Sleep(100 * time.Millisecond)
		got = stop()
		return got, out.String()
	}

	t.Run("a limit below what the process needs is raised", func(t *testing.T) {
		// No Go process runs in 1 MiB: stacks and runtime metadata alone
		// take more. The guard raises the limit, then warns.
		got, log := run(t, 1<<20, func(log string) bool { return strings.Contains(log, "live heap outgrew the memory limit") })
		if got <= 1<<20 || got > 1<<40 {
			t.Errorf("limit = %d, want it raised above 1 MiB", got)
		}
		if n := strings.Count(log, "live heap outgrew the memory limit"); n != 1 || !strings.Contains(log, "configured=1MiB") {
			t.Errorf("log = %q, want one warning naming the configured limit", log)
		}
	})
	t.Run("a roomy limit stays", func(t *testing.T) {
		got, log := run(t, 1<<40, nil)
		if got != 1<<40 {
			t.Errorf("limit = %d, want %d", got, int64(1<<40))
		}
		if log != "" {
			t.Errorf("log = %q, want nothing", log)
		}
	})
	t.Run("a live heap growing in steps has the limit raised at each", func(t *testing.T) {
		const mib = 1 << 20
		// Each step adds more live heap, with its headroom, than the
		// configured limit leaves, so each needs a raise of its own.
		const step, room = 16 * mib, 8 * mib
		samples := make([]runtimemetrics.Sample, len(memoryMetrics))
		for i, name := range memoryMetrics {
			samples[i].Name = name
		}
		runtime.GC()
		limit := limitFloor(readMemorySample(samples)) + room
		t.Logf("configured limit %d MiB", limit/mib)
		log, stop := start(t, limit)
		defer stop()
		// await returns the limit once ok accepts it, checking on the way
		// that it never drops below the configured one.
		await := func(what string, ok func(int64) bool) int64 {
			t.Helper()
			for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
				got := debug.SetMemoryLimit(-1)
				if got < limit {
					t.Fatalf("limit %d MiB, below the configured %d MiB", got/mib, limit/mib)
				}
				if ok(got) {
					return got
				}
				if time.Now().After(deadline) {
					t.Fatalf("limit %d MiB after 5s, want %s", got/mib, what)
				}
			}
		}
		// A few rounds with the heap as it is.
		time.Sleep(50 * time.Millisecond)
		await("the configured one", func(l int64) bool { return l == limit })
		if out := log.String(); out != "" {
			t.Fatalf("before the heap grew: log %q, want no warning", out)
		}

		var held [][]byte
		raised := limit
		for i := 1; i <= 3; i++ {
			held = append(held, make([]byte, step))
			runtime.GC()
			live := readMemorySample(samples).live
			if live < uint64(i*step) {
				t.Fatalf("step %d: live heap %d MiB, want at least the %d MiB held", i, live/mib, i*step/mib)
			}
			// The live heap and its headroom, and more than the last raise.
			floor := int64(float64(live) * (1 + minHeapHeadroom))
			got := await(fmt.Sprintf("at least %d MiB and above %d MiB", floor/mib, raised/mib), func(l int64) bool {
				return l >= floor && l > raised
			})
			t.Logf("step %d: live heap %d MiB, limit raised to %d MiB", i, live/mib, got/mib)
			raised = got
			// What the raise is for: the runtime's heap goal under the
			// raised limit leaves the live heap its headroom. The runtime
			// holds a little more non-heap memory by now than when the
			// guard sampled it (a few KiB); without its reserve counted
			// the goal fell short by up to 1 MiB.
			const drift = 128 << 10
			goal := []runtimemetrics.Sample{{Name: "/gc/heap/goal:bytes"}}
			runtimemetrics.Read(goal)
			if g := goal[0].Value.Uint64(); g+drift < uint64(floor) {
				t.Errorf("step %d: heap goal %.1f MiB under the raised limit, want at least %.1f MiB (live heap and headroom)",
					i, float64(g)/mib, float64(floor)/mib)
			}
			if i == 1 {
				// The guard sets the limit, then warns.
				for deadline := time.Now().Add(5 * time.Second); !strings.Contains(log.String(), "live heap outgrew"); time.Sleep(time.Millisecond) {
					if time.Now().After(deadline) {
						t.Fatalf("no warning 5s after the limit was raised; log %q", log.String())
					}
				}
			}
		}
		// The heap shrinks back: the limit is lowered, to the configured
		// one and no lower.
		clear(held)
		runtime.GC()
		await("back to the configured one", func(l int64) bool { return l == limit })
		if got := stop(); got != limit {
			t.Errorf("limit the guard left = %d MiB, want the configured %d MiB", got/mib, limit/mib)
		}
		// One warning for the three raises: they came within
		// memoryWarnInterval of the first.
		out := log.String()
		if n := strings.Count(out, "live heap outgrew the memory limit"); n != 1 {
			t.Fatalf("%d warnings for three raises within %v, want 1; log %q", n, memoryWarnInterval, out)
		}
		if want := "configured=" + config.Bytes(limit).String(); !strings.Contains(out, want) {
			t.Errorf("warning %q does not name the configured limit (%s)", out, want)
		}
		var live uint64
		if m := regexp.MustCompile(`live_heap_bytes=(\d+)`).FindStringSubmatch(out); m != nil {
			live, _ = strconv.ParseUint(m[1], 10, 64)
		}
		if live < step {
			t.Errorf("warning %q, want it to give the live heap of the first step (at least %d MiB)", out, step/mib)
		}
	})
}
