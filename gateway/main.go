// Command gateway serves ordermesh's REST API in front of its gRPC
// services: the routes of OrderService and InventoryService (from their
// google.api.http rules), the OpenAPI document at /openapi.json, and
// /healthz reflecting the order service's health.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"runtime/debug"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	_ "google.golang.org/grpc/health" // client-side health checking (dialUpstream)

	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/rest"
	"github.com/ordermesh/ordermesh/internal/shutdown"
	"github.com/ordermesh/ordermesh/internal/telemetry"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Getenv, os.Stdout, nil)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gateway:", err)
		os.Exit(1)
	}
}

// gcPercent is the gateway's GOGC unless the environment sets GOGC. Each
// REST request allocates about 18 KiB (HTTP/1.1, JSON both ways, the
// upstream gRPC call) on a live heap of about 1 MiB, so at the runtime's
// default of 100 the heap stays at its 4 MiB minimum and the collector
// ran every 100 requests or so, about a tenth of the gateway's CPU under
// the benchmark's CreateOrder load; 400 makes it four times rarer for
// about 12 MiB more peak RSS.
const gcPercent = 400

// defaultAdminAddr is where the gateway serves its metrics unless
// ORDERMESH_ADMIN_ADDR says otherwise ("off" for nowhere): loopback, next
// to the services' 9091 to 9094.
const defaultAdminAddr = "127.0.0.1:9095"

// Config is the gateway's configuration, read from the environment.
type Config struct {
	HTTPAddr        string
	OrderAddr       string
	InventoryAddr   string
	UpstreamTimeout time.Duration
	MaxBodyBytes    int
	BodyTimeout     time.Duration
	WriteTimeout    time.Duration
	ShutdownTimeout time.Duration
	// DrainDelay is how long the gateway goes on serving, /healthz
	// answering 503, once shutdown began.
	DrainDelay time.Duration
	// Admin is the admin endpoint: /metrics and, on a loopback address
	// unless ORDERMESH_PPROF says otherwise, /debug/pprof/.
	Admin    telemetry.Admin
	LogLevel slog.Level
	// GOGC is the collector's setting: the environment's GOGC, or
	// gcPercent.
	GOGC string
}

func loadConfig(getenv func(string) string) (Config, error) {
	env := config.NewEnv(getenv)
	cfg := Config{
		HTTPAddr:        env.Addr("ORDERMESH_HTTP_ADDR", ":8080"),
		OrderAddr:       env.Addr("ORDERMESH_ORDER_ADDR", "127.0.0.1:50051"),
		InventoryAddr:   env.Addr("ORDERMESH_INVENTORY_ADDR", "127.0.0.1:50052"),
		UpstreamTimeout: env.PositiveDuration("ORDERMESH_UPSTREAM_TIMEOUT", 10*time.Second),
		MaxBodyBytes:    env.Int("ORDERMESH_MAX_BODY_BYTES", 1<<20),
		BodyTimeout:     env.PositiveDuration("ORDERMESH_BODY_TIMEOUT", 30*time.Second),
		WriteTimeout:    env.PositiveDuration("ORDERMESH_WRITE_TIMEOUT", 30*time.Second),
		ShutdownTimeout: env.PositiveDuration("ORDERMESH_SHUTDOWN_TIMEOUT", 10*time.Second),
		DrainDelay:      env.Duration("ORDERMESH_DRAIN_DELAY", 0),
	}
	cfg.Admin = telemetry.ReadAdmin(env, defaultAdminAddr)
	level, err := telemetry.ParseLevel(env.String("ORDERMESH_LOG_LEVEL", "info"))
	if err != nil {
		env.Fail("ORDERMESH_LOG_LEVEL", err)
	}
	cfg.LogLevel = level
	cfg.GOGC = getenv("GOGC")
	if cfg.GOGC == "" {
		cfg.GOGC = strconv.Itoa(gcPercent)
	}
	if cfg.MaxBodyBytes <= 0 {
		env.Fail("ORDERMESH_MAX_BODY_BYTES", errors.New("must be positive"))
	}
	if cfg.DrainDelay < 0 {
		env.Fail("ORDERMESH_DRAIN_DELAY", fmt.Errorf("must be zero or more, got %v", cfg.DrainDelay))
	}

	if err := env.Err(); err != nil {
		return Config{}, fmt.Errorf("read config: %w", err)
	}
	return cfg, nil
}

