package faults

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc/codes"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/platformtest"
)

// Workers are the services that only consume events.
var workers = []string{"inventory", "payment", "notification"}

// retryDelays is the services' retry ladder in the suite: five attempts
// over 20 s, enough for tok_unavailable's two failures plus the failures
// a fault causes that are not outages of a database or mail server (those
// count no attempt): a handler that times out on a stalled link, say.
const retryDelays = "1s,3s,6s,10s"

// terminalWithin is how soon after the last fault (or the last order,
// if later) every accepted order must be terminal.
const terminalWithin = 60 * time.Second

// spec describes one scenario.
type spec struct {
	// orders and rate are the load: that many orders at that many per
	// second.
	orders int
	rate   float64
	// inject runs beside the load and injects the faults through s.fault.
	inject func(ctx context.Context, s *scenario) error
	// opts are added to the platform's options.
	opts platformtest.Options
	// router makes the tap deliver every event twice, reordered.
	router bool
	// mailWindow allows an email to be sent again: the notification
	// service's documented window between the SMTP server's acceptance
	// and the commit, opened by killing the service or failing its
	// database. Each repeat must straddle a fault (the copy before it
	// sent before the fault ended, the repeat after the fault began), and
	// no fault may account for more than mailResendsPerFault of them.
	mailWindow bool
	// allowed are the CreateOrder error codes the scenario may cause.
	allowed []codes.Code
	// fullRate keeps the load's rate under -short, with four times the
	// orders -short gives, so it spans the same time: for a scenario
	// whose faults must find the workers busy.
	fullRate bool
}

// scenario is one running scenario.
type scenario struct {
	t    *testing.T
	name string
	pf   *platformtest.Platform
	load *load
	tap  *tap
	// bindings of the service queues when the platform started.
	bindings []binding

	mu        sync.Mutex
	faults    int
	lastFault time.Time
	// windows are the faults' spans, in order.
	windows []window
	notes   []string
	// poison are the messages injected per service, by tag.
	poison map[string]map[string]string
}

// window is when one fault ran.
type window struct {
	what       string
	begin, end time.Time
}

// ordersFor scales a scenario's load: ORDERMESH_FAULTS_ORDERS, else n,
// else an eighth of n (at least 250) under -short.
func ordersFor(n int) int {
	if v, err := strconv.Atoi(os.Getenv("ORDERMESH_FAULTS_ORDERS")); err == nil && v > 0 {
		return v
	}
	if testing.Short() {
		return max(n/8, 250)
	}
	return n
}

// rateFor scales a scenario's rate with its load under -short, so the
// smaller load still spans the (fewer) faults.
func rateFor(rate float64) float64 {
	if testing.Short() {
		return rate / 4
	}
	return rate
}

// repeat scales a fault's repetitions under -short.
func repeat(n int) int {
	if testing.Short() {
		return min(n, 2)
	}
	return n
}

