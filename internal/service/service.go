// Package service runs an ordermesh service process: the parts every
// service has, wired the same way and shut down in the same order, so a
// service's main only names what is its own (schema migrations, gRPC API,
// event handlers).
//
// A service gets:
//   - a PostgreSQL pool on its own schema, migrated with its migrations plus
//     the outbox and inbox tables;
//   - an event-bus Publisher feeding an outbox Relay, and a Subscriber whose
//     handlers run through the inbox Runner (effectively-once);
//   - a gRPC server with health (database and broker checks), reflection
//     and the interceptors of internal/grpcserver.
//
// Shutdown (when ctx ends) runs in this order: health NOT_SERVING and gRPC
// graceful stop, consumers stop and in-flight deliveries finish and settle,
// the relay flushes what those deliveries wrote to the outbox, then the
// broker connection and the database pool close.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/ctxsleep"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/grpcserver"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/telemetry"
)

// BrokerHealthName is the health service name under which every service
// reports its broker link.
const BrokerHealthName = "ordermesh.eventbus"

// WorkerMemoryLimit is the workers' (inventory, payment, notification)
// default Spec.MemoryLimit. Under the end-to-end benchmark about 20 MiB of
// a worker's resident set is the binary's code and read-only data, which
// no limit governs (see internal/buildflags for what keeps it small), and
// its live heap is 4 to 6 MiB. The limit counts everything the runtime has
// mapped, not all of it resident (collector metadata, the heap profile's
// hash table), and with this the workers' peak resident sets stayed near
// 37 MiB. A lower limit makes the collector run more often: at
// 18 MiB the collector's mark workers took 22 to 36 % of the workers' CPU
// while they worked off a backlog, at 22 MiB 6 to 10 % (docs/benchmarks.md).
const WorkerMemoryLimit config.Bytes = 22 << 20

// Config is the configuration every service reads from the environment.
type Config struct {
	GRPCAddr string
	// Admin is the admin endpoint: /metrics and, on a loopback address
	// unless ORDERMESH_PPROF says otherwise, /debug/pprof/.
	Admin           telemetry.Admin
	DatabaseURL     string
	DatabaseSchema  string
	AMQPURL         string
	TopologyPrefix  string
	Prefetch        int
	Concurrency     int
	RetryDelays     []time.Duration
	RelayInterval   time.Duration
	InboxRetention  time.Duration
	ShutdownTimeout time.Duration
	// HandlerTimeout bounds one event handler's run (a batch's
	// transaction, with what it calls). A drain waits for the running
	// handlers, so it is at most ShutdownTimeout.
	HandlerTimeout time.Duration
	// DrainDelay is how long the gRPC server keeps serving after it
	// reported NOT_SERVING at shutdown, before it stops taking new calls.
	DrainDelay time.Duration
	LogLevel   slog.Level
	// MemoryLimit is the soft limit on the Go runtime's memory that Run
	// sets for the process, raised while the live heap needs more (see
	// guardMemoryLimit); 0 sets none.
	MemoryLimit config.Bytes
	// GCPercent is the collector's GOGC that Run sets: spec.GCPercent
	// when the environment sets no GOGC, else 0, which leaves the
	// runtime's (the environment's GOGC, or 100).
	GCPercent int
}

