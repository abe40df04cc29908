// Package app is the order service's application layer: it runs the order
// domain's rules inside PostgreSQL transactions, writes the resulting events
// to the outbox in the same transaction, and serves the queries behind
// OrderService. The gRPC adapter and the event handlers call it.
package app

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// Source is the app_id of every event the order service publishes.
const Source = "order"

// DefaultPageSize is the page size of ListOrders when the client asks for 0.
const DefaultPageSize = 50

// Group commit of CreateOrder: at most createBatch orders share a
// transaction, bounded by createBatchTimeout, in createLanes transactions
// at once. One lane makes the largest batches: on a 2-core machine the
// benchmark's CreateOrders per second at 50 clients were 2923–2996 with
// one lane, 2544–2608 with two, 1758 with four (and at 8 clients
// 1142–1313, 1012–1129, 805–910), and once commits no longer notified,
// one and two lanes measured the same. With more lanes, requests with the
// same request id share one, so two batches never wait for each other's
// insert of it.
const (
	createBatch        = 128
	createLanes        = 1
	createBatchTimeout = 15 * time.Second
)

// ErrInvalidPageToken is returned for a page token this service did not
// issue, or issued for another filter.
var ErrInvalidPageToken = errors.New("invalid page token")

// pageTokenError is ErrInvalidPageToken about the request's page_token
// field (a grpcserver.FieldError), saying why.
type pageTokenError struct{ why string }

func (e pageTokenError) Error() string       { return ErrInvalidPageToken.Error() + ": " + e.why }
func (e pageTokenError) Unwrap() error       { return ErrInvalidPageToken }
func (e pageTokenError) Field() string       { return "page_token" }
func (e pageTokenError) Description() string { return e.Error() }

// App runs the order use cases.
type App struct {
	pool    *pgxpool.Pool
	watcher *store.Watcher
	log     *slog.Logger
	now     func() time.Time
	// creates group-commits concurrent Create calls.
	creates *postgres.Batcher[*createCall]
	// wake is called after a commit that wrote outbox rows.
	wake func()
	// hold is what this instance last saw of the timeout's pause.
	hold expiryHold
	// watchReads bounds the reads of watched orders running at once to
	// half the pool's connections: a change, or the watcher's reconnect,
	// signals every watch at once (thousands with many open), and their
	// reads would otherwise queue ahead of Create's batches and the
	// handlers for every connection.
	watchReads chan struct{}
}

// New returns an App storing orders in pool and watching changes with w.
// wake, when not nil, is called after each commit of Create, Cancel and
// the timeout that wrote events to the outbox, so the process's relay
// (outbox.Relay.Wake) publishes them at once. Events written by Handle are
// the inbox runner's to announce.
func New(pool *pgxpool.Pool, w *store.Watcher, log *slog.Logger, wake func()) *App {
	if wake == nil {
		wake = func() {}
	}
	a := &App{
		pool: pool, watcher: w, log: log, wake: wake,
		now:        func() time.Time { return time.Now().UTC() },
		watchReads: make(chan struct{}, max(1, pool.Config().MaxConns/2)),
	}
	a.creates = postgres.NewBatcher(createBatch, createLanes, a.insertBatch)
	return a
}

// QueuedCreates returns how many Create calls wait for a transaction to
// carry them: those that arrived while one was in flight.
func (a *App) QueuedCreates() int {
	return a.creates.Queued()
}

// Create places the order req asks for, or returns the order a previous
// request with the same request id placed. The order and its order.created
// event commit together, in a transaction shared with concurrent calls
// (group commit). A request id reused with another payload fails with an
// error wrapping order.ErrRequestConflict.
func (a *App) Create(ctx context.Context, req order.Request) (order.Order, error) {
	id, err := uuid.NewV7()
	if err != nil {
		return order.Order{}, fmt.Errorf("new order id: %w", err)
	}
	o, err := order.New(id.String(), req, a.now().Truncate(time.Microsecond))
	if err != nil {
		return order.Order{}, err
	}
	c := &createCall{req: req, order: o, trace: telemetry.TraceContextFrom(ctx)}
	if err := a.creates.Do(ctx, req.RequestID, c); err != nil {
		return order.Order{}, fmt.Errorf("create order: %w", err)
	}
	if c.err != nil {
		return order.Order{}, fmt.Errorf("create order: %w", unavailable(c.err))
	}
	return c.result, nil
}

// createCall is one Create in a batch: the request, the new order it
// would place, and what the batch did with it.
type createCall struct {
	req    order.Request
	order  order.Order
	trace  telemetry.TraceContext
	result order.Order
	err    error
}

