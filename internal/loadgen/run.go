// Package loadgen drives CreateOrder load against the order service, over
// gRPC or through the REST gateway, open-loop at a target rate or
// closed-loop at a concurrency, and measures created and confirmed orders
// per second, errors by gRPC code and the latencies of CreateOrder and of
// create→terminal. cmd/loadgen is its command line; the benchmark harness
// uses it as a library.
package loadgen

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

// Config describes one load run. Exactly one of Rate (open loop) and
// Concurrency (closed loop) is positive, and Duration, Count or both bound
// the run.
type Config struct {
	// Protocol labels the run in the summary ("grpc", "rest").
	Protocol string
	// Creator places the orders.
	Creator Creator
	// Orders, when not nil, is used to track orders to their terminal
	// state (see Tracker); nil skips tracking.
	Orders orderv1.OrderServiceClient

	// Rate is the open-loop target in orders per second.
	Rate float64
	// MaxInFlight bounds the open-loop requests outstanding at once; a
	// request due while the bound is reached waits, and its latency still
	// counts from when it was due. Default 1000.
	MaxInFlight int
	// Concurrency is the number of closed-loop clients, each sending its
	// next order when the previous one returned.
	Concurrency int

	// Duration ends the load after this long (0: no limit).
	Duration time.Duration
	// Count ends the load after this many orders were sent (0: no limit).
	Count int

	// Products are the SKUs ordered, round-robin; required.
	Products []string
	// PaymentToken is every order's token; default "tok_visa".
	PaymentToken string
	// RequestTimeout bounds each CreateOrder, and each tracking poll (a
	// listing of every pending order, in pages); default 10s.
	RequestTimeout time.Duration

	// PollInterval is how often the tracker lists pending orders during
	// the run and the drain; default 1s.
	PollInterval time.Duration
	// DrainTimeout bounds the wait for the last orders to become terminal
	// after the load ends; default 2m.
	DrainTimeout time.Duration

	// AfterLoad, when set, is called once when the last order was sent
	// and answered, before the drain.
	AfterLoad func()

	// Progress receives the live progress line; nil shows none.
	Progress io.Writer
	// ProgressTTY rewrites one line with \r instead of printing a line per
	// ProgressInterval.
	ProgressTTY bool
	// ProgressInterval is the time between progress updates; default 1s
	// (250ms on a terminal).
	ProgressInterval time.Duration
}

func (c *Config) defaults() error {
	switch {
	case c.Creator == nil:
		return errors.New("load config: no creator")
	case (c.Rate > 0) == (c.Concurrency > 0):
		return errors.New("load config: set exactly one of rate (open loop) and concurrency (closed loop)")
	case c.Rate < 0 || c.Concurrency < 0 || c.Count < 0 || c.Duration < 0:
		return errors.New("load config: rate, concurrency, count and duration must not be negative")
	case c.Duration == 0 && c.Count == 0:
		return errors.New("load config: set a duration, a count or both")
	case len(c.Products) == 0:
		return errors.New("load config: no products")
	}
	if c.MaxInFlight <= 0 {
		c.MaxInFlight = 1000
	}
	if c.PaymentToken == "" {
		c.PaymentToken = "tok_visa"
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 10 * time.Second
	}
	if c.PollInterval <= 0 {
		c.PollInterval = time.Second
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 2 * time.Minute
	}
	if c.ProgressInterval <= 0 {
		c.ProgressInterval = time.Second
		if c.ProgressTTY {
			c.ProgressInterval = 250 * time.Millisecond
		}
	}
	return nil
}

// Request returns the n-th order of a run: one unit of a product taken
// round-robin from products, at EUR 9.99, with a fresh request id.
func Request(n int, products []string, token string) *orderv1.CreateOrderRequest {
	return &orderv1.CreateOrderRequest{
		RequestId:     uuid.NewString(),
		CustomerEmail: fmt.Sprintf("loadgen-%d@example.com", n%1000),
		PaymentToken:  token,
		Items: []*orderv1.LineItem{{
			ProductId: products[n%len(products)],
			Quantity:  1,
			UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 990000000},
		}},
	}
}

