package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	amqp "github.com/rabbitmq/amqp091-go"
	"golang.org/x/sync/errgroup"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/loadgen"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

// Shapes of the relay-lag benchmark.
const (
	// lagWriters commit the paced events; enough that a slow commit
	// delays no other event's commit.
	lagWriters = 16
	// lagSchema holds the outbox the writers fill and the relay drains.
	lagSchema = "relaybench"
	// lagPrefetch lets the consumer take deliveries as fast as they come.
	lagPrefetch = 1000
	// lagReceiveTimeout bounds the wait for the last events after the
	// last commit.
	lagReceiveTimeout = 30 * time.Second
)

// LagRun is the pooled figures of one kind of relay-lag run: events
// committed one per transaction at a fixed rate, and for each the time
// from its commit to its delivery to a consumer.
type LagRun struct {
	// Target is the offered rate (events/s); Rate the achieved one:
	// events committed ÷ the rounds' time from the first due time to the
	// last commit.
	Target float64
	Rate   float64
	// Lag is commit returned (writer) → delivery read (consumer).
	Lag loadgen.Latency
	// ToPublish is commit returned → the event's first Publish call
	// began (the relay's wake-up, claim and wait for earlier batches).
	ToPublish loadgen.Latency
	// Commit is due time → commit returned: how far the writers fell
	// behind the schedule.
	Commit loadgen.Latency
	// Early counts deliveries read before the writer's Commit had
	// returned (lag counted as 0).
	Early int
	// Batches is how many Publish calls the relay made, MeanBatch and
	// MaxBatch their sizes and Publish their duration (send and
	// confirms); zero for the ceiling.
	Batches   int
	MeanBatch float64
	MaxBatch  int
	Publish   loadgen.Latency
	// Between is, for a one-worker relay, the time from the end of one
	// Publish call to the start of the next: the batch's DELETE and
	// COMMIT, the next BEGIN and claim, and any wait for rows.
	Between loadgen.Latency
}

// RelayLag is the relay phase's result.
type RelayLag struct {
	// Relay is the outbox Relay publishing through eventbus as the
	// services run it; Raw the ceiling: each writer publishes its event
	// with amqp091-go right after its commit, on one confirm-mode
	// channel, and no relay runs.
	Relay, Raw LagRun
	// Duration is each kind's total time, in Rounds rounds interleaved
	// with the other kinds'.
	Duration time.Duration
	Rounds   int
	// PollInterval is the relay's poll interval (its fallback when no
	// notification wakes it).
	PollInterval time.Duration
	// Diagnostics are variants of the relay, interleaved with the runs
	// above, to attribute the lag; they have no goal.
	Diagnostics []LagDiagnostic
}

// LagDiagnostic is one variant of the relay run.
type LagDiagnostic struct {
	Name string
	Run  LagRun
}

// diagWorkers is the relay's worker count in the diagnostic runs: with
// more than one, a batch is claimed while the one before waits for its
// confirms, which shows how much of the lag is that wait.
const diagWorkers = 4

// LagBench measures the outbox relay's lag in a database of its own: a
// schema with the outbox table, a quorum queue
// bound to order.created on an exchange under its own prefix, and a
// consumer reading that queue.
type LagBench struct {
	adminURL string
	database string
	dbURL    string
	cfg      eventbus.Config
	queue    string
	// pool is the writers'; relayPool and pub the relay's, kept across
	// rounds as a service keeps them.
	pool      *pgxpool.Pool
	relayPool *pgxpool.Pool
	pub       *eventbus.Publisher
	// conn carries the consumer and, on rawCh (confirm mode), the
	// ceiling's publishes.
	conn  *amqp.Connection
	rawCh *amqp.Channel
	log   *slog.Logger
}