// insertBatch writes a batch of new orders in one transaction. It first
// tries insertAll, one round trip for the whole transaction; when
// PostgreSQL refuses that for the data (a request id placed before, which
// is a repeated request, or a value one order could have caused) it writes
// the batch again with insertResolving, which finds the repeats and, if
// need be, isolates the culprit. Other failures (the database unreachable,
// the deadline) fail the whole batch.
func (a *App) insertBatch(ctx context.Context, calls []*createCall) {
	ctx, cancel := context.WithTimeout(ctx, createBatchTimeout)
	defer cancel()
	// Each order takes its request id's entry in the unique index as it is
	// inserted. Inserted in request id order, two batches holding some of
	// the same request ids (a client retrying on another instance while
	// its first try runs) wait for each other in one order and cannot
	// deadlock. (calls is the batch's own slice; see postgres.Batcher.)
	slices.SortFunc(calls, func(x, y *createCall) int { return strings.Compare(x.req.RequestID, y.req.RequestID) })
	err := a.insertAll(ctx, calls)
	switch {
	case err == nil:
		a.wake()
	case postgres.DataRefused(err):
		a.insertResolving(ctx, calls)
	default:
		for _, c := range calls {
			c.err = err
		}
	}
}

// insertAll writes the orders of calls, their order.created events and
// their timeline entries in one round trip: BEGIN, a statement per table
// and COMMIT, pipelined. It writes all or nothing, and fails, writing
// nothing, when a request id was placed before or twice in calls.
func (a *App) insertAll(ctx context.Context, calls []*createCall) error {
	orders := make([]order.Order, len(calls))
	events := make([]orderEvent, len(calls))
	for i, c := range calls {
		orders[i] = c.order
		events[i] = orderEvent{orderID: c.order.ID, event: orderCreated(c.order), trace: c.trace}
	}
	b := &pgx.Batch{}
	b.Queue("BEGIN")
	if err := store.QueueInsertAll(b, orders...); err != nil {
		return err
	}
	if err := queuePublish(b, events); err != nil {
		return err
	}
	b.Queue("COMMIT")

	conn, err := a.pool.Acquire(ctx)
	if err != nil {
		return fmt.Errorf("insert %d orders: %w", len(calls), err)
	}
	defer conn.Release()
	if err := conn.SendBatch(ctx, b).Close(); err != nil {
		// A failed statement leaves the transaction open and aborted (the
		// statements after it, COMMIT included, were skipped): roll it
		// back so the connection can serve again. The pool drops a
		// connection still in a transaction when released anyway.
		postgres.RollbackConn(ctx, conn)
		return fmt.Errorf("insert %d orders: %w", len(calls), err)
	}
	for _, c := range calls {
		c.result = c.order
	}
	return nil
}

// insertResolving writes a batch of new orders in one transaction with a
// statement per table (orders, outbox, timeline), in three round trips
// whatever the batch size: BEGIN and the orders, the outbox and the
// timeline, COMMIT. A request id that already placed an order gets that
// order (or ErrRequestConflict) and writes nothing. When the transaction
// fails on something one order could have caused (a constraint, a bad
// value), each order is tried again alone, so only the culprit fails;
// other failures fail the whole batch.
func (a *App) insertResolving(ctx context.Context, calls []*createCall) {
	err := a.insertOrders(ctx, calls)
	if err == nil {
		return
	}
	if len(calls) > 1 && postgres.DataRefused(err) {
		for _, c := range calls {
			c.err = nil
			a.insertResolving(ctx, []*createCall{c})
		}
		return
	}
	for _, c := range calls {
		c.err = err
	}
}