// ReadConfig reads the common variables for the service spec describes,
// with its defaults (addresses, memory limit); problems are recorded on
// env. ORDERMESH_ADMIN_ADDR=off disables the admin endpoint.
//
// The memory limit is ORDERMESH_MEMORY_LIMIT, else spec.MemoryLimit; "off"
// sets none. When GOMEMLIMIT is set the service sets none and the runtime
// applies GOMEMLIMIT as it stands.
func ReadConfig(env *config.Env, spec Spec) Config {
	cfg := Config{
		GRPCAddr:        env.Addr("ORDERMESH_GRPC_ADDR", spec.GRPCAddr),
		DatabaseURL:     env.URL("ORDERMESH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable", "postgres", "postgresql"),
		DatabaseSchema:  env.String("ORDERMESH_DATABASE_SCHEMA", spec.Name),
		AMQPURL:         env.URL("ORDERMESH_AMQP_URL", eventbus.DefaultURL, "amqp", "amqps"),
		TopologyPrefix:  env.String("ORDERMESH_TOPOLOGY_PREFIX", ""),
		Prefetch:        env.Int("ORDERMESH_PREFETCH", 200),
		Concurrency:     env.Int("ORDERMESH_CONCURRENCY", 32),
		RelayInterval:   env.PositiveDuration("ORDERMESH_RELAY_POLL_INTERVAL", outbox.DefaultPollInterval),
		InboxRetention:  env.Duration("ORDERMESH_INBOX_RETENTION", 7*24*time.Hour),
		ShutdownTimeout: env.PositiveDuration("ORDERMESH_SHUTDOWN_TIMEOUT", 15*time.Second),
		HandlerTimeout:  env.PositiveDuration("ORDERMESH_HANDLER_TIMEOUT", 15*time.Second),
		DrainDelay:      env.Duration("ORDERMESH_DRAIN_DELAY", 0),
	}
	if cfg.HandlerTimeout > cfg.ShutdownTimeout {
		// A drain waits for running handlers: a longer bound would let a
		// stop outlast what ORDERMESH_SHUTDOWN_TIMEOUT promises.
		env.Fail("ORDERMESH_HANDLER_TIMEOUT", fmt.Errorf("%v is longer than ORDERMESH_SHUTDOWN_TIMEOUT (%v), which a drain waits for running handlers", cfg.HandlerTimeout, cfg.ShutdownTimeout))
	}
	if cfg.DrainDelay < 0 {
		env.Fail("ORDERMESH_DRAIN_DELAY", fmt.Errorf("must be zero or more, got %v", cfg.DrainDelay))
		cfg.DrainDelay = 0
	}
	cfg.Admin = telemetry.ReadAdmin(env, spec.AdminAddr)
	if env.String("GOGC", "") == "" {
		cfg.GCPercent = spec.GCPercent
	}
	if env.String("GOMEMLIMIT", "") == "" {
		if v := strings.TrimSpace(env.String("ORDERMESH_MEMORY_LIMIT", "")); v != "off" {
			// -1: invalid, which Bytes reports; then the default holds.
			switch cfg.MemoryLimit = env.Bytes("ORDERMESH_MEMORY_LIMIT", -1); {
			case v == "" || cfg.MemoryLimit < 0:
				cfg.MemoryLimit = spec.MemoryLimit
			case cfg.MemoryLimit == 0:
				env.Fail("ORDERMESH_MEMORY_LIMIT", errors.New("must be positive, or off"))
			}
		}
	}
	for _, d := range strings.Split(env.String("ORDERMESH_RETRY_DELAYS", "1s,10s,60s"), ",") {
		v, err := time.ParseDuration(strings.TrimSpace(d))
		if err != nil || v < time.Millisecond {
			// A retry queue's TTL is whole milliseconds.
			env.Fail("ORDERMESH_RETRY_DELAYS", fmt.Errorf("%q is not a duration of 1ms or more (want e.g. 1s,10s,60s)", d))
			continue
		}
		if n := len(cfg.RetryDelays); n > 0 && v < cfg.RetryDelays[n-1] {
			// Outage retries stay at the last delay, which must be the
			// longest.
			env.Fail("ORDERMESH_RETRY_DELAYS", fmt.Errorf("%v comes after %v: the delays must not get shorter (want e.g. 1s,10s,60s)", v, cfg.RetryDelays[n-1]))
		}
		cfg.RetryDelays = append(cfg.RetryDelays, v)
	}
	level, err := telemetry.ParseLevel(env.String("ORDERMESH_LOG_LEVEL", "info"))
	if err != nil {
		env.Fail("ORDERMESH_LOG_LEVEL", err)
	}
	cfg.LogLevel = level
	for name, v := range map[string]int{"ORDERMESH_PREFETCH": cfg.Prefetch, "ORDERMESH_CONCURRENCY": cfg.Concurrency} {
		if v <= 0 {
			env.Fail(name, errors.New("must be positive"))
		}
	}
	if cfg.Prefetch > 65535 { // AMQP's prefetch count is 16 bits
		env.Fail("ORDERMESH_PREFETCH", fmt.Errorf("must be at most 65535, got %d", cfg.Prefetch))
	}
	if s := cfg.DatabaseSchema; s != strings.TrimSpace(s) || s == "" || len(s) > 63 || strings.ContainsRune(s, 0) {
		// Spaces around it would name another, empty schema: an
		// inventory with no stock, say.
		env.Fail("ORDERMESH_DATABASE_SCHEMA", fmt.Errorf("%q is not a schema name (1 to 63 bytes, no spaces around it)", s))
	} else if strings.HasPrefix(s, "pg_") {
		env.Fail("ORDERMESH_DATABASE_SCHEMA", fmt.Errorf("%q: names starting with pg_ are PostgreSQL's own", s))
	}
	if p := cfg.TopologyPrefix; p != strings.TrimSpace(p) || len(p) > 100 || strings.IndexFunc(p, func(r rune) bool { return r < 0x20 || r == 0x7f }) >= 0 {
		env.Fail("ORDERMESH_TOPOLOGY_PREFIX", fmt.Errorf("%q is not a usable prefix (at most 100 bytes, no spaces around it, no control characters)", p))
	}
	if cfg.InboxRetention < time.Hour {
		env.Fail("ORDERMESH_INBOX_RETENTION", errors.New("must be at least 1h: it must outlast every redelivery and retry"))
	}
	if err := eventbus.CheckURL(cfg.AMQPURL); err != nil {
		env.Fail("ORDERMESH_AMQP_URL", err)
	}
	if cfg.DatabaseSchema == "" {
		env.Fail("ORDERMESH_DATABASE_SCHEMA", errors.New("must not be empty"))
	}
	return cfg
}

