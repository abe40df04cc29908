// Package bench is ordermesh's benchmark harness (what `make bench` runs):
// in one invocation it measures each figure beside its raw ceiling on the
// same machine, because absolute numbers on a shared machine are noise.
//
//   - CreateOrder over gRPC at 8 and 50 closed-loop clients ÷ raw pgx
//     "insert order + outbox row, commit" at the same concurrency;
//   - REST through the gateway ÷ gRPC direct, same load;
//   - eventbus Publisher+Subscriber ÷ raw amqp091-go, confirms and acks;
//   - the outbox relay's lag (commit → consumer) at 1000 events/s, beside
//     publishing right after commit;
//   - end-to-end confirmed orders/s with every service running, and
//     create→confirmed latency at half that rate;
//   - peak RSS and CPU time of every process, and a CPU profile of each
//     service under the end-to-end load.
//
// Everything it creates (databases, schemas, exchanges, queues) is removed
// before it returns.
package bench

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/loadgen"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

// Options configure a benchmark run; zero durations and counts take the
// defaults documented on each field.
type Options struct {
	// Root is the module root the binaries are built from.
	Root string
	// AdminDatabaseURL reaches PostgreSQL; the benchmark creates and drops
	// its own databases from there.
	AdminDatabaseURL string
	AMQPURL          string
	// WorkDir holds the binaries and profiles; removed by the caller.
	WorkDir string
	// Log receives progress; Progress the load generator's live line.
	Log         io.Writer
	ProgressTTY bool

	// Trial is the length of each create trial (default 8s) and Rounds
	// how often each trial runs, interleaved (default 2); the best round
	// of each counts.
	Trial  time.Duration
	Rounds int
	// BusMessages per bus trial (default 20000).
	BusMessages int
	// E2EOrders placed for the end-to-end throughput (default 6000).
	E2EOrders int
	// HalfRateDuration is the open-loop latency run (default 30s).
	HalfRateDuration time.Duration
	// ProfileDuration is the CPU profile of each service under the
	// end-to-end load (default 10s; negative: none).
	ProfileDuration time.Duration
	// RelayRate is the events/s the relay phase commits (default
	// GoalRelayRate) and RelayDuration how long each of its runs lasts
	// (default 10s).
	RelayRate     float64
	RelayDuration time.Duration
	// Skip names phases not to run: "create", "bus", "relay", "e2e" (for
	// working on the harness; the report then lacks their figures).
	Skip map[string]bool
}

func (o *Options) defaults() {
	if o.Trial <= 0 {
		o.Trial = 8 * time.Second
	}
	if o.Rounds <= 0 {
		o.Rounds = 2
	}
	if o.BusMessages <= 0 {
		o.BusMessages = 20000
	}
	if o.E2EOrders <= 0 {
		o.E2EOrders = 6000
	}
	if o.HalfRateDuration <= 0 {
		o.HalfRateDuration = 30 * time.Second
	}
	if o.ProfileDuration == 0 {
		o.ProfileDuration = 10 * time.Second
	}
	if o.RelayRate <= 0 {
		o.RelayRate = GoalRelayRate
	}
	if o.RelayDuration <= 0 {
		o.RelayDuration = 10 * time.Second
	}
}

// drainTimeout bounds the wait for the end-to-end backlog to be worked
// off before the half-rate run.
const drainTimeout = 3 * time.Minute

// CreateConcurrencies are the closed-loop client counts of the create
// trials.
var CreateConcurrencies = []int{8, 50}