// counters are the live figures of a run, read by the progress display.
type counters struct {
	sent, created, failed, inFlight atomic.Int64
}

// Run drives the load cfg describes, then (when tracking) waits up to
// cfg.DrainTimeout for the orders to become terminal and reads their final
// state. It returns the summary; an error means the run could not be
// carried out (bad config, tracking failed), not that requests failed —
// those are counted in the summary. Cancelling ctx ends the load early and
// still returns what was measured.
func Run(ctx context.Context, cfg Config) (Summary, error) {
	if err := cfg.defaults(); err != nil {
		return Summary{}, err
	}
	var tracker *Tracker
	if cfg.Orders != nil {
		tracker = NewTracker(cfg.Orders)
	}
	var (
		c       counters
		mu      sync.Mutex
		samples []time.Duration
		errs    = map[string]int{}
		lastOK  time.Time
	)
	do := func(n int, due time.Time) {
		c.sent.Add(1)
		c.inFlight.Add(1)
		defer c.inFlight.Add(-1)
		// A request sent finishes even when ctx ends (Ctrl-C stops the
		// sending): cancelling it would count it as an error of the
		// platform's and lose its latency.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.RequestTimeout)
		id, err := cfg.Creator.CreateOrder(rctx, Request(n, cfg.Products, cfg.PaymentToken))
		cancel()
		now := time.Now()
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			c.failed.Add(1)
			errs[CodeName(err)]++
			if status.Code(err) == codes.DeadlineExceeded {
				// The slowest requests count: a timeout is a latency.
				samples = append(samples, now.Sub(due))
			}
			return
		}
		c.created.Add(1)
		samples = append(samples, now.Sub(due))
		if now.After(lastOK) {
			lastOK = now
		}
		if tracker != nil {
			tracker.Add(id, due)
		}
	}

	start := time.Now()
	bgCtx, stopBackground := context.WithCancel(ctx)
	defer stopBackground()
	g, gctx := errgroup.WithContext(bgCtx)
	loadDone := make(chan struct{})
	var polls pollFailures
	g.Go(func() error {
		showProgress(gctx, cfg, start, &c, tracker, loadDone)
		return nil
	})
	if tracker != nil {
		g.Go(func() error {
			t := time.NewTicker(cfg.PollInterval)
			defer t.Stop()
			for {
				select {
				case <-gctx.Done():
					return nil
				case <-loadDone:
					return nil
				case <-t.C:
				}
				pctx, cancel := context.WithTimeout(gctx, cfg.RequestTimeout)
				_, err := tracker.Poll(pctx)
				cancel()
				if err != nil && gctx.Err() == nil {
					polls.add(err)
				}
			}
		})
	}
	if cfg.Rate > 0 {
		openLoop(ctx, cfg, start, do)
	} else {
		closedLoop(ctx, cfg, start, do)
	}
	loadEnd := time.Now()
	close(loadDone)
	if cfg.AfterLoad != nil {
		cfg.AfterLoad()
	}

	sum := Summary{
		Protocol: cfg.Protocol, TargetRate: cfg.Rate, Concurrency: cfg.Concurrency,
		Sent: int(c.sent.Load()), Created: int(c.created.Load()), Failed: int(c.failed.Load()),
		Errors: errs, LoadSeconds: loadEnd.Sub(start).Seconds(), Interrupted: ctx.Err() != nil,
	}
	if sum.Created > 0 {
		sum.CreatedPerSec = float64(sum.Created) / lastOK.Sub(start).Seconds()
	}
	sum.CreateLatency = Summarize(samples)

	var err error
	if tracker != nil {
		sum.Tracking = TrackingMethod
		drain(ctx, cfg, tracker, &polls)
		// Interrupted while draining too: the orders still pending were
		// cut short, not given the whole drain timeout.
		sum.Interrupted = ctx.Err() != nil
		var out Outcome
		// The final pass reads every order's state afresh, whatever the
		// polls saw, and must run even when ctx was cancelled.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		out, err = tracker.Final(fctx)
		cancel()
		sum.addOutcome(out, start, loadEnd)
	}
	stopBackground()
	_ = g.Wait()
	sum.PollErrors, sum.LastPollError = polls.read()
	return sum, err
}

