package telemetry_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ordermesh/ordermesh/internal/telemetry"
)

// TestServeAdminStopsDuringAProfile: a CPU profile running when the
// binary shuts down ends with it; ServeAdmin returns nil at once instead
// of waiting out the profile and failing the shutdown.
func TestServeAdminStopsDuringAProfile(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	served := make(chan error, 1)
	go func() {
		served <- telemetry.ServeAdmin(ctx, slog.New(slog.DiscardHandler), lis, prometheus.NewRegistry(), true)
	}()
	url := "http://" + lis.Addr().String()
	// The profile is under way once a second request gets its answer
	// after it: the server takes both.
	profiled := make(chan error, 1)
	go func() {
		resp, err := http.Get(url + "/debug/pprof/profile?seconds=30")
		if err != nil {
			profiled <- err
			return
		}
		defer resp.Body.Close()
		n, err := io.Copy(io.Discard, resp.Body)
		if err == nil && (resp.StatusCode != http.StatusOK || n == 0) {
			err = fmt.Errorf("%s with %d bytes", resp.Status, n)
		}
		profiled <- err
	}()
	time.Sleep(300 * time.Millisecond)
	resp, err := http.Get(url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()

	start := time.Now()
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeAdmin = %v, want nil", err)
		}
		if d := time.Since(start); d > 3*time.Second {
			t.Errorf("ServeAdmin took %s to return after its context ended", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ServeAdmin still running 10 s after its context ended")
	}
	select {
	case err := <-profiled:
		// Ended early, with what it had collected.
		if err != nil {
			t.Errorf("profile: %v, want a 200 with a profile", err)
		}
	case <-time.After(5 * time.Second):
		t.Error("the profile request still running after ServeAdmin returned")
	}
}

// TestServeAdminWithoutProfiling: with profiling off the endpoint serves
// /metrics and no /debug/pprof/ page.
func TestServeAdminWithoutProfiling(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() {
		served <- telemetry.ServeAdmin(ctx, slog.New(slog.DiscardHandler), lis, prometheus.NewRegistry(), false)
	}()
	defer func() {
		cancel()
		if err := <-served; err != nil {
			t.Errorf("ServeAdmin = %v", err)
		}
	}()
	for path, want := range map[string]int{"/metrics": http.StatusOK, "/debug/pprof/": http.StatusNotFound, "/debug/pprof/cmdline": http.StatusNotFound} {
		resp, err := http.Get("http://" + lis.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// TestStartAdmin: the endpoint serves until stop, whatever the context it
// was started with does; stop returns what serving ended with, the same
// each time; an endpoint that fails calls fail with its error; with no
// listener there is nothing to serve or stop.
func TestStartAdmin(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	if err := telemetry.StartAdmin(context.Background(), log, nil, prometheus.NewRegistry(), false, func(error) {
		t.Error("fail called with no endpoint")
	})(); err != nil {
		t.Errorf("stop with no endpoint = %v, want nil", err)
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stop := telemetry.StartAdmin(ctx, log, lis, prometheus.NewRegistry(), false, func(err error) {
		t.Errorf("fail(%v) while serving", err)
	})
	cancel() // the binary's context ends: its shutdown begins
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get("http://" + lis.Addr().String() + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics after the context ended: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("GET /metrics after the context ended: %s, want 200", resp.Status)
	}
	if err := stop(); err != nil {
		t.Errorf("stop = %v, want nil", err)
	}
	if err := stop(); err != nil {
		t.Errorf("stop again = %v, want nil", err)
	}
	if _, err := client.Get("http://" + lis.Addr().String() + "/metrics"); err == nil {
		t.Error("GET /metrics answered after stop")
	}

	// A listener closed under it: serving fails.
	broken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	broken.Close()
	failed := make(chan error, 1)
	stop = telemetry.StartAdmin(context.Background(), log, broken, prometheus.NewRegistry(), false, func(err error) { failed <- err })
	select {
	case err := <-failed:
		if err == nil {
			t.Error("fail(nil), want the serving error")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("fail not called for an endpoint that could not serve")
	}
	if err := stop(); err == nil {
		t.Error("stop = nil after the endpoint failed, want its error")
	}
}