// Result holds every figure of a run; rates are per second.
type Result struct {
	Started  time.Time
	Finished time.Time
	// Rounds is how often each create trial ran (bus trials: one more).
	Rounds int

	// Create maps a concurrency to its trials.
	Create map[int]*CreateTrials
	// REST is CreateOrder through the gateway at the highest concurrency,
	// beside Create[that].GRPC.
	REST        []float64
	RESTSummary loadgen.Summary
	// RESTCPU is where the machine's CPU went over the REST trials.
	RESTCPU CPUUse

	BusRaw []float64
	Bus    []float64

	// Relay is the outbox relay's lag beside its ceiling; nil when the
	// phase was skipped.
	Relay *RelayLag

	// E2E is the throughput run: E2EOrders placed by 50 clients as fast
	// as they go, until the last is terminal.
	E2E loadgen.Summary
	// HalfRate is the open-loop latency run at half E2E's confirmed rate.
	HalfRate loadgen.Summary
	// HalfRateDrain is how long the platform took, after E2E, until every
	// queue and outbox was empty and the half-rate run could start.
	HalfRateDrain time.Duration
	// EmailOrders is how many orders were placed before the half-rate run
	// (the warm-up's and E2E's), and Emails how many emails the SMTP sink
	// had accepted once the platform had worked them off: two an order,
	// when it was received and when it was confirmed or rejected.
	EmailOrders int
	Emails      int64
	// CPU is each process's CPU time over the E2E run.
	CPU map[string]time.Duration
	// MachineBusy is the share of the machine's CPU time (all CPUs) that
	// was busy over the E2E run, whoever used it: the services, PostgreSQL,
	// RabbitMQ, the load generator and anything else running; MachineCPU
	// is that busy time, over the same window as CPU. Both are zero when
	// /proc/stat could not be read.
	MachineBusy float64
	MachineCPU  time.Duration
	// E2EWindow is the wall-clock time the CPU figures of the end-to-end
	// run cover: from its first CreateOrder until the load generator
	// returned (the last order terminal, and its final pass over them).
	E2EWindow time.Duration
	// OtherCPU is the CPU time of the machine's other processes over the
	// same window, by what they are (see cpuByCommand): "PostgreSQL",
	// "RabbitMQ", "load generator" (this process) and the rest by command
	// name. Processes that ended during the window are missed.
	OtherCPU map[string]time.Duration
	// RSS is each process's peak RSS: the create platform's order service
	// and gateway under "create/…", the end-to-end platform's processes by
	// name.
	RSS map[string]int64
	// Profiles are `go tool pprof -top` outputs: "create/order" for the
	// order service under the create-only load at the highest
	// concurrency, service names for the end-to-end drain.
	Profiles map[string]string
	// Handlers are each service's handler durations by routing key over
	// the end-to-end throughput run.
	Handlers map[string]map[string]HandlerStat
	// LoadAvg is /proc/loadavg at the start and at the end.
	LoadAvg [2]string
	// Diagnostics are variants of the raw ceiling run once after the
	// create rounds, to attribute the gap; they are not ratios.
	Diagnostics []Diagnostic
}

// Diagnostic is one diagnostic measurement.
type Diagnostic struct {
	Name string
	Rate float64
}

// CreateTrials are the create trials at one concurrency.
type CreateTrials struct {
	Raw         []float64
	GRPC        []float64
	GRPCSummary loadgen.Summary // of the best gRPC trial
	// RawCPU and GRPCCPU are where the machine's CPU went over all the
	// rounds of each side (not the profiled trial, which no figure counts).
	RawCPU, GRPCCPU CPUUse
}

// Best returns the largest of rates (0 for none).
func Best(rates []float64) float64 {
	if len(rates) == 0 {
		return 0
	}
	return slices.Max(rates)
}

// Ratio is a ÷ b, 0 when b is 0.
func Ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// CreateVsRaw is the lowest create ratio over CreateConcurrencies.
func (r *Result) CreateVsRaw() float64 {
	out := 0.0
	for i, c := range CreateConcurrencies {
		t := r.Create[c]
		if t == nil {
			return 0
		}
		v := Ratio(Best(t.GRPC), Best(t.Raw))
		if i == 0 || v < out {
			out = v
		}
	}
	return out
}

// BusVsRaw is the best bus rate ÷ the best raw rate.
func (r *Result) BusVsRaw() float64 { return Ratio(Best(r.Bus), Best(r.BusRaw)) }