// pollFailures counts the tracking polls that failed. A failed poll only
// delays seeing orders become terminal: the final pass reads them all.
type pollFailures struct {
	mu   sync.Mutex
	n    int
	last string
}

func (p *pollFailures) add(err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.n++
	p.last = err.Error()
}

func (p *pollFailures) read() (int, string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n, p.last
}

// drain polls until every tracked order is terminal, the drain timeout
// passes or ctx ends. A failed poll is counted in polls and polled again.
// Each poll is bounded by the request timeout and what is left of the
// drain's: one the server never answers must not outlast the drain.
func drain(ctx context.Context, cfg Config, tracker *Tracker, polls *pollFailures) {
	deadline := time.Now().Add(cfg.DrainTimeout)
	for {
		pollEnd := time.Now().Add(cfg.RequestTimeout)
		if deadline.Before(pollEnd) {
			pollEnd = deadline
		}
		pctx, cancel := context.WithDeadline(ctx, pollEnd)
		pending, err := tracker.Poll(pctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			polls.add(err)
		}
		if (err == nil && pending == 0) || ctx.Err() != nil || time.Now().After(deadline) {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(drainPause(pending, cfg.PollInterval)):
		}
	}
}

// drainPause is the wait between polls while the last orders become
// terminal. Each poll lists every pending order, and on the platform
// under test that costs the order service and PostgreSQL CPU, so with
// many pending the tracker polls every interval; with few it polls up to
// five times a second to see the end promptly. Latencies and rates come
// from the orders' update times, not from when a poll saw them.
func drainPause(pending int, interval time.Duration) time.Duration {
	if pending <= fewPending {
		return min(interval, 200*time.Millisecond)
	}
	return interval
}

// fewPending is how many pending orders a poll lists cheaply.
const fewPending = 200

// openLoop sends request n at pacer.Due(n), at most cfg.MaxInFlight at
// once, until the count or the duration is reached or ctx ends.
func openLoop(ctx context.Context, cfg Config, start time.Time, do func(int, time.Time)) {
	pacer := NewPacer(start, cfg.Rate)
	end := start.Add(cfg.Duration)
	sem := make(chan struct{}, cfg.MaxInFlight)
	var wg sync.WaitGroup
	defer wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for n := 0; cfg.Count == 0 || n < cfg.Count; n++ {
		due := pacer.Due(n)
		if cfg.Duration > 0 && !due.Before(end) {
			return
		}
		if wait := time.Until(due); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-timer.C:
			}
		}
		select {
		case <-ctx.Done():
			return
		case sem <- struct{}{}:
		}
		wg.Go(func() {
			defer func() { <-sem }()
			do(n, due)
		})
	}
}

// closedLoop runs cfg.Concurrency clients, each sending its next request
// when the previous one returned.
func closedLoop(ctx context.Context, cfg Config, start time.Time, do func(int, time.Time)) {
	end := start.Add(cfg.Duration)
	var next atomic.Int64
	var wg sync.WaitGroup
	for range cfg.Concurrency {
		wg.Go(func() {
			for ctx.Err() == nil {
				now := time.Now()
				if cfg.Duration > 0 && !now.Before(end) {
					return
				}
				n := int(next.Add(1) - 1)
				if cfg.Count > 0 && n >= cfg.Count {
					return
				}
				do(n, now)
			}
		})
	}
	wg.Wait()
}