func (a *App) insertOrders(ctx context.Context, calls []*createCall) (err error) {
	orders := make([]order.Order, len(calls))
	for i, c := range calls {
		orders[i] = c.order
	}
	inserted := make(map[string]bool, len(calls))
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	if err := store.QueueInsert(b, inserted, orders...); err != nil {
		return err
	}
	br := a.pool.SendBatch(ctx, b)
	tx := br.Tx()
	defer func() {
		if err != nil {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			// The transaction's own error is what matters to the callers.
			_ = tx.Rollback(ctx)
		}
	}()
	if err := br.Close(); err != nil {
		return fmt.Errorf("insert %d orders: %w", len(calls), err)
	}

	var events []orderEvent
	var repeats []string
	for _, c := range calls {
		if !inserted[c.order.ID] {
			repeats = append(repeats, c.req.RequestID)
			continue
		}
		c.result = c.order
		events = append(events, orderEvent{orderID: c.order.ID, event: orderCreated(c.order), trace: c.trace})
	}
	if err := publish(ctx, tx, events...); err != nil {
		return err
	}
	if len(repeats) > 0 {
		prev, err := store.GetByRequestIDs(ctx, tx, repeats)
		if err != nil {
			return err
		}
		for _, c := range calls {
			if inserted[c.order.ID] {
				continue
			}
			p, ok := prev[c.req.RequestID]
			if !ok {
				return fmt.Errorf("order of request %s: neither inserted nor found", c.req.RequestID)
			}
			c.result, c.err = p, p.CheckRepeat(c.req)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit %d orders: %w", len(calls), err)
	}
	if len(events) > 0 {
		a.wake()
	}
	return nil
}

// orderEvent is an event the order service publishes about an order.
type orderEvent struct {
	orderID string
	event   proto.Message
	// trace is the trace context of the request that caused the event,
	// when no consumed event did.
	trace telemetry.TraceContext
}

// Get returns the order with id, or an error wrapping order.ErrNotFound.
func (a *App) Get(ctx context.Context, id string) (order.Order, error) {
	o, err := store.Get(ctx, a.pool, id)
	return o, unavailable(err)
}

// List returns a page of orders matching f, newest first, and the token of
// the next page ("" after the last). pageToken is "" for the first page.
func (a *App) List(ctx context.Context, f store.Filter, pageSize int, pageToken string, withItems bool) ([]order.Order, string, error) {
	if pageSize <= 0 {
		pageSize = DefaultPageSize
	}
	cursor, err := decodePageToken(pageToken, f)
	if err != nil {
		return nil, "", err
	}
	page, err := store.List(ctx, a.pool, f, cursor, pageSize, withItems)
	if err != nil {
		return nil, "", unavailable(err)
	}
	return page.Orders, encodePageToken(page.Next, f), nil
}

// Cancel cancels order id; see order.Order.Apply for which orders can be
// cancelled. The change and its order.cancelled event commit together.
func (a *App) Cancel(ctx context.Context, id, reason string) (order.Order, error) {
	o, err := a.change(ctx, id, order.Cancel{Reason: reason})
	if err != nil {
		return order.Order{}, fmt.Errorf("cancel order %s: %w", id, unavailable(err))
	}
	return o, nil
}

// change applies in to order id in a transaction of its own, with the
// events it causes, and returns the order after it.
func (a *App) change(ctx context.Context, id string, in order.Input) (order.Order, error) {
	o, _, err := a.changed(ctx, id, in)
	return o, err
}

// changed is change, also reporting whether in changed the order (it
// published an event): an order another instance changed first is
// returned as it is, unchanged.
func (a *App) changed(ctx context.Context, id string, in order.Input) (order.Order, bool, error) {
	var result order.Order
	var published bool
	err := postgres.WithTx(ctx, a.pool, func(tx pgx.Tx) error {
		o, err := store.GetForUpdate(ctx, tx, id)
		if err != nil {
			return err
		}
		events, next, err := a.apply(ctx, tx, o, in)
		if err != nil {
			return err
		}
		trace := telemetry.TraceContextFrom(ctx)
		for i := range events {
			events[i].trace = trace
		}
		result = next
		published = len(events) > 0
		return publish(ctx, tx, events...)
	})
	if err == nil && published {
		a.wake()
	}
	return result, err == nil && published, err
}

// Events returns order id's timeline, or an error wrapping
// order.ErrNotFound.
func (a *App) Events(ctx context.Context, id string) ([]store.Event, error) {
	if _, err := store.Get(ctx, a.pool, id); err != nil {
		return nil, unavailable(err)
	}
	events, err := store.ListEvents(ctx, a.pool, id)
	return events, unavailable(err)
}

// publish writes the order service's events to the outbox and to their
// orders' timelines, in tx, in one round trip.
func publish(ctx context.Context, tx pgx.Tx, events ...orderEvent) error {
	if len(events) == 0 {
		return nil
	}
	b := &pgx.Batch{}
	if err := queuePublish(b, events); err != nil {
		return err
	}
	if err := tx.SendBatch(ctx, b).Close(); err != nil {
		return fmt.Errorf("write %d events to the outbox and timeline: %w", len(events), err)
	}
	return nil
}

// queuePublish queues on b the statements writing the order service's
// events (none caused by a consumed event) to the outbox and to their
// orders' timelines.
func queuePublish(b *pgx.Batch, events []orderEvent) error {
	msgs, records, err := outgoing(events, eventbus.Meta{})
	if err != nil {
		return err
	}
	if err := outbox.Queue(b, msgs...); err != nil {
		return err
	}
	store.QueueRecordEvents(b, records...)
	return nil
}

// outgoing encodes the order service's events, correlated by their order
// and continuing the trace of cause, the event that led to them (zero
// when none did), or else each event's own (the request's), and returns
// them with their timeline entries.
func outgoing(events []orderEvent, cause eventbus.Meta) ([]eventbus.Message, []store.Event, error) {
	if len(events) == 0 {
		return nil, nil, nil
	}
	msgs := make([]eventbus.Message, len(events))
	records := make([]store.Event, len(events))
	for i, e := range events {
		m, err := eventbus.NewMessage(e.event, Source, e.orderID)
		if err != nil {
			return nil, nil, err
		}
		m.TraceParent, m.TraceState = cause.TraceParent, cause.TraceState
		if m.TraceParent == "" {
			m.TraceParent, m.TraceState = e.trace.Parent, e.trace.State
		}
		msgs[i], records[i] = m, eventRecord(e.orderID, m.Meta, e.event)
	}
	return msgs, records, nil
}

// apply runs one transition and stores it when it changed the order.
func (a *App) apply(ctx context.Context, tx pgx.Tx, o order.Order, in order.Input) ([]orderEvent, order.Order, error) {
	t, err := o.Apply(in, a.now().Truncate(time.Microsecond))
	if err != nil {
		return nil, o, err
	}
	if !t.Changed {
		return nil, o, nil
	}
	if err := store.Update(ctx, tx, t.Order); err != nil {
		return nil, o, err
	}
	events, err := sagaEvents(t)
	if err != nil {
		return nil, o, err
	}
	return events, t.Order, nil
}

// sagaEvents returns the wire events of transition t.
func sagaEvents(t order.Transition) ([]orderEvent, error) {
	events := make([]orderEvent, 0, len(t.Events))
	for _, ev := range t.Events {
		msg, err := eventToProto(t.Order, ev)
		if err != nil {
			return nil, err
		}
		events = append(events, orderEvent{orderID: t.Order.ID, event: msg})
	}
	return events, nil
}

// Watch calls send with order id as it is now and again after every change,
// until the order is terminal, send fails or ctx ends.
func (a *App) Watch(ctx context.Context, id string, send func(order.Order) error) error {
	changed, stop := a.watcher.Subscribe(id)
	defer stop()
	var last order.Order
	for first := true; ; first = false {
		o, err := a.readWatched(ctx, id)
		if err != nil {
			return err
		}
		if first || o.UpdateTime != last.UpdateTime || o.Status != last.Status {
			if err := send(o); err != nil {
				return err
			}
			last = o
		}
		if o.Status.Terminal() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// readWatched reads order id for a watch, among at most cap(a.watchReads)
// such reads at once.
func (a *App) readWatched(ctx context.Context, id string) (order.Order, error) {
	select {
	case a.watchReads <- struct{}{}:
	case <-ctx.Done():
		return order.Order{}, ctx.Err()
	}
	defer func() { <-a.watchReads }()
	o, err := store.Get(ctx, a.pool, id)
	if err != nil {
		return order.Order{}, unavailable(err)
	}
	return o, nil
}

// Page tokens are "<cursor>.<filter digest>" in unpadded base64url: opaque
// to clients, and bound to the filter they were issued for.
func encodePageToken(cursor int64, f store.Filter) string {
	if cursor == 0 {
		return ""
	}
	raw := strconv.FormatInt(cursor, 10) + "." + filterDigest(f)
	return base64.RawURLEncoding.EncodeToString([]byte(raw))
}

func decodePageToken(token string, f store.Filter) (int64, error) {
	if token == "" {
		return 0, nil
	}
	raw, err := base64.RawURLEncoding.DecodeString(token)
	if err != nil {
		return 0, pageTokenError{"not issued by this service"}
	}
	cursorText, digest, ok := strings.Cut(string(raw), ".")
	cursor, err := strconv.ParseInt(cursorText, 10, 64)
	if !ok || err != nil || cursor <= 0 {
		return 0, pageTokenError{"not issued by this service"}
	}
	if digest != filterDigest(f) {
		return 0, pageTokenError{"issued for a different filter"}
	}
	return cursor, nil
}

func filterDigest(f store.Filter) string {
	h := sha256.New()
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(f.Status))
	h.Write(b[:])
	h.Write([]byte(f.CustomerEmail))
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:6])
}