// NewLagBench creates the database bench_<id> with the outbox schema and
// the topology under "bench-<id>.", and connects; Close removes them.
func NewLagBench(ctx context.Context, adminURL, amqpURL, id string, log io.Writer) (_ *LagBench, err error) {
	b := &LagBench{
		adminURL: adminURL, database: "bench_" + id,
		cfg: eventbus.Config{URL: amqpURL, Prefix: "bench-" + id + ".", Service: "order"},
		log: slog.New(slog.NewTextHandler(log, &slog.HandlerOptions{Level: slog.LevelWarn})),
	}
	b.queue = b.cfg.Prefix + "bench.relaylag"
	if b.dbURL, err = databaseURL(adminURL, b.database); err != nil {
		return nil, err
	}
	if err := postgres.CreateDatabaseIfMissing(ctx, b.dbURL); err != nil {
		return nil, fmt.Errorf("create database %s: %w", b.database, err)
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, b.Close())
		}
	}()
	b.pool, err = postgres.Open(ctx, b.dbURL, lagSchema, postgres.WithMaxConns(lagWriters), postgres.WithMinConns(lagWriters),
		postgres.WithApplicationName("ordermesh-bench-writer"))
	if err != nil {
		return nil, err
	}
	if err := postgres.Migrate(ctx, b.pool, lagSchema, outbox.Migrations); err != nil {
		return nil, fmt.Errorf("migrate %s: %w", lagSchema, err)
	}
	if b.relayPool, err = postgres.Open(ctx, b.dbURL, lagSchema, postgres.WithApplicationName("ordermesh-bench-relay")); err != nil {
		return nil, err
	}
	if b.conn, err = amqp.DialConfig(amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": b.cfg.Prefix + "relaylag"}}); err != nil {
		return nil, fmt.Errorf("dial broker: %w", err)
	}
	ch, err := b.conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	defer ch.Close()
	// The exchange as eventbus declares it, so the publisher's own
	// declaration agrees.
	if err := ch.ExchangeDeclare(b.cfg.ExchangeName(), amqp.ExchangeTopic, true, false, false, false, nil); err != nil {
		return nil, fmt.Errorf("declare exchange: %w", err)
	}
	if _, err := ch.QueueDeclare(b.queue, true, false, false, false, amqp.Table{amqp.QueueTypeArg: amqp.QueueTypeQuorum}); err != nil {
		return nil, fmt.Errorf("declare %s: %w", b.queue, err)
	}
	if err := ch.QueueBind(b.queue, "order.created", b.cfg.ExchangeName(), false, nil); err != nil {
		return nil, fmt.Errorf("bind %s: %w", b.queue, err)
	}
	if b.rawCh, err = b.conn.Channel(); err != nil {
		return nil, fmt.Errorf("open channel: %w", err)
	}
	if err := b.rawCh.Confirm(false); err != nil {
		return nil, fmt.Errorf("confirm mode: %w", err)
	}
	if b.pub, err = eventbus.NewPublisher(b.cfg, b.log); err != nil {
		return nil, fmt.Errorf("new publisher: %w", err)
	}
	upCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := b.pub.WaitUp(upCtx); err != nil {
		return nil, fmt.Errorf("publisher up: %w", err)
	}
	return b, nil
}

