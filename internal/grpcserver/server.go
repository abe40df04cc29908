// Package grpcserver is the gRPC server bootstrap every ordermesh binary
// shares: an interceptor chain (structured logging, panic recovery,
// protovalidate request validation), grpc.health.v1 driven by readiness
// checks, server reflection, keepalive settings for long-lived streams, and
// Serve, which stops gracefully when its context ends.
//
// A binary builds a Server with New, registers its services on it (Server
// is a grpc.ServiceRegistrar), and calls Serve:
//
//	srv, err := grpcserver.New(log,
//		grpcserver.WithCheck(grpcserver.Check{Name: "database", Func: pool.Ping}),
//		grpcserver.WithCheck(grpcserver.Check{Name: "broker", Func: bus.Healthy,
//			Services: []string{"ordermesh.eventbus"}}),
//	)
//	if err != nil { ... }
//	orderv1.RegisterOrderServiceServer(srv, api)
//	err = srv.Serve(ctx, lis)
//
// Handlers turn application errors into statuses with MapError.
package grpcserver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
)

// Defaults for the Options.
const (
	DefaultHealthInterval  = time.Second
	DefaultCheckTimeout    = 2 * time.Second
	DefaultShutdownTimeout = 10 * time.Second
)

// Server is a gRPC server with ordermesh's interceptors, health service and
// reflection. Register services before calling Serve; Serve may be called
// once.
type Server struct {
	log    *slog.Logger
	opts   options
	grpc   *grpc.Server
	health *health.Server

	served    atomic.Bool
	draining  chan struct{}
	drainOnce sync.Once
}

var _ grpc.ServiceRegistrar = (*Server)(nil)

// Option configures a Server.
type Option func(*options)

type options struct {
	checks          []Check
	healthInterval  time.Duration
	checkTimeout    time.Duration
	shutdownTimeout time.Duration
	drainDelay      time.Duration
	validator       protovalidate.Validator
	unary           []grpc.UnaryServerInterceptor
	stream          []grpc.StreamServerInterceptor
	serverOpts      []grpc.ServerOption
}

// WithCheck adds a readiness check; see Check for which health names it
// gates.
func WithCheck(c Check) Option {
	return func(o *options) { o.checks = append(o.checks, c) }
}

// WithHealthInterval sets how often the readiness checks run (default
// DefaultHealthInterval).
func WithHealthInterval(d time.Duration) Option {
	return func(o *options) { o.healthInterval = d }
}

// WithCheckTimeout sets how long one run of one check may take before it
// counts as failed (default DefaultCheckTimeout).
func WithCheckTimeout(d time.Duration) Option {
	return func(o *options) { o.checkTimeout = d }
}

// WithShutdownTimeout sets how long Serve waits for in-flight RPCs after its
// context ends before it closes the remaining connections (default
// DefaultShutdownTimeout).
func WithShutdownTimeout(d time.Duration) Option {
	return func(o *options) { o.shutdownTimeout = d }
}

// WithDrainDelay sets how long Serve keeps serving after it has reported
// NOT_SERVING and before it stops taking new RPCs (default 0), so probes and
// load balancers can notice and route new work elsewhere first.
func WithDrainDelay(d time.Duration) Option {
	return func(o *options) { o.drainDelay = d }
}

// WithValidator sets the protovalidate validator (default
// protovalidate.GlobalValidator).
func WithValidator(v protovalidate.Validator) Option {
	return func(o *options) { o.validator = v }
}

// WithUnaryInterceptors appends interceptors that run after validation,
// right before the handler.
func WithUnaryInterceptors(i ...grpc.UnaryServerInterceptor) Option {
	return func(o *options) { o.unary = append(o.unary, i...) }
}

// WithStreamInterceptors appends interceptors that run after validation,
// right before the handler.
func WithStreamInterceptors(i ...grpc.StreamServerInterceptor) Option {
	return func(o *options) { o.stream = append(o.stream, i...) }
}

// WithServerOptions appends grpc.ServerOptions; they are applied after the
// defaults, so a later grpc.KeepaliveParams, for example, replaces ours.
// Interceptors must be added with WithUnaryInterceptors and
// WithStreamInterceptors instead.
func WithServerOptions(opts ...grpc.ServerOption) Option {
	return func(o *options) { o.serverOpts = append(o.serverOpts, opts...) }
}