// dialUpstream returns a client of the gRPC service at target. Calls go
// round-robin over every address the name resolves to (a headless
// Kubernetes Service, a DNS name with several records): gRPC's default,
// pick_first, would send all of them to one instance. With service set
// they go only to instances whose health (grpc.health.v1) under that name
// is SERVING, which each watches: an instance in its drain delay
// (ORDERMESH_DRAIN_DELAY), or without its database, gets none, and
// /healthz's check of the service asks one that serves. gRPC resolves the
// name again when a connection to one of them fails, not on a schedule,
// so an instance added later gets calls once that happens.
func dialUpstream(target, service string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	sc := map[string]any{"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}}}
	if service != "" {
		sc["healthCheckConfig"] = map[string]any{"serviceName": service}
	}
	cfg, err := json.Marshal(sc)
	if err != nil {
		return nil, fmt.Errorf("service config: %w", err)
	}
	return grpc.NewClient(target, append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(string(cfg)),
	}, opts...)...)
}

// run serves until ctx ends. When ready is not nil it receives the
// listener's address once the gateway accepts connections.
func run(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr) error {
	cfg, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	if getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	log := telemetry.NewLogger(stdout, "gateway", cfg.LogLevel)
	log.InfoContext(ctx, "starting", slog.Any("config", config.LogValue(cfg)))

	// Upstream connections: created lazily by gRPC, so the gateway starts
	// even while a service is still coming up (/healthz says so).
	orderConn, err := dialUpstream(cfg.OrderAddr, orderv1.OrderService_ServiceDesc.ServiceName)
	if err != nil {
		return fmt.Errorf("order service address: %w", err)
	}
	defer orderConn.Close()
	// Not by its health: the inventory service reports NOT_SERVING while
	// its broker link is down, when SetStock and GetStock, which need
	// only its database, still work.
	invConn, err := dialUpstream(cfg.InventoryAddr, "")
	if err != nil {
		return fmt.Errorf("inventory service address: %w", err)
	}
	defer invConn.Close()

	// Metrics: the requests', the Go runtime's and the process's, served
	// with pprof on the admin address.
	registry := prometheus.NewRegistry()
	registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	metrics, err := rest.NewMetrics(registry)
	if err != nil {
		return err
	}
	adminLis, err := cfg.Admin.Listen()
	if err != nil {
		return err
	}
	if adminLis != nil {
		defer adminLis.Close()
	}

	// HTTP server. Watch streams end when shutdown begins; other requests
	// are drained.
	streams, endStreams := context.WithCancel(context.WithoutCancel(ctx))
	defer endStreams()
	handler, err := rest.NewHandler(ctx, log, rest.Upstreams{Order: orderConn, Inventory: invConn}, rest.Options{
		MaxBodyBytes:    int64(cfg.MaxBodyBytes),
		BodyTimeout:     cfg.BodyTimeout,
		WriteTimeout:    cfg.WriteTimeout,
		UpstreamTimeout: cfg.UpstreamTimeout,
		Streams:         streams,
		Draining:        ctx.Done(),
		Metrics:         metrics,
	})
	if err != nil {
		return err
	}
	lis, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (ORDERMESH_HTTP_ADDR): %w", cfg.HTTPAddr, err)
	}
	// Headers must arrive within ReadHeaderTimeout and a body within
	// BodyTimeout, and a response, or a watch's message, must be taken
	// within WriteTimeout (the handler's, not the server's, which would
	// bound a watch's whole stream); an idle keep-alive connection is
	// closed after IdleTimeout.
	srv := &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 2 * time.Minute}
	srv.RegisterOnShutdown(endStreams)
	log.InfoContext(ctx, "serving REST", slog.String("addr", lis.Addr().String()))
	if ready != nil {
		ready <- lis.Addr()
	}

	// Serve until ctx ends, then drain: Shutdown stops accepting and waits
	// for in-flight requests up to the shutdown timeout.
	// The admin endpoint serves until the gateway has stopped, the drain
	// included; its failure stops the gateway.
	runCtx, failRun := context.WithCancelCause(ctx)
	defer failRun(nil)
	stopAdmin := telemetry.StartAdmin(ctx, log, adminLis, registry, cfg.Admin.Profiling, failRun)
	defer func() { _ = stopAdmin() }()
	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error {
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		if cfg.DrainDelay > 0 && ctx.Err() != nil {
			// /healthz answers 503 from now on; probes and load balancers
			// move new requests elsewhere while this one still serves.
			log.InfoContext(ctx, "draining", slog.Duration("delay", cfg.DrainDelay))
			time.Sleep(cfg.DrainDelay)
		}
		log.InfoContext(ctx, "shutting down")
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		if err := srv.Shutdown(sctx); err != nil {
			// As the services' gRPC servers do: the drain had its time;
			// what is still open is cut off.
			log.WarnContext(ctx, "drain timed out; closing remaining connections",
				slog.Duration("timeout", cfg.ShutdownTimeout), slog.Any("error", err))
			_ = srv.Close()
		}
		return nil
	})
	runErr := g.Wait()
	if err := stopAdmin(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return runErr
	}
	log.InfoContext(ctx, "stopped")
	return nil
}
