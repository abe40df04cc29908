package grpcserver

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// CheckFunc reports whether a dependency is usable: nil means healthy. It
// must return promptly once ctx is done; Readiness runs it with a timeout.
type CheckFunc func(ctx context.Context) error

// Check is one named readiness check, such as a database ping, the event-bus
// link or a consumer's subscription.
type Check struct {
	// Name identifies the check in logs ("database", "broker", ...).
	Name string
	// Func evaluates the check.
	Func CheckFunc
	// Services are the health service names this check gates: each of them
	// is SERVING only while every check gating it passes. Empty means the
	// overall status ("") and every service registered on the server. A
	// name need not belong to a registered service, so a dependency can be
	// reported on its own name (e.g. "ordermesh.eventbus") without failing
	// the overall status.
	Services []string
}

// Readiness drives a grpc health server from named checks. Every interval it
// runs all checks concurrently, each with its own timeout, and sets each
// managed service name SERVING when all checks gating it pass and
// NOT_SERVING otherwise, logging every change with the failing check's
// reason. After Shutdown every name stays NOT_SERVING.
//
// Readiness is safe for concurrent use; Run must be called at most once.
type Readiness struct {
	log      *slog.Logger
	hs       *health.Server
	checks   []Check
	interval time.Duration
	timeout  time.Duration

	mu       sync.Mutex
	names    []string                                              // every managed name, sorted, so "" first
	gates    map[string][]int                                      // name → indexes into checks
	current  map[string]healthpb.HealthCheckResponse_ServingStatus // last status set per name
	shutdown bool
}

// NewReadiness returns a Readiness that reports on hs. services are the
// names that checks with no Services of their own gate; the overall status
// "" is always among them. interval and timeout must be positive.
func NewReadiness(log *slog.Logger, hs *health.Server, services []string, checks []Check, interval, timeout time.Duration) (*Readiness, error) {
	if interval <= 0 {
		return nil, fmt.Errorf("new readiness: interval %v is not positive", interval)
	}
	if timeout <= 0 {
		return nil, fmt.Errorf("new readiness: check timeout %v is not positive", timeout)
	}
	r := &Readiness{
		log:      log,
		hs:       hs,
		checks:   slices.Clone(checks),
		interval: interval,
		timeout:  timeout,
		gates:    make(map[string][]int),
		current:  make(map[string]healthpb.HealthCheckResponse_ServingStatus),
	}
	defaults := append([]string{""}, services...)
	for _, name := range defaults {
		r.gates[name] = nil
	}
	for i, c := range r.checks {
		if c.Func == nil {
			return nil, fmt.Errorf("new readiness: check %q has no func", c.Name)
		}
		gated := c.Services
		if len(gated) == 0 {
			gated = defaults
		}
		for _, name := range gated {
			if !slices.Contains(r.gates[name], i) {
				r.gates[name] = append(r.gates[name], i)
			}
		}
	}
	for name := range r.gates {
		r.names = append(r.names, name)
	}
	slices.Sort(r.names)
	// Nothing is known before the first evaluation, so every name starts
	// NOT_SERVING rather than the health server's default SERVING for "".
	for _, name := range r.names {
		r.current[name] = healthpb.HealthCheckResponse_NOT_SERVING
		hs.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	return r, nil
}

// Names returns the managed health service names, sorted.
func (r *Readiness) Names() []string {
	return slices.Clone(r.names)
}

// Run evaluates the checks at once and then every interval until ctx is
// done, and returns nil. Evaluations after Shutdown change nothing.
func (r *Readiness) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		r.Evaluate(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Evaluate runs every check once, concurrently, and updates the health
// server. It does nothing after Shutdown.
func (r *Readiness) Evaluate(ctx context.Context) {
	errs := make([]error, len(r.checks))
	var wg sync.WaitGroup
	for i, c := range r.checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, r.timeout)
			defer cancel()
			errs[i] = c.Func(cctx)
		})
	}
	wg.Wait()
	if ctx.Err() != nil {
		// Checks cut short by shutdown say nothing about the dependencies.
		return
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutdown {
		return
	}
	// The overall status is set last, so a client that sees it change can
	// rely on every per-service status having changed already.
	order := append(slices.Clone(r.names[1:]), r.names[0])
	for _, name := range order {
		next := healthpb.HealthCheckResponse_SERVING
		var reason []any
		for _, i := range r.gates[name] {
			if errs[i] != nil {
				next = healthpb.HealthCheckResponse_NOT_SERVING
				reason = []any{slog.String("check", r.checks[i].Name), slog.Any("error", errs[i])}
				break
			}
		}
		if r.current[name] == next {
			continue
		}
		attrs := append([]any{slog.String("health_service", displayName(name)), slog.String("status", next.String())}, reason...)
		if next == healthpb.HealthCheckResponse_SERVING {
			r.log.InfoContext(ctx, "health status changed", attrs...)
		} else {
			r.log.WarnContext(ctx, "health status changed", attrs...)
		}
		r.current[name] = next
		r.hs.SetServingStatus(name, next)
	}
}