// runScenario starts a platform on the private servers, runs the load and
// sp.inject together, then checks every invariant and logs the counts.
func runScenario(t *testing.T, sp spec) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 12*time.Minute)
	defer cancel()
	opts := sp.opts
	opts.AMQPURL = infra.rabbit.URL
	opts.AdminDatabaseURL = infra.pg.URL
	opts.BinDir = infra.binDir
	if opts.RetryDelays == "" {
		opts.RetryDelays = retryDelays
	}
	if err := restoreInfra(ctx); err != nil {
		t.Fatalf("private servers: %v", err)
	}
	pf := platformtest.Start(t, opts)
	s := &scenario{t: t, name: t.Name(), pf: pf, poison: map[string]map[string]string{}}
	defer func() {
		if t.Failed() {
			pf.DumpLogs()
		}
	}()

	inventory := inventoryv1.NewInventoryServiceClient(pf.Dial("inventory"))
	for sku, n := range map[string]int64{skuStocked: initialStock, skuEmpty: 0} {
		if _, err := inventory.SetStock(ctx, &inventoryv1.SetStockRequest{ProductId: sku, Available: n}); err != nil {
			t.Fatalf("stock %s: %v", sku, err)
		}
	}
	var err error
	if s.bindings, err = listBindings(ctx, pf.Prefix); err != nil {
		t.Fatalf("list bindings: %v", err)
	}
	// Every service's queue is bound: a queue missing here would get no
	// copy from the router and count nothing in the reports.
	for _, svc := range platformtest.Services {
		if !slices.ContainsFunc(s.bindings, func(b binding) bool { return b.queue == pf.Prefix+svc }) {
			t.Fatalf("no binding of %s's queue among %v", svc, s.bindings)
		}
	}
	var route map[string][]string
	if sp.router {
		route = s.takeOverRouting(ctx)
	}
	tapCtx, stopTap := context.WithCancel(ctx)
	s.tap, err = startTap(tapCtx, infra.rabbit.URL, pf.Prefix, route)
	if err != nil {
		t.Fatalf("start tap: %v", err)
	}
	defer func() {
		stopTap()
		s.tap.wait()
		if err := s.tap.remove(); err != nil {
			t.Errorf("remove the tap: %v", err)
		}
	}()
	ready := time.Since(start)

	// Load and faults together. The topology settles on the first orders
	// before the first fault.
	s.load = newLoad(orderv1.NewOrderServiceClient(pf.Dial("order")), strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")))
	n, rate := ordersFor(sp.orders), rateFor(sp.rate)
	if sp.fullRate && rate != sp.rate && os.Getenv("ORDERMESH_FAULTS_ORDERS") == "" {
		n, rate = n*int(sp.rate/rate), sp.rate
	}
	loadDone := make(chan struct{})
	var loadEnd time.Time
	go func() {
		defer close(loadDone)
		s.load.run(ctx, n, rate, 32)
		loadEnd = time.Now()
	}()
	faultStart := time.Now()
	var injectErr error
	if sp.inject != nil {
		time.Sleep(2 * time.Second)
		injectErr = sp.inject(ctx, s)
	}
	faultTime := time.Since(faultStart)
	<-loadDone
	if injectErr != nil {
		t.Errorf("inject faults: %v", injectErr)
	}
	if placed := len(s.load.placed()); placed != n {
		t.Errorf("the load placed %d of its %d orders", placed, n)
	}
	s.mu.Lock()
	last := s.lastFault
	s.mu.Unlock()
	if loadEnd.After(last) {
		last = loadEnd
	}

	c := s.check(ctx, sp, last)
	t.Logf("%s: %d orders in %v (%.0f/s), %d faults in %v; platform ready in %v, terminal %v after the last fault or order; total %v",
		s.name, len(s.load.placed()), loadEnd.Sub(faultStart).Round(time.Millisecond),
		float64(len(s.load.placed()))/loadEnd.Sub(faultStart).Seconds(), s.faults, faultTime.Round(time.Millisecond),
		ready.Round(time.Millisecond), c.settled.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	t.Logf("%s: counts %s", s.name, c)
	for _, n := range s.notes {
		t.Logf("%s: %s", s.name, n)
	}
}

// restoreInfra brings the private servers up again where a scenario that
// failed between a fault and its repair left them down, so that one
// failure does not fail every scenario after it.
func restoreInfra(ctx context.Context) error {
	if !infra.rabbit.Running() {
		if err := infra.rabbit.Start(ctx); err != nil {
			return err
		}
	}
	if notReady := infra.rabbit.WaitReady(ctx, 10*time.Second); notReady != nil {
		if err := infra.rabbit.StartApp(ctx); err != nil {
			return fmt.Errorf("%v; start_app: %w", notReady, err)
		}
	}
	// A memory alarm left raised would block every publisher.
	if _, err := infra.rabbit.Ctl(ctx, "set_vm_memory_high_watermark", "0.4"); err != nil {
		return err
	}
	if err := infra.pg.WaitReady(ctx, 5*time.Second); err != nil {
		if err := infra.pg.Start(ctx); err != nil {
			return err
		}
	}
	return nil
}

// fault runs one fault and counts it; the last fault's end starts the
// clock for terminal states.
func (s *scenario) fault(what string, f func() error) error {
	begin := time.Now()
	err := f()
	s.mu.Lock()
	s.faults++
	s.lastFault = time.Now()
	s.windows = append(s.windows, window{what: what, begin: begin, end: s.lastFault})
	n := s.faults
	s.mu.Unlock()
	s.t.Logf("fault %d: %s (%v)", n, what, time.Since(begin).Round(time.Millisecond))
	if err != nil {
		return fmt.Errorf("fault %q: %w", what, err)
	}
	return nil
}

// note records a line for the scenario's report.
func (s *scenario) note(format string, args ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notes = append(s.notes, fmt.Sprintf(format, args...))
}

// takeOverRouting unbinds every service queue from the events exchange
// and returns where the tap must copy each routing key instead.
func (s *scenario) takeOverRouting(ctx context.Context) map[string][]string {
	conn, err := amqp.DialConfig(infra.rabbit.URL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Heartbeat: 10 * time.Second})
	if err != nil {
		s.t.Fatalf("take over routing: %v", err)
	}
	defer conn.Close()
	ch, err := conn.Channel()
	if err != nil {
		s.t.Fatalf("take over routing: %v", err)
	}
	route := map[string][]string{}
	exchange := eventbus.Config{Prefix: s.pf.Prefix}.ExchangeName()
	for _, b := range s.bindings {
		route[b.key] = append(route[b.key], b.queue)
		if err := ch.QueueUnbind(b.queue, b.key, exchange, nil); err != nil {
			s.t.Fatalf("unbind %s from %s: %v", b.queue, b.key, err)
		}
	}
	return route
}

// sleep waits d or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(d):
		return nil
	}
}

// silentLog discards the DLQ client's logs.
var silentLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// sortedKeys returns m's keys in order, for stable reports.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