// Spec describes one service.
type Spec struct {
	// Name is the service's name: its queue, its events' source (app_id)
	// and its default schema.
	Name string
	// GRPCAddr and AdminAddr are the default listen addresses.
	GRPCAddr, AdminAddr string
	// ReadConfig, if set, reads the service's own variables from env
	// alongside the common ones, so every problem is reported at once.
	ReadConfig func(env *config.Env)
	// Migrations are the service's own schema migrations; the outbox and
	// inbox tables are added.
	Migrations []postgres.Source
	// BrokerGatesServing makes a lost broker link (or an unsubscribed
	// consumer) turn the whole service NOT_SERVING, as workers need. When
	// false (the order service, which keeps taking orders into its outbox
	// while the broker is away) the link is reported only under
	// BrokerHealthName.
	BrokerGatesServing bool
	// MemoryLimit is the service's default soft limit on the Go runtime's
	// memory (heap, stacks, runtime metadata; not the binary's code), zero
	// for none; see ReadConfig for what overrides it. Near the limit the
	// garbage collector runs more often to stay below it, so it costs CPU
	// only when memory is near it. A live heap that outgrows it raises it:
	// the collector keeps at least a quarter of the live heap to allocate
	// into, as with GOGC=25, and the service logs a warning.
	MemoryLimit config.Bytes
	// GCPercent, when positive, is the service's GOGC unless the
	// environment sets GOGC: for a service whose live heap is small and
	// whose allocations are many, so that at the runtime's 100 the
	// collector runs often for little memory saved.
	GCPercent int
	// BatchLanes, when positive, lets concurrent deliveries share
	// transactions in that many parallel lanes keyed by order (see
	// inbox.WithBatching): for services whose handlers do only SQL. Use
	// one lane when handlers of different orders lock the same rows.
	BatchLanes int
	// StreamWorkers, when positive, is how many goroutines the gRPC
	// server keeps for serving calls, rather than starting one per call:
	// for services whose API is busy. A fresh goroutine's stack starts
	// small and is copied as it grows (protovalidate's checks and the
	// handlers grow it on every call); a worker's stack stays grown.
	// Calls beyond that many at once get a goroutine of their own, as
	// without workers.
	StreamWorkers int
	// Setup registers the service's gRPC services and event handlers. It
	// may return tasks to run beside the service until ctx ends.
	Setup func(ctx context.Context, s *Service) ([]Task, error)
}