// RESTVsGRPC is the best REST rate ÷ the best gRPC rate at the same
// concurrency.
func (r *Result) RESTVsGRPC() float64 {
	c := CreateConcurrencies[len(CreateConcurrencies)-1]
	if r.Create[c] == nil {
		return 0
	}
	return Ratio(Best(r.REST), Best(r.Create[c].GRPC))
}

// Run runs every phase and returns the figures. It removes what it created
// even when a phase fails.
func Run(ctx context.Context, o Options) (*Result, error) {
	o.defaults()
	res := &Result{Started: time.Now(), Rounds: o.Rounds, Create: map[int]*CreateTrials{}, CPU: map[string]time.Duration{},
		RSS: map[string]int64{}, Profiles: map[string]string{},
		Handlers: map[string]map[string]HandlerStat{}}
	res.LoadAvg[0] = loadAvg()
	logf := func(format string, args ...any) {
		fmt.Fprintf(o.Log, "[bench %s] "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
	}

	binDir := filepath.Join(o.WorkDir, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, fmt.Errorf("make bin dir: %w", err)
	}
	if !o.Skip["create"] || !o.Skip["e2e"] {
		logf("building the binaries")
		if err := Build(ctx, o.Root, binDir); err != nil {
			return nil, err
		}
	}
	id, err := randomID()
	if err != nil {
		return nil, err
	}
	if o.Skip["create"] {
	} else if err := runCreate(ctx, o, res, binDir, id+"c", logf); err != nil {
		return res, fmt.Errorf("create phase: %w", err)
	}
	if o.Skip["bus"] {
	} else if err := runBus(ctx, o, res, id+"b", logf); err != nil {
		return res, fmt.Errorf("bus phase: %w", err)
	}
	if o.Skip["relay"] {
	} else if err := runRelay(ctx, o, res, id+"r", logf); err != nil {
		return res, fmt.Errorf("relay phase: %w", err)
	}
	if o.Skip["e2e"] {
	} else if err := runE2E(ctx, o, res, binDir, id+"e", logf); err != nil {
		return res, fmt.Errorf("end-to-end phase: %w", err)
	}
	res.Finished = time.Now()
	res.LoadAvg[1] = loadAvg()
	return res, nil
}

// loadAvg is the first three fields of /proc/loadavg.
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// profile takes a CPU profile of d from proc into dir and returns its
// path; pprofTop renders it. Render profiles once the phase's CPU has been
// measured: go tool pprof is a process of its own (built on first use).
func profile(ctx context.Context, proc *Proc, dir, label string, d time.Duration) (string, error) {
	path := filepath.Join(dir, strings.ReplaceAll(label, "/", "-")+".cpu.pprof")
	if err := proc.CPUProfile(ctx, d, path); err != nil {
		return "", err
	}
	return path, nil
}

func (o Options) loadConfig(protocol string) loadgen.Config {
	return loadgen.Config{Protocol: protocol, Products: loadgen.Products("BENCH", 16), Progress: o.Log,
		ProgressTTY: o.ProgressTTY, ProgressInterval: progressInterval(o.ProgressTTY), DrainTimeout: 3 * time.Minute}
}

func progressInterval(tty bool) time.Duration {
	if tty {
		return 250 * time.Millisecond
	}
	return 5 * time.Second
}

// runCreate measures CreateOrder (gRPC and REST) against the raw pgx
// ceiling with only the order service and the gateway running. A queue of
// the benchmark's own, bound to the order events, receives what the
// order's outbox relay publishes, so the relay runs as in production.
func runCreate(ctx context.Context, o Options, res *Result, binDir, id string, logf func(string, ...any)) (err error) {
	logf("create phase: starting the order service and the gateway")
	pf, err := StartPlatform(ctx, PlatformConfig{BinDir: binDir, AdminDatabaseURL: o.AdminDatabaseURL, AMQPURL: o.AMQPURL,
		ID: id, Names: []string{"order", "gateway"}, LogDir: o.WorkDir})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pf.Close()) }()
	sink, err := newEventSink(o.AMQPURL, pf.Prefix)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, sink.Close()) }()

	conns, err := dialN(pf, "order", 2)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	grpcCreator := loadgen.NewGRPCCreator(conns...)
	httpClient := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 256, IdleConnTimeout: time.Minute}}
	defer httpClient.CloseIdleConnections()
	restCreator := loadgen.NewRESTCreator(pf.HTTPURL(), httpClient)

	maxConc := slices.Max(CreateConcurrencies)
	raws := map[int]*RawPG{}
	defer func() {
		for _, r := range raws {
			err = errors.Join(err, r.Close(context.WithoutCancel(ctx)))
		}
	}()
	for _, c := range CreateConcurrencies {
		r, err := NewRawPG(ctx, pf.DatabaseURL, fmt.Sprintf("bench_raw_%d", c))
		if err != nil {
			return err
		}
		raws[c] = r
		res.Create[c] = &CreateTrials{}
	}

	trial := func(protocol string, creator loadgen.Creator, clients int) (loadgen.Summary, error) {
		cfg := o.loadConfig(protocol)
		cfg.Creator, cfg.Concurrency, cfg.Duration = creator, clients, o.Trial
		cfg.Progress = nil
		sum, err := loadgen.Run(ctx, cfg)
		if err != nil {
			return sum, err
		}
		if sum.Failed > 0 {
			return sum, fmt.Errorf("%s at %d clients: %d of %d CreateOrders failed: %v", protocol, clients, sum.Failed, sum.Sent, sum.Errors)
		}
		return sum, nil
	}
	// settle lets the previous trial's work end before the next trial
	// starts, whichever side it was: the order service's relay publishes
	// what the trial left in the outbox, and a checkpoint writes out what
	// it dirtied, so that no trial pays for the one before it.
	settle := func() error {
		if _, err := pf.WaitDrained(ctx, 2*time.Minute); err != nil {
			return fmt.Errorf("settle between trials: %w", err)
		}
		return checkpoint(ctx, pf.DatabaseURL)
	}
	logf("create phase: warming up")
	if _, err := trial("grpc", grpcCreator, 8); err != nil {
		return err
	}
	if _, err := trial("rest", restCreator, 8); err != nil {
		return err
	}
	for _, c := range CreateConcurrencies {
		if _, _, err := raws[c].Run(ctx, c, c, o.Trial, nil); err != nil {
			return fmt.Errorf("raw pgx warm-up at %d clients: %w", c, err)
		}
	}
	rawTrial := func(round, c int) error {
		if err := settle(); err != nil {
			return err
		}
		rate, _, err := raws[c].Run(ctx, c, c, o.Trial, func() func(int64) {
			w := startCPUWindow()
			return func(n int64) { w.end(&res.Create[c].RawCPU, n) }
		})
		if err != nil {
			return fmt.Errorf("raw pgx at %d clients: %w", c, err)
		}
		res.Create[c].Raw = append(res.Create[c].Raw, rate)
		logf("create phase: round %d: raw pgx, %d clients: %.0f tx/s", round, c, rate)
		return nil
	}
	grpcTrial := func(round, c int) error {
		if err := settle(); err != nil {
			return err
		}
		w := startCPUWindow()
		sum, err := trial("grpc", grpcCreator, c)
		w.end(&res.Create[c].GRPCCPU, int64(sum.Created))
		if err != nil {
			return err
		}
		if sum.CreatedPerSec > Best(res.Create[c].GRPC) {
			res.Create[c].GRPCSummary = sum
		}
		res.Create[c].GRPC = append(res.Create[c].GRPC, sum.CreatedPerSec)
		logf("create phase: round %d: CreateOrder gRPC, %d clients: %.0f orders/s (p99 %.1f ms)", round, c, sum.CreatedPerSec, sum.CreateLatency.P99)
		return nil
	}
	restTrial := func(round int) error {
		if err := settle(); err != nil {
			return err
		}
		w := startCPUWindow()
		sum, err := trial("rest", restCreator, maxConc)
		w.end(&res.RESTCPU, int64(sum.Created))
		if err != nil {
			return err
		}
		if sum.CreatedPerSec > Best(res.REST) {
			res.RESTSummary = sum
		}
		res.REST = append(res.REST, sum.CreatedPerSec)
		logf("create phase: round %d: CreateOrder REST, %d clients: %.0f orders/s (p99 %.1f ms)", round, maxConc, sum.CreatedPerSec, sum.CreateLatency.P99)
		return nil
	}
	for round := 1; round <= o.Rounds; round++ {
		// Each round's trials in the same order, but every other round in
		// reverse, so that no kind of trial always follows the same one
		// (and what it leaves behind: a checkpoint, a vacuum).
		var steps []func() error
		for _, c := range CreateConcurrencies {
			steps = append(steps, func() error { return rawTrial(round, c) }, func() error { return grpcTrial(round, c) })
		}
		steps = append(steps, func() error { return restTrial(round) })
		if round%2 == 0 {
			slices.Reverse(steps)
		}
		for _, step := range steps {
			if err := step(); err != nil {
				return err
			}
		}
	}
	// The order service's profile comes from one more trial, which no
	// figure counts: a profiler's sampling costs the process it samples.
	if o.ProfileDuration > 0 {
		var pg errgroup.Group
		var profilePath string
		pg.Go(func() error {
			path, err := profile(ctx, pf.Procs["order"], o.WorkDir, "create/order", max(o.Trial-2*time.Second, time.Second))
			if err != nil {
				logf("create phase: profiling failed: %v", err)
			}
			profilePath = path
			return nil
		})
		_, err := trial("grpc", grpcCreator, maxConc)
		_ = pg.Wait()
		if err != nil {
			return err
		}
		if profilePath != "" {
			if top, err := pprofTop(ctx, filepath.Join(binDir, "order"), profilePath); err != nil {
				logf("create phase: profiling failed: %v", err)
			} else {
				res.Profiles["create/order"] = top
			}
		}
		logf("create phase: profiled the order service over one more gRPC trial at %d clients", maxConc)
	}
	// Diagnostic, once: the raw ceiling with the order service's pool
	// size, to attribute the gap.
	for _, d := range []struct {
		name  string
		conns int
	}{
		{fmt.Sprintf("raw pgx, %d clients sharing %d connections (the order service's pool)", maxConc, postgres.DefaultMaxConns), postgres.DefaultMaxConns},
	} {
		r, err := NewRawPG(ctx, pf.DatabaseURL, fmt.Sprintf("bench_diag_%d", len(res.Diagnostics)))
		if err != nil {
			return err
		}
		rate, _, err := r.Run(ctx, maxConc, d.conns, o.Trial, nil)
		err = errors.Join(err, r.Close(context.WithoutCancel(ctx)))
		if err != nil {
			// A diagnostic is not worth failing the run for (the server's
			// connections are shared and may run out).
			logf("create phase: %s: %v", d.name, err)
			continue
		}
		res.Diagnostics = append(res.Diagnostics, Diagnostic{Name: d.name, Rate: rate})
		logf("create phase: %s: %.0f tx/s", d.name, rate)
	}
	for _, name := range pf.Names() {
		if rss, err := pf.Procs[name].PeakRSS(); err == nil {
			res.RSS["create/"+name] = rss
		}
	}
	return nil
}