// keepaliveParams pings a connection that has been quiet for 30 s and drops
// it when the ping is not answered within 10 s, so a WatchOrder stream to a
// vanished client does not linger, and keeps idle NAT and proxy mappings of
// live streams alive. Connections are never aged out, because that would
// cut long-lived streams.
var keepaliveParams = keepalive.ServerParameters{
	Time:    30 * time.Second,
	Timeout: 10 * time.Second,
}

// keepalivePolicy lets clients ping every 10 s, also without an active
// stream, so clients that keep WatchOrder connections warm are not
// disconnected with ENHANCE_YOUR_CALM.
var keepalivePolicy = keepalive.EnforcementPolicy{
	MinTime:             10 * time.Second,
	PermitWithoutStream: true,
}

// New returns a Server logging to log. Its interceptor chain is, outermost
// first: logging (method, code and duration of every call; health checks at
// debug level), panic recovery (the panic and stack are logged, the client
// gets INTERNAL "internal error"), protovalidate validation of every request
// message (INVALID_ARGUMENT, see ValidationStatus; a request that did not
// decode gets INVALID_ARGUMENT there too), then any interceptors
// from the options. The health service and server reflection are
// registered.
func New(log *slog.Logger, opts ...Option) (*Server, error) {
	o := options{
		healthInterval:  DefaultHealthInterval,
		checkTimeout:    DefaultCheckTimeout,
		shutdownTimeout: DefaultShutdownTimeout,
		validator:       protovalidate.GlobalValidator,
	}
	for _, opt := range opts {
		opt(&o)
	}
	if err := o.validate(); err != nil {
		return nil, fmt.Errorf("new grpc server: %w", err)
	}

	calls := callLog{log: log}
	mark := newDecodeMark()
	recoveryOpt := recovery.WithRecoveryHandlerContext(recoverPanic(log))

	unary := append([]grpc.UnaryServerInterceptor{
		calls.unary,
		traceUnary,
		recovery.UnaryServerInterceptor(recoveryOpt),
		validateUnary(log, o.validator, mark),
	}, o.unary...)
	stream := append([]grpc.StreamServerInterceptor{
		calls.stream,
		traceStream,
		recovery.StreamServerInterceptor(recoveryOpt),
		validateStream(log, o.validator, mark),
	}, o.stream...)

	serverOpts := append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
		grpc.ForceServerCodecV2(newRequestCodec(mark)),
		grpc.KeepaliveParams(keepaliveParams),
		grpc.KeepaliveEnforcementPolicy(keepalivePolicy),
	}, o.serverOpts...)

	s := &Server{
		log:      log,
		opts:     o,
		grpc:     grpc.NewServer(serverOpts...),
		health:   health.NewServer(),
		draining: make(chan struct{}),
	}
	// Until Serve has evaluated the checks nothing is known.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.grpc, healthService{Server: s.health, draining: s.draining})
	reflection.Register(s.grpc)
	return s, nil
}

func (o *options) validate() error {
	var errs []error
	if o.healthInterval <= 0 {
		errs = append(errs, fmt.Errorf("health interval %v is not positive", o.healthInterval))
	}
	if o.checkTimeout <= 0 {
		errs = append(errs, fmt.Errorf("check timeout %v is not positive", o.checkTimeout))
	}
	if o.shutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("shutdown timeout %v is not positive", o.shutdownTimeout))
	}
	if o.drainDelay < 0 {
		errs = append(errs, fmt.Errorf("drain delay %v is negative", o.drainDelay))
	}
	if o.validator == nil {
		errs = append(errs, errors.New("validator is nil"))
	}
	for _, c := range o.checks {
		if c.Func == nil {
			errs = append(errs, fmt.Errorf("check %q has no func", c.Name))
		}
	}
	return errors.Join(errs...)
}

// RegisterService registers a service implementation; it implements
// grpc.ServiceRegistrar so generated Register…Server functions accept a
// Server. It must be called before Serve.
func (s *Server) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.grpc.RegisterService(desc, impl)
}

// GRPC returns the underlying grpc.Server.
func (s *Server) GRPC() *grpc.Server { return s.grpc }