// Task is a background job that runs until ctx ends.
type Task func(ctx context.Context) error

// Service is what Setup gets to register its parts on.
type Service struct {
	Name       string
	Log        *slog.Logger
	Config     Config
	Pool       *pgxpool.Pool
	GRPC       *grpcserver.Server
	Subscriber *eventbus.Subscriber
	// Inbox wakes Relay after each transaction that processed a delivery.
	Inbox *inbox.Runner
	// Relay publishes the outbox. Code that commits outbox rows outside
	// Inbox calls Relay.Wake after the commit; otherwise the rows wait for
	// the relay's next poll (ORDERMESH_RELAY_POLL_INTERVAL).
	Relay *outbox.Relay
}

// NewBatchRunner returns a runner that hands the deliveries of each
// inbox transaction to h at once (see inbox.BatchRunner), as many as the
// service handles concurrently (ORDERMESH_CONCURRENCY), each transaction
// bounded by the handler timeout (ORDERMESH_HANDLER_TIMEOUT).
func (s *Service) NewBatchRunner(h inbox.BatchHandler) *inbox.BatchRunner {
	return inbox.NewBatchRunner(s.Inbox, h, s.Config.Concurrency, s.Config.HandlerTimeout)
}

// Main reads the configuration from getenv, logs to stdout and runs the
// service until ctx ends: the whole of a service binary's run function.
func Main(ctx context.Context, getenv func(string) string, stdout io.Writer, ready chan<- net.Addr, spec Spec) error {
	env := config.NewEnv(getenv)
	cfg := ReadConfig(env, spec)
	if spec.ReadConfig != nil {
		spec.ReadConfig(env)
	}
	if err := env.Err(); err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return Run(ctx, spec, cfg, telemetry.NewLogger(stdout, spec.Name, cfg.LogLevel), ready)
}

// Run runs the service until ctx ends, then shuts it down gracefully. If
// ready is not nil it receives the gRPC listener's address once serving.
// Ended while it was starting (a SIGTERM during its migrations, say), it
// stops there and returns nil, as a stop asked for is no failure.
func Run(ctx context.Context, spec Spec, cfg Config, log *slog.Logger, ready chan<- net.Addr) error {
	err := run(ctx, spec, cfg, log, ready)
	if err != nil && ctx.Err() != nil && errors.Is(err, context.Canceled) {
		log.InfoContext(ctx, "stopped while starting", slog.Any("error", err))
		return nil
	}
	return err
}