func runBus(ctx context.Context, o Options, res *Result, id string, logf func(string, ...any)) (err error) {
	logf("bus phase: %d messages per trial", o.BusMessages)
	b, err := NewBusBench(ctx, o.AMQPURL, "bench-"+id+".", o.BusMessages)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	for round := 1; round <= o.Rounds+1; round++ {
		raw, err := b.Raw(ctx)
		if err != nil {
			return err
		}
		bus, err := b.Bus(ctx, -1)
		if err != nil {
			return err
		}
		res.BusRaw, res.Bus = append(res.BusRaw, raw), append(res.Bus, bus)
		logf("bus phase: round %d: raw amqp091-go %.0f msg/s, eventbus %.0f msg/s", round, raw, bus)
	}
	return nil
}

// relayRounds is how many rounds each kind of relay-lag run is split
// into, interleaved with the other kinds.
const relayRounds = 5

// runRelay measures the outbox relay's lag at RelayRate events/s beside
// the ceiling of publishing right after commit.
func runRelay(ctx context.Context, o Options, res *Result, id string, logf func(string, ...any)) (err error) {
	logf("relay phase: %.0f events/s, one transaction each, for %s per kind in %d interleaved rounds", o.RelayRate, o.RelayDuration, relayRounds)
	b, err := NewLagBench(ctx, o.AdminDatabaseURL, o.AMQPURL, id, o.Log)
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, b.Close()) }()
	lag, err := b.Measure(ctx, o.RelayRate, o.RelayDuration, relayRounds, outbox.DefaultPollInterval, logf)
	if err != nil {
		return err
	}
	line := func(name string, r LagRun) {
		logf("relay phase: %s: %.0f events/s committed, lag p50 %.1f / p95 %.1f / p99 %.1f / max %.1f ms; commit → Publish call p50 %.1f / p99 %.1f ms; commit behind schedule p99 %.1f ms",
			name, r.Rate, r.Lag.P50, r.Lag.P95, r.Lag.P99, r.Lag.Max, r.ToPublish.P50, r.ToPublish.P99, r.Commit.P99)
	}
	line("outbox relay", lag.Relay)
	logf("relay phase: outbox relay: %d batches of %.1f on average; Publish p50 %.1f / p99 %.1f ms, between calls p50 %.1f / p99 %.1f ms",
		lag.Relay.Batches, lag.Relay.MeanBatch, lag.Relay.Publish.P50, lag.Relay.Publish.P99, lag.Relay.Between.P50, lag.Relay.Between.P99)
	line("publish after commit", lag.Raw)
	for _, d := range lag.Diagnostics {
		line(d.Name, d.Run)
	}
	res.Relay = lag
	return nil
}

