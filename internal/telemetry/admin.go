package telemetry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ordermesh/ordermesh/internal/config"
)

// Admin says where a binary's admin endpoint listens and what it serves.
type Admin struct {
	// Addr is the endpoint's address, empty for none.
	Addr string
	// Profiling serves /debug/pprof/ beside /metrics.
	Profiling bool
}

// ReadAdmin reads the admin endpoint's settings: ORDERMESH_ADMIN_ADDR
// (def unless set; "off" for none) and ORDERMESH_PPROF (by default
// ProfilingByDefault of the address). Problems are recorded on env.
func ReadAdmin(env *config.Env, def string) Admin {
	if v := env.String("ORDERMESH_ADMIN_ADDR", def); strings.EqualFold(strings.TrimSpace(v), "off") {
		return Admin{}
	}
	addr := env.Addr("ORDERMESH_ADMIN_ADDR", def)
	return Admin{Addr: addr, Profiling: env.Bool("ORDERMESH_PPROF", ProfilingByDefault(addr))}
}

// Listen opens the endpoint's listener, for StartAdmin; with no address it
// returns nil and no error. Binaries listen before they connect to
// anything, so that a taken port fails them at once.
func (a Admin) Listen() (net.Listener, error) {
	if a.Addr == "" {
		return nil, nil
	}
	lis, err := net.Listen("tcp", a.Addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (ORDERMESH_ADMIN_ADDR): %w", a.Addr, err)
	}
	return lis, nil
}

// ServeAdmin serves a binary's admin endpoint on lis until ctx ends:
// /metrics (Prometheus, what metrics gathers) and, with profiling set,
// /debug/pprof/ (see ProfilingByDefault). When ctx ends, requests still
// running (a CPU profile takes 30 s unless told otherwise) see their
// context end, and what has not finished within adminDrain is cut off: a
// profile does not hold up, or fail, the binary's shutdown.
func ServeAdmin(ctx context.Context, log *slog.Logger, lis net.Listener, metrics prometheus.Gatherer, profiling bool) error {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(metrics, promhttp.HandlerOpts{}))
	if profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	base, stop := context.WithCancel(context.WithoutCancel(ctx))
	defer stop()
	srv := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		BaseContext:       func(net.Listener) context.Context { return base },
	}
	log.InfoContext(ctx, "admin endpoint listening", slog.String("addr", lis.Addr().String()), slog.Bool("pprof", profiling))
	done := make(chan error, 1)
	go func() { done <- srv.Serve(lis) }()
	select {
	case err := <-done:
		return fmt.Errorf("serve admin: %w", err)
	case <-ctx.Done():
	}
	stop() // profiles and traces end when their request's context does
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), adminDrain)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		log.WarnContext(ctx, "admin endpoint requests still running; closing them", slog.Any("error", err))
		_ = srv.Close()
	}
	if err := <-done; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve admin: %w", err)
	}
	return nil
}

// StartAdmin serves the admin endpoint on lis (see ServeAdmin) from now
// until stop is called, whatever happens to the binary's own context: its
// metrics show the binary's shutdown (the drain, the consumers' stop, the
// outbox's flush) until the end. stop ends it and returns its error (later
// calls return the same). Whenever it fails, fail is called with the error,
// so that a binary still running stops. With lis nil there is no endpoint,
// and stop returns nil.
func StartAdmin(ctx context.Context, log *slog.Logger, lis net.Listener, metrics prometheus.Gatherer, profiling bool, fail func(error)) (stop func() error) {
	if lis == nil {
		return func() error { return nil }
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	done := make(chan error, 1)
	go func() {
		err := ServeAdmin(actx, log, lis, metrics, profiling)
		if err != nil {
			fail(err)
		}
		done <- err
	}()
	return sync.OnceValue(func() error {
		cancel()
		return <-done
	})
}

// adminDrain bounds how long ServeAdmin waits for running requests once
// its context ended.
const adminDrain = 5 * time.Second

// ProfilingByDefault reports whether an admin endpoint on addr serves
// /debug/pprof/ unless told (ORDERMESH_PPROF): only on a loopback address.
// Profiles and traces cost the process while they run and show its
// command line and code; opening /metrics to a scraper on the network
// (0.0.0.0:9091) should not open them too.
func ProfilingByDefault(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