func run(ctx context.Context, spec Spec, cfg Config, log *slog.Logger, ready chan<- net.Addr) error {
	if cfg.HandlerTimeout <= 0 { // a Config built in code, not by ReadConfig
		cfg.HandlerTimeout = cfg.ShutdownTimeout
	}
	log.InfoContext(ctx, "starting", slog.Any("config", config.LogValue(cfg)))

	// Memory: the limit is the process's, so restore the previous one for
	// callers that run a service inside a larger process (tests).
	if cfg.MemoryLimit > 0 {
		prev := debug.SetMemoryLimit(int64(cfg.MemoryLimit))
		defer debug.SetMemoryLimit(prev)
	}
	if cfg.GCPercent > 0 {
		prev := debug.SetGCPercent(cfg.GCPercent)
		defer debug.SetGCPercent(prev)
	}

	// Database: the service's schema with its tables, the outbox and the
	// inbox.
	// Transactions wait for handlers' calls (up to the handler timeout)
	// and for a relay's confirms (up to its publish timeout): twice the
	// longer of those. (At most a day: PostgreSQL takes no more than 2³¹
	// ms, about 24 days.)
	idle := min(2*max(cfg.HandlerTimeout, outbox.DefaultPublishTimeout), 24*time.Hour)
	pool, err := postgres.Open(ctx, cfg.DatabaseURL, cfg.DatabaseSchema, postgres.WithApplicationName("ordermesh-"+spec.Name),
		postgres.WithIdleInTransactionTimeout(idle))
	if err != nil {
		return fmt.Errorf("database at %s: %w", config.RedactURL(cfg.DatabaseURL), err)
	}
	defer pool.Close()
	migrations := append(append([]postgres.Source{}, spec.Migrations...), outbox.Migrations, inbox.Migrations)
	if err := postgres.MigrateOwned(ctx, pool, cfg.DatabaseSchema, spec.Name, migrations...); err != nil {
		return fmt.Errorf("migrate schema %s: %w", cfg.DatabaseSchema, err)
	}

	// Metrics, served with pprof on the admin address.
	m := newMetrics()
	adminLis, err := cfg.Admin.Listen()
	if err != nil {
		return err
	}
	if adminLis != nil {
		defer adminLis.Close()
	}

	// Event bus: a publisher for the outbox relay, a subscriber for the
	// handlers.
	busCfg := eventbus.Config{
		Metrics: m.bus(),
		// A handler may run this long; at shutdown the consumer waits for
		// the handlers in flight, so this bounds that wait too.
		HandlerTimeout: cfg.HandlerTimeout,
		URL:            cfg.AMQPURL,
		Prefix:         cfg.TopologyPrefix,
		Service:        spec.Name,
		Prefetch:       cfg.Prefetch,
		Concurrency:    cfg.Concurrency,
		RetryDelays:    cfg.RetryDelays,
	}
	publisher, err := eventbus.NewPublisher(busCfg, log)
	if err != nil {
		return fmt.Errorf("event bus publisher: %w", err)
	}
	defer publisher.Close()
	subscriber, err := eventbus.NewSubscriber(busCfg, log)
	if err != nil {
		return fmt.Errorf("event bus subscriber: %w", err)
	}
	relay := outbox.NewRelay(pool, publisher, outbox.Config{
		PollInterval: cfg.RelayInterval,
		Logger:       log,
		Metrics:      m.outbox(),
	})
	m.observeLinks(log, pool, publisher, subscriber)

	// The database's check has a connection of its own: one queued
	// behind a busy pool would read as the database down.
	prober := postgres.NewProber(pool)
	defer prober.Close()

	// gRPC server with health: the database gates everything; the broker
	// link gates everything only for workers.
	brokerLink := func(context.Context) error {
		if st := publisher.State(); !st.Up {
			return fmt.Errorf("publisher link down: %s", st.Reason)
		}
		if !subscriber.Subscribed() {
			return fmt.Errorf("consumer not subscribed: %s", subscriber.State().Reason)
		}
		return nil
	}
	checks := []grpcserver.Option{
		grpcserver.WithShutdownTimeout(cfg.ShutdownTimeout),
		grpcserver.WithDrainDelay(cfg.DrainDelay),
		grpcserver.WithCheck(grpcserver.Check{Name: "database", Func: prober.Ping}),
		// The link is always reported under its own name.
		grpcserver.WithCheck(grpcserver.Check{Name: "broker", Func: brokerLink, Services: []string{BrokerHealthName}}),
	}
	if spec.BrokerGatesServing {
		checks = append(checks, grpcserver.WithCheck(grpcserver.Check{Name: "broker", Func: brokerLink}))
	}
	if spec.StreamWorkers > 0 {
		checks = append(checks, grpcserver.WithServerOptions(grpc.NumStreamWorkers(uint32(spec.StreamWorkers))))
	}
	srv, err := grpcserver.New(log, checks...)
	if err != nil {
		return err
	}

	svc := &Service{
		Name:       spec.Name,
		Log:        log,
		Config:     cfg,
		Pool:       pool,
		GRPC:       srv,
		Subscriber: subscriber,
		Inbox:      inbox.NewRunner(pool, spec.Name, m.inbox(), append(inboxOptions(spec, cfg), inbox.OnCommit(relay.Wake), inbox.WithProbe(prober.Ping))...),
		Relay:      relay,
	}
	tasks, err := spec.Setup(ctx, svc)
	if err != nil {
		return fmt.Errorf("set up %s: %w", spec.Name, err)
	}

	lis, err := net.Listen("tcp", cfg.GRPCAddr)
	if err != nil {
		return fmt.Errorf("listen on %s (ORDERMESH_GRPC_ADDR): %w", cfg.GRPCAddr, err)
	}
	if ready != nil {
		ready <- lis.Addr()
	}

	// Run. The relay outlives the consumers so that it can flush the
	// events their last deliveries wrote.
	relayCtx, stopRelay := context.WithCancel(context.WithoutCancel(ctx))
	defer stopRelay()
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()

	// The admin endpoint serves until the service has stopped, the drain
	// delay, the consumers' stop and the outbox's flush included, so that
	// its metrics show the shutdown; its failure stops the service.
	runCtx, failRun := context.WithCancelCause(ctx)
	defer failRun(nil)
	stopAdmin := telemetry.StartAdmin(ctx, log, adminLis, m.registry, cfg.Admin.Profiling, failRun)
	defer func() { _ = stopAdmin() }()

	g, gctx := errgroup.WithContext(runCtx)
	g.Go(func() error { return srv.Serve(gctx, lis) })
	g.Go(func() error { return subscriber.Run(gctx) })
	if cfg.InboxRetention > 0 {
		g.Go(func() error { return pruneInbox(gctx, log, pool, cfg.InboxRetention) })
	}
	if cfg.MemoryLimit > 0 {
		g.Go(func() error { return guardMemoryLimit(gctx, log, cfg.MemoryLimit, memoryGuardInterval) })
	}
	for _, t := range tasks {
		g.Go(func() error { return t(gctx) })
	}
	runErr := g.Wait()

	// Stop the running relay (a batch it is publishing is rolled back
	// unless already confirmed), then flush the outbox on this goroutine,
	// bounded by the shutdown timeout; whatever is left is published after
	// the next start. Draining after the relay stopped means no row is
	// skipped as locked by it.
	stopRelay()
	if err := <-relayDone; err != nil && runErr == nil {
		runErr = err
	}
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
	if err := flush(flushCtx, publisher, relay); err != nil {
		log.WarnContext(ctx, "outbox not flushed before shutdown; the rest is published after the next start", slog.Any("error", err))
	}
	cancel()
	if err := stopAdmin(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return runErr
	}
	log.InfoContext(ctx, "stopped")
	return nil
}