// runE2E starts every service and the gateway and measures confirmed
// orders per second, then latency at half that rate.
func runE2E(ctx context.Context, o Options, res *Result, binDir, id string, logf func(string, ...any)) (err error) {
	logf("end-to-end phase: starting every service and the gateway")
	pf, err := StartPlatform(ctx, PlatformConfig{BinDir: binDir, AdminDatabaseURL: o.AdminDatabaseURL, AMQPURL: o.AMQPURL,
		ID: id, Names: append(slices.Clone(Services), "gateway"), LogDir: o.WorkDir})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, pf.Close()) }()
	conns, err := dialN(pf, "order", 2)
	if err != nil {
		return err
	}
	defer closeAll(conns)
	inv, err := pf.Dial("inventory")
	if err != nil {
		return err
	}
	defer inv.Close()
	orders := orderv1.NewOrderServiceClient(conns[0])
	creator := loadgen.NewGRPCCreator(conns...)

	base := o.loadConfig("grpc")
	if err := loadgen.StockGRPC(ctx, inventoryv1.NewInventoryServiceClient(inv), base.Products, 1_000_000_000); err != nil {
		return err
	}
	run := func(cfg loadgen.Config) (loadgen.Summary, error) {
		cfg.Creator, cfg.Orders = creator, orders
		sum, err := loadgen.Run(ctx, cfg)
		if err != nil {
			return sum, err
		}
		if n := sum.Final["PENDING"] + sum.Missing; n > 0 || sum.Failed > 0 {
			return sum, fmt.Errorf("%d CreateOrders failed (%v) and %d orders did not finish", sum.Failed, sum.Errors, n)
		}
		// Every order is of a stocked product with a token that pays: the
		// figures (confirmed orders/s, create→confirmed) count confirmed
		// orders, and a terminal latency is a confirmation's only so.
		for status, n := range sum.Final {
			if status != "CONFIRMED" && n > 0 {
				return sum, fmt.Errorf("%d orders ended %s, want every one CONFIRMED (final statuses %v)", n, status, sum.Final)
			}
		}
		return sum, nil
	}

	logf("end-to-end phase: warming up")
	warm := base
	warm.Concurrency, warm.Count, warm.Progress = 8, 200, nil
	warmSum, err := run(warm)
	if err != nil {
		return fmt.Errorf("warm-up: %w", err)
	}

	logf("end-to-end phase: %d orders from 50 clients, until every one is terminal", o.E2EOrders)
	before := map[string]time.Duration{}
	for _, name := range pf.Names() {
		before[name], _ = pf.Procs[name].CPUTime()
	}
	machineBefore, machineErr := readMachineCPU()
	procsBefore := snapshotProcesses()
	windowStart := time.Now()
	statsBefore := map[string]map[string]HandlerStat{}
	for _, name := range Services {
		if statsBefore[name], err = pf.Procs[name].HandlerStats(ctx); err != nil {
			return err
		}
	}
	e2e := base
	e2e.Concurrency, e2e.Count = 50, o.E2EOrders
	res.E2E, err = run(e2e)
	ended := time.Now()
	for _, name := range pf.Names() {
		after, _ := pf.Procs[name].CPUTime()
		res.CPU[name] = after - before[name]
	}
	if machineAfter, err := readMachineCPU(); err == nil && machineErr == nil {
		res.MachineBusy = machineAfter.busySince(machineBefore)
		res.MachineCPU = machineAfter.busyTimeSince(machineBefore)
	}
	res.E2EWindow = ended.Sub(windowStart)
	services := map[int]bool{}
	for _, name := range pf.Names() {
		services[pf.Procs[name].Pid()] = true
	}
	res.OtherCPU = cpuByCommand(procsBefore, snapshotProcesses(), services)
	if err != nil {
		return fmt.Errorf("throughput run: %w", err)
	}
	// The throughput run ends when every order is terminal, but events
	// that follow (notifications of the confirmed orders, their
	// acknowledgements) may still be queued: the latency run measures
	// steady state only once they are worked off. The wait is timed from
	// the end of the throughput run.
	logf("end-to-end phase: waiting for every queue and outbox to be empty")
	drain, err := pf.WaitDrained(ctx, drainTimeout)
	if err != nil {
		return fmt.Errorf("before the half-rate run: %w", err)
	}
	res.HalfRateDrain = time.Since(ended)
	if len(drain.Initial) > 0 {
		logf("end-to-end phase: left %s after the throughput run ended: %s", time.Since(ended).Round(time.Millisecond), strings.Join(drain.Initial, ", "))
	}
	logf("end-to-end phase: queues and outboxes empty %s after the throughput run ended", res.HalfRateDrain.Round(time.Millisecond))
	for _, name := range Services {
		after, err := pf.Procs[name].HandlerStats(ctx)
		if err != nil {
			return err
		}
		res.Handlers[name] = diffStats(statsBefore[name], after)
	}
	logf("end-to-end phase: %.0f confirmed orders/s (%.0f/s while draining the backlog)", res.E2E.ConfirmedPerSec, res.E2E.DrainConfirmedPerSec)

	res.EmailOrders = warmSum.Created + res.E2E.Created
	if res.Emails, err = waitEmails(ctx, pf.Emails, 2*int64(res.EmailOrders), emailTimeout); err != nil {
		return err
	}
	if want := 2 * int64(res.EmailOrders); res.Emails != want {
		logf("end-to-end phase: the SMTP sink accepted %d emails for %d orders, want %d", res.Emails, res.EmailOrders, want)
	}

	half := base
	half.Rate, half.Duration = max(res.E2E.ConfirmedPerSec/2, 1), o.HalfRateDuration
	half.PollInterval = 500 * time.Millisecond
	logf("end-to-end phase: open loop at %.0f orders/s for %s", half.Rate, o.HalfRateDuration)
	if res.HalfRate, err = run(half); err != nil {
		return fmt.Errorf("half-rate run: %w", err)
	}
	for _, name := range pf.Names() {
		if rss, err := pf.Procs[name].PeakRSS(); err == nil {
			res.RSS[name] = rss
		}
	}

	// The services' profiles come from one more run of the throughput
	// run's kind, which no figure counts (a profiler's sampling costs the
	// processes it samples): recorded while its backlog is worked off,
	// after its last order was placed, which is event processing alone.
	if o.ProfileDuration > 0 {
		var g errgroup.Group
		var profMu sync.Mutex
		profiles := map[string]string{}
		prof := base
		prof.Concurrency, prof.Count = 50, o.E2EOrders
		prof.AfterLoad = func() {
			for _, s := range Services {
				g.Go(func() error {
					path, err := profile(ctx, pf.Procs[s], o.WorkDir, s, o.ProfileDuration)
					if err != nil {
						logf("end-to-end phase: profiling %s failed: %v", s, err)
						return nil
					}
					profMu.Lock()
					profiles[s] = path
					profMu.Unlock()
					return nil
				})
			}
		}
		logf("end-to-end phase: one more run of %d orders, profiling the services while its backlog is worked off", o.E2EOrders)
		_, err := run(prof)
		_ = g.Wait()
		if err != nil {
			return fmt.Errorf("profiled run: %w", err)
		}
		for s, path := range profiles {
			top, err := pprofTop(ctx, filepath.Join(binDir, s), path)
			if err != nil {
				logf("end-to-end phase: profiling %s failed: %v", s, err)
				continue
			}
			res.Profiles[s] = top
		}
	}
	return nil
}