// Shutdown sets every managed name NOT_SERVING and shuts the health server
// down, so no later evaluation or SetServingStatus call can report SERVING
// again. It is idempotent.
func (r *Readiness) Shutdown(ctx context.Context) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shutdown {
		return
	}
	r.shutdown = true
	for _, name := range r.names {
		r.current[name] = healthpb.HealthCheckResponse_NOT_SERVING
		r.hs.SetServingStatus(name, healthpb.HealthCheckResponse_NOT_SERVING)
	}
	r.hs.Shutdown()
	r.log.InfoContext(ctx, "health status changed", slog.String("health_service", displayName("")), slog.String("status", "NOT_SERVING"), slog.String("reason", "shutting down"))
}

// displayName names the overall status readably in logs.
func displayName(service string) string {
	if service == "" {
		return "(overall)"
	}
	return service
}

// healthService is the health server as registered on the grpc server. Its
// Watch streams end once they have told the client NOT_SERVING after
// shutdown began, so open watches do not hold up GracefulStop until its
// timeout.
type healthService struct {
	*health.Server
	draining <-chan struct{}
}

// watchDrainGrace bounds how long a Watch stream may take to deliver the
// final NOT_SERVING once shutdown began.
const watchDrainGrace = time.Second

// Watch implements grpc.health.v1.Health/Watch.
func (h healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	ctx, cancel := context.WithCancel(stream.Context())
	defer cancel()
	ws := &drainingWatch{Health_WatchServer: stream, ctx: ctx, sent: make(chan struct{}, 1)}
	ws.last.Store(-1)

	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case <-done:
			return
		case <-h.draining:
		}
		grace := time.NewTimer(watchDrainGrace)
		defer grace.Stop()
		for {
			if st := ws.last.Load(); st >= 0 && healthpb.HealthCheckResponse_ServingStatus(st) != healthpb.HealthCheckResponse_SERVING {
				cancel()
				return
			}
			select {
			case <-done:
				return
			case <-ws.sent:
			case <-grace.C:
				cancel()
				return
			}
		}
	})
	err := h.Server.Watch(req, ws)
	close(done)
	wg.Wait()
	return err
}

// drainingWatch is a Watch stream whose context ends at shutdown and which
// remembers the last status it sent.
type drainingWatch struct {
	healthpb.Health_WatchServer
	ctx  context.Context
	last atomic.Int32
	sent chan struct{}
}

func (w *drainingWatch) Context() context.Context { return w.ctx }

func (w *drainingWatch) Send(resp *healthpb.HealthCheckResponse) error {
	err := w.Health_WatchServer.Send(resp)
	if err == nil {
		w.last.Store(int32(resp.GetStatus()))
		select {
		case w.sent <- struct{}{}:
		default:
		}
	}
	return err
}