// Health returns the health server. Names managed by the readiness checks
// are overwritten on every evaluation; other names may be set directly.
func (s *Server) Health() *health.Server { return s.health }

// Draining returns a channel that is closed when Serve starts shutting
// down, after the drain delay (or when Serve returns, whichever is first).
// Long-lived streaming handlers (WatchOrder) should end when it is
// closed, for example with UNAVAILABLE, so clients reconnect to another
// instance instead of holding up the graceful stop until its timeout; what
// those handlers need (WatchOrder's change notifications) should run until
// then.
func (s *Server) Draining() <-chan struct{} { return s.draining }

// Serve accepts connections on lis until ctx ends, then shuts down in
// order: every health name goes NOT_SERVING (for good), the server keeps
// serving for the drain delay, Draining is closed, and GracefulStop waits for in-flight RPCs for up to the shutdown timeout,
// after which remaining connections are closed. While serving, the readiness
// checks set the overall status, every registered service's status and the
// names the checks list. Serve closes lis, returns nil after a shutdown
// caused by ctx, and the listener's error otherwise.
func (s *Server) Serve(ctx context.Context, lis net.Listener) error {
	if !s.served.CompareAndSwap(false, true) {
		return errors.New("serve grpc: Serve called twice")
	}
	defer s.drainOnce.Do(func() { close(s.draining) })
	readiness, err := NewReadiness(s.log, s.health, s.serviceNames(), s.opts.checks, s.opts.healthInterval, s.opts.checkTimeout)
	if err != nil {
		return fmt.Errorf("serve grpc: %w", err)
	}

	// stopCtx ends when the caller's ctx does or the listener fails, so the
	// readiness loop and the stopper never outlive Serve.
	stopCtx, stop := context.WithCancel(ctx)
	defer stop()
	g, gctx := errgroup.WithContext(stopCtx)
	g.Go(func() error { return readiness.Run(gctx) })
	g.Go(func() error {
		defer stop()
		s.log.InfoContext(ctx, "grpc server listening", slog.String("addr", lis.Addr().String()))
		err := s.grpc.Serve(lis)
		if err != nil && !(errors.Is(err, grpc.ErrServerStopped) && ctx.Err() != nil) {
			return fmt.Errorf("serve grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		readiness.Shutdown(ctx)
		if s.opts.drainDelay > 0 {
			t := time.NewTimer(s.opts.drainDelay)
			<-t.C
		}
		s.drainOnce.Do(func() { close(s.draining) })
		s.gracefulStop(ctx)
		return nil
	})
	err = g.Wait()
	s.log.InfoContext(ctx, "grpc server stopped")
	return err
}

// gracefulStop stops the server, waiting up to the shutdown timeout for
// in-flight RPCs before it closes the remaining connections. Either way it
// returns once every handler has returned (GracefulStop waits for them,
// and Stop ends their contexts): a call cut off still finishes what it
// began, a transaction's commit, before the service's outbox flush.
func (s *Server) gracefulStop(ctx context.Context) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		s.grpc.GracefulStop()
	}()
	t := time.NewTimer(s.opts.shutdownTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.log.WarnContext(ctx, "graceful stop timed out; closing remaining connections",
			slog.Duration("timeout", s.opts.shutdownTimeout))
		s.grpc.Stop()
		<-done
	}
}

// serviceNames returns the registered application services, sorted; the
// health and reflection services report on the server, not on themselves.
func (s *Server) serviceNames() []string {
	var names []string
	for name := range s.grpc.GetServiceInfo() {
		switch name {
		case healthpb.Health_ServiceDesc.ServiceName,
			"grpc.reflection.v1.ServerReflection",
			"grpc.reflection.v1alpha.ServerReflection":
			continue
		}
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

// recoverPanic returns the recovery handler: it logs the panic with its
// stack and gives the client nothing but INTERNAL "internal error".
func recoverPanic(log *slog.Logger) recovery.RecoveryHandlerFuncContext {
	return func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in grpc handler",
			slog.String("method", methodFromContext(ctx)),
			slog.Any("panic", p),
			slog.String("stack", string(debug.Stack())))
		return status.Error(codes.Internal, internalMessage)
	}
}