// emailTimeout bounds how long the end-to-end phase waits, once queues and
// outboxes are empty, for the emails of the orders placed so far: the last
// of them may still be on their way while the drain's polls find nothing.
const emailTimeout = 30 * time.Second

// waitEmails waits until received reports at least want emails, or timeout
// passes, and returns the last count: want when each email arrived once;
// more when some were sent again (the notification service resends a
// batch's emails when its transaction fails after sending them); fewer
// when some never came (dead-lettered events, say). It fails only when ctx
// ends.
func waitEmails(ctx context.Context, received func() int64, want int64, timeout time.Duration) (int64, error) {
	deadline := time.Now().Add(timeout)
	for {
		got := received()
		if got >= want || time.Now().After(deadline) {
			return got, nil
		}
		select {
		case <-ctx.Done():
			return got, fmt.Errorf("wait for emails: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// pprofTop is the flat top of a CPU profile.
func pprofTop(ctx context.Context, binary, profile string) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "tool", "pprof", "-top", "-nodecount=15", binary, profile).Output()
	if err != nil {
		return "", fmt.Errorf("pprof %s: %w", profile, err)
	}
	return strings.TrimSpace(string(out)), nil
}

func dialN(pf *Platform, name string, n int) ([]grpc.ClientConnInterface, error) {
	var out []grpc.ClientConnInterface
	for range n {
		c, err := pf.Dial(name)
		if err != nil {
			closeAll(out)
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func closeAll(conns []grpc.ClientConnInterface) {
	for _, c := range conns {
		if cc, ok := c.(*grpc.ClientConn); ok {
			cc.Close()
		}
	}
}

func randomID() (string, error) {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("random id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// checkpoint has PostgreSQL write out every dirty buffer (CHECKPOINT), so
// that a trial does not pay for the writes of the one before. Running it
// takes a superuser or, from PostgreSQL 15, the pg_checkpoint role; without
// either the trials go on unsettled, and the log says so once.
func checkpoint(ctx context.Context, url string) error {
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "CHECKPOINT"); err != nil {
		if pgErr, ok := errors.AsType[*pgconn.PgError](err); ok && pgErr.Code == "42501" {
			checkpointRefused.Do(func() {
				fmt.Fprintln(os.Stderr, "bench: CHECKPOINT refused (needs a superuser or pg_checkpoint); trials run without one between them")
			})
			return nil
		}
		return fmt.Errorf("checkpoint: %w", err)
	}
	return nil
}

// checkpointRefused logs a refused CHECKPOINT once.
var checkpointRefused sync.Once