// Close deletes the queue and the exchange and drops the database; it
// does all of it even when a step fails.
func (b *LagBench) Close() error {
	var errs []error
	if b.pub != nil {
		_ = b.pub.Close()
	}
	if b.relayPool != nil {
		b.relayPool.Close()
	}
	if b.pool != nil {
		b.pool.Close()
	}
	if b.conn != nil {
		if ch, err := b.conn.Channel(); err != nil {
			errs = append(errs, fmt.Errorf("delete %s: %w", b.queue, err))
		} else {
			if _, err := ch.QueueDelete(b.queue, false, false, false); err != nil {
				errs = append(errs, fmt.Errorf("delete %s: %w", b.queue, err))
			} else if err := ch.ExchangeDelete(b.cfg.ExchangeName(), false, false); err != nil {
				errs = append(errs, fmt.Errorf("delete exchange: %w", err))
			}
			_ = ch.Close()
		}
		_ = b.conn.Close()
	}
	if err := dropDatabase(b.adminURL, b.database); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Measure runs, after a warm-up round of each, rounds rounds of: the
// outbox Relay as the services run it (one worker), the ceiling, and the
// relay with diagWorkers workers, each round committing rate events/s for
// d/rounds; it pools each kind's rounds. Interleaving keeps a change in
// the machine's load from favouring one kind. logf, if set, gets a line
// per round.
func (b *LagBench) Measure(ctx context.Context, rate float64, d time.Duration, rounds int, pollInterval time.Duration, logf func(string, ...any)) (*RelayLag, error) {
	rounds = max(rounds, 1)
	kinds := []struct {
		name    string
		workers int // 0: the ceiling
	}{{"outbox relay", 1}, {"publish after commit", 0}, {fmt.Sprintf("outbox relay, %d workers", diagWorkers), diagWorkers}}
	round := func(workers int, d time.Duration) (*lagTrack, error) {
		t, err := newLagTrack(rate, d)
		if err != nil {
			return nil, err
		}
		if workers == 0 {
			return t, b.rawRound(ctx, t)
		}
		return t, b.relayRound(ctx, t, pollInterval, workers)
	}
	for _, k := range kinds {
		if _, err := round(k.workers, 500*time.Millisecond); err != nil {
			return nil, fmt.Errorf("warm-up, %s: %w", k.name, err)
		}
	}
	tracks := make([][]*lagTrack, len(kinds))
	for r := 1; r <= rounds; r++ {
		for i, k := range kinds {
			t, err := round(k.workers, d/time.Duration(rounds))
			if err != nil {
				return nil, fmt.Errorf("round %d, %s: %w", r, k.name, err)
			}
			tracks[i] = append(tracks[i], t)
			if logf != nil {
				run := summarize(tracks[i][len(tracks[i])-1:], k.workers)
				logf("relay phase: round %d: %s: %.0f events/s committed, lag p50 %.1f / p99 %.1f / max %.1f ms",
					r, k.name, run.Rate, run.Lag.P50, run.Lag.P99, run.Lag.Max)
			}
		}
	}
	return &RelayLag{
		Relay: summarize(tracks[0], kinds[0].workers), Raw: summarize(tracks[1], kinds[1].workers),
		Diagnostics: []LagDiagnostic{{Name: fmt.Sprintf("diagnostic: the same relay with %d workers", diagWorkers), Run: summarize(tracks[2], kinds[2].workers)}},
		Duration:    d, Rounds: rounds, PollInterval: pollInterval,
	}, nil
}

// relayRound runs the outbox Relay as the services configure it (batches
// of up to outbox.DefaultBatchSize, woken by each writer after its commit
// as the services' writers do, and a poll every pollInterval; the services
// use one worker) with workers workers while t's events are committed.
// Starting the relay is not timed.
func (b *LagBench) relayRound(ctx context.Context, t *lagTrack, pollInterval time.Duration, workers int) error {
	relay := outbox.NewRelay(b.relayPool, trackingPublisher{pub: b.pub, t: t},
		outbox.Config{PollInterval: pollInterval, Workers: workers, Logger: b.log})
	relayCtx, stopRelay := context.WithCancel(ctx)
	relayDone := make(chan error, 1)
	go func() { relayDone <- relay.Run(relayCtx) }()
	stop := func() error {
		stopRelay()
		return <-relayDone
	}
	err := b.run(ctx, t, func(context.Context, int) error {
		relay.Wake()
		return nil
	})
	if err == nil {
		// Every event has been consumed, but the relay deletes a batch's
		// rows only after its confirms: stopping it now could cancel that
		// delete and leave rows for the next round to publish again.
		err = b.awaitEmptyOutbox(ctx)
	}
	// The consumer may have read the last event before its Publish call
	// returned: t's calls are complete once the relay has stopped.
	if serr := stop(); err == nil && serr != nil {
		err = fmt.Errorf("relay: %w", serr)
	}
	return err
}

// awaitEmptyOutbox waits until the relay has deleted every outbox row, for
// at most ten seconds.
func (b *LagBench) awaitEmptyOutbox(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		var left int
		if err := b.pool.QueryRow(ctx, "SELECT count(*) FROM outbox").Scan(&left); err != nil {
			return fmt.Errorf("count outbox rows: %w", err)
		}
		if left == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("relay: %d outbox rows left 10s after their events were consumed", left)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// rawRound is the ceiling: no relay; each writer publishes its event on
// the shared confirm-mode channel right after its commit returns (the
// confirm is awaited off the writer's path). The rows it leaves in the
// outbox are deleted afterwards, before a relay could see them.
func (b *LagBench) rawRound(ctx context.Context, t *lagTrack) (err error) {
	defer func() {
		if _, derr := b.pool.Exec(context.WithoutCancel(ctx), "DELETE FROM outbox"); derr != nil {
			err = errors.Join(err, fmt.Errorf("empty the outbox: %w", derr))
		}
	}()
	var mu sync.Mutex
	var confirms []*amqp.DeferredConfirmation
	err = b.run(ctx, t, func(ctx context.Context, i int) error {
		m := t.msgs[i]
		t.published[i] = time.Now()
		dc, err := b.rawCh.PublishWithDeferredConfirmWithContext(ctx, b.cfg.ExchangeName(), m.RoutingKey, true, false, rawPublishing(m))
		if err != nil {
			return fmt.Errorf("raw publish: %w", err)
		}
		mu.Lock()
		confirms = append(confirms, dc)
		mu.Unlock()
		return nil
	})
	if err != nil {
		return err
	}
	for _, dc := range confirms {
		ok, err := dc.WaitContext(ctx)
		if err != nil {
			return fmt.Errorf("raw confirm: %w", err)
		}
		if !ok {
			return errors.New("raw publish nacked")
		}
	}
	return nil
}

// lagTrack holds one round's events and, for each, when it was due, when
// its commit returned, when it was first handed to a Publish call and
// when the consumer read it.
type lagTrack struct {
	rate  float64
	msgs  []eventbus.Message
	index map[string]int
	// Each slot of due, committed and received is written by one
	// goroutine only (the pacer, the writer that had the event, the
	// consumer) and read after all of them have finished.
	due, committed, received []time.Time
	// start is the first due time.
	start time.Time

	// mu guards the relay's Publish calls and its writes of published
	// (relay workers may publish concurrently); without a relay each
	// writer sets its own events' slots.
	mu        sync.Mutex
	published []time.Time
	sizes     []int
	calls     []publishCall
}

// publishCall is one Publish call of the relay.
type publishCall struct {
	start, end time.Time
}

func newLagTrack(rate float64, d time.Duration) (*lagTrack, error) {
	n := max(int(rate*d.Seconds()), 1)
	t := &lagTrack{rate: rate, msgs: make([]eventbus.Message, n), index: make(map[string]int, n),
		due: make([]time.Time, n), committed: make([]time.Time, n), received: make([]time.Time, n), published: make([]time.Time, n)}
	for i := range t.msgs {
		m, err := orderCreated()
		if err != nil {
			return nil, err
		}
		t.msgs[i] = m
		t.index[m.ID] = i
	}
	return t, nil
}

// trackingPublisher records, for the lag's breakdown, when each event was
// first handed to the publisher and how long each Publish call took. It
// passes the call and its error through unchanged.
type trackingPublisher struct {
	pub outbox.Publisher
	t   *lagTrack
}

var _ outbox.Publisher = trackingPublisher{}

func (p trackingPublisher) Publish(ctx context.Context, msgs ...eventbus.Message) error {
	start := time.Now()
	p.t.mu.Lock()
	for _, m := range msgs {
		if i, ok := p.t.index[m.ID]; ok && p.t.published[i].IsZero() {
			p.t.published[i] = start
		}
	}
	p.t.mu.Unlock()
	err := p.pub.Publish(ctx, msgs...)
	end := time.Now()
	p.t.mu.Lock()
	p.t.sizes = append(p.t.sizes, len(msgs))
	p.t.calls = append(p.t.calls, publishCall{start: start, end: end})
	p.t.mu.Unlock()
	return err
}

// run commits t's events at t.rate, each in its own transaction (one
// outbox row, as a CreateOrder writes), paced by schedule: event i is due
// at start + i/rate and handed to the first free writer, so a slow commit
// delays no later event's turn. after, when set, runs on the writer right
// after each commit. A consumer reads the queue meanwhile; run returns once
// every event was delivered, or fails after lagReceiveTimeout.
func (b *LagBench) run(ctx context.Context, t *lagTrack, after func(context.Context, int) error) error {
	n := len(t.msgs)
	cch, err := b.conn.Channel()
	if err != nil {
		return fmt.Errorf("open channel: %w", err)
	}
	defer cch.Close()
	if err := cch.Qos(lagPrefetch, 0, false); err != nil {
		return fmt.Errorf("qos: %w", err)
	}
	deliveries, err := cch.Consume(b.queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume: %w", err)
	}

	g, gctx := errgroup.WithContext(ctx)
	writersDone := make(chan struct{})
	g.Go(func() error {
		var timeout <-chan time.Time
		finished := writersDone
		got := 0
		for got < n {
			select {
			case <-gctx.Done():
				return gctx.Err()
			case <-finished:
				finished = nil
				timeout = time.After(lagReceiveTimeout)
			case <-timeout:
				return fmt.Errorf("consumer: %d of %d events delivered %v after the last commit", got, n, lagReceiveTimeout)
			case dl, ok := <-deliveries:
				if !ok {
					return errors.New("consumer: channel closed")
				}
				now := time.Now()
				// Events of an earlier round, and second deliveries
				// (publishing is at-least-once), are not counted.
				if i, ok := t.index[dl.MessageId]; ok && t.received[i].IsZero() {
					t.received[i] = now
					got++
				}
				if err := dl.Ack(false); err != nil {
					return fmt.Errorf("consumer: ack: %w", err)
				}
			}
		}
		return nil
	})

	jobs := make(chan int, n)
	t.start = time.Now()
	pacer := loadgen.NewPacer(t.start, t.rate)
	// The writers run in their own group, so the first failure stops the
	// others and the pacer, and the pacer's goroutine reports it.
	wg, wctx := errgroup.WithContext(gctx)
	for range lagWriters {
		wg.Go(func() error {
			for i := range jobs {
				if err := b.commit(wctx, t.msgs[i]); err != nil {
					return fmt.Errorf("writer: %w", err)
				}
				t.committed[i] = time.Now()
				if after != nil {
					if err := after(wctx, i); err != nil {
						return fmt.Errorf("writer: %w", err)
					}
				}
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(writersDone)
	pace:
		for i := range n {
			t.due[i] = pacer.Due(i)
			if wait := time.Until(t.due[i]); wait > 0 {
				select {
				case <-wctx.Done():
					break pace
				case <-time.After(wait):
				}
			}
			jobs <- i
		}
		close(jobs)
		return wg.Wait()
	})
	return g.Wait()
}

// summarize pools the figures of tracks, rounds of one kind whose every
// goroutine has finished; workers is the relay's worker count (0: no
// relay).
func summarize(tracks []*lagTrack, workers int) LagRun {
	var out LagRun
	var lags, toPublish, commits, durations, between []time.Duration
	var events, total int
	var span time.Duration
	for _, t := range tracks {
		out.Target = t.rate
		last := t.start
		for i := range t.msgs {
			lag := t.received[i].Sub(t.committed[i])
			if lag < 0 {
				out.Early++
				lag = 0
			}
			lags = append(lags, lag)
			if !t.published[i].IsZero() {
				toPublish = append(toPublish, max(t.published[i].Sub(t.committed[i]), 0))
			}
			commits = append(commits, t.committed[i].Sub(t.due[i]))
			if t.committed[i].After(last) {
				last = t.committed[i]
			}
		}
		events += len(t.msgs)
		span += last.Sub(t.start)

		t.mu.Lock()
		out.Batches += len(t.sizes)
		for _, s := range t.sizes {
			total += s
			out.MaxBatch = max(out.MaxBatch, s)
		}
		for i, c := range t.calls {
			durations = append(durations, c.end.Sub(c.start))
			if workers == 1 && i > 0 {
				between = append(between, c.start.Sub(t.calls[i-1].end))
			}
		}
		t.mu.Unlock()
	}
	if span > 0 {
		out.Rate = float64(events) / span.Seconds()
	}
	if out.Batches > 0 {
		out.MeanBatch = float64(total) / float64(out.Batches)
	}
	out.Lag, out.ToPublish, out.Commit = loadgen.Summarize(lags), loadgen.Summarize(toPublish), loadgen.Summarize(commits)
	out.Publish, out.Between = loadgen.Summarize(durations), loadgen.Summarize(between)
	return out
}

// commit writes m to the outbox in a transaction of its own.
func (b *LagBench) commit(ctx context.Context, m eventbus.Message) error {
	return postgres.WithTx(ctx, b.pool, func(tx pgx.Tx) error {
		return outbox.Add(ctx, tx, m)
	})
}

// rawPublishing is m as eventbus publishes it.
func rawPublishing(m eventbus.Message) amqp.Publishing {
	return amqp.Publishing{
		Headers: amqp.Table{
			eventbus.HeaderSpecVersion: "1.0",
			eventbus.HeaderTime:        m.Time.UTC().Format(time.RFC3339Nano),
		},
		ContentType:  eventbus.ContentType,
		DeliveryMode: amqp.Persistent, CorrelationId: m.CorrelationID, MessageId: m.ID,
		Timestamp: m.Time.UTC(), Type: m.Type, AppId: m.Source, Body: m.Body,
	}
}

// dropDatabase drops database name, reached through adminURL, with any
// connections still open to it.
func dropDatabase(adminURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop database %s: %w", name, err)
	}
	return nil
}