// flush publishes what the outbox holds (relay.Drain) until ctx ends,
// waiting for the broker link when a publish finds it down: a broker
// restarting with the deploy that stops the service would otherwise fail
// the flush at once, with its time left. An empty outbox waits for
// nothing.
func flush(ctx context.Context, publisher *eventbus.Publisher, relay *outbox.Relay) error {
	for {
		err := relay.Drain(ctx)
		if err == nil || !errors.Is(err, eventbus.ErrLinkDown) {
			return err
		}
		// Down, or up but blocked by a broker alarm.
		if !ctxsleep.Sleep(ctx, flushRetryDelay) {
			return err
		}
		if err := publisher.WaitUp(ctx); err != nil {
			return err
		}
	}
}

// flushRetryDelay is the pause between flushes the broker link failed.
const flushRetryDelay = 250 * time.Millisecond

// pruneInbox deletes processed-event records older than retention, once at
// start and then hourly, so the inbox does not grow without bound. A
// redelivery older than the retention would be processed again, so the
// retention must outlast the retry ladder and any dead-letter replay.
func pruneInbox(ctx context.Context, log *slog.Logger, pool *pgxpool.Pool, retention time.Duration) error {
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		n, err := inbox.Prune(ctx, pool, retention)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			log.WarnContext(ctx, "prune inbox", slog.Any("error", err))
		case n > 0:
			log.InfoContext(ctx, "pruned inbox", slog.Int64("rows", n), slog.Duration("retention", retention))
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// inboxOptions turns on batching for services that ask for it: as many
// deliveries as run at once may share a transaction.
func inboxOptions(spec Spec, cfg Config) []inbox.Option {
	if spec.BatchLanes <= 0 {
		return nil
	}
	return []inbox.Option{inbox.WithBatching(cfg.Concurrency, spec.BatchLanes, cfg.HandlerTimeout)}
}
