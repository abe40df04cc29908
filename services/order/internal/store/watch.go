package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
)

// Watcher tells subscribers when an order they watch may have changed. It
// listens on the schema's order channel, which the orders table's trigger
// notifies on every committed update, so it sees changes made by any
// instance of the service.
//
// Notifications are coalesced: a subscriber's channel holds at most one
// pending signal, and a subscriber re-reads the order on each signal. After
// the listening connection is lost and re-established every subscriber is
// signalled, since changes in between were not seen.
type Watcher struct {
	conn    *pgx.ConnConfig
	channel string
	log     *slog.Logger

	mu        sync.Mutex
	subs      map[string]map[chan struct{}]struct{}
	listening atomic.Bool
}

// Listening reports whether the watcher currently listens for changes.
func (w *Watcher) Listening() bool { return w.listening.Load() }

// channelPrefix begins the name of every schema's order channel; the
// orders table's trigger (migration 001) names it the same way.
const channelPrefix = "orders."

// MaxSchemaLen is the longest schema name, in bytes, whose order channel
// PostgreSQL takes: a channel name is at most 63 bytes, and in a longer one
// pg_notify fails, which would fail every update of an order.
const MaxSchemaLen = 63 - len(channelPrefix)

// NewWatcher returns a Watcher for the orders in schema, listening on a
// connection of its own opened as conn says (the service pool's
// pool.Config().ConnConfig, so that it connects as the pool's connections
// do); Run must be running for it to deliver anything.
func NewWatcher(conn *pgx.ConnConfig, schema string, log *slog.Logger) *Watcher {
	return &Watcher{
		conn:    conn.Copy(),
		channel: channelPrefix + schema,
		log:     log,
		subs:    map[string]map[chan struct{}]struct{}{},
	}
}

// Subscribe returns a channel signalled when order id may have changed and
// a function that ends the subscription.
func (w *Watcher) Subscribe(id string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	w.mu.Lock()
	if w.subs[id] == nil {
		w.subs[id] = map[chan struct{}]struct{}{}
	}
	w.subs[id][ch] = struct{}{}
	w.mu.Unlock()
	return ch, func() {
		w.mu.Lock()
		delete(w.subs[id], ch)
		if len(w.subs[id]) == 0 {
			delete(w.subs, id)
		}
		w.mu.Unlock()
	}
}

// Reconnect delays after the listening connection was lost: the first
// try waits minBackoff, each one after doubles it up to maxBackoff, and a
// connection that listened for healthyAfter starts the count again (one
// lost at once, by a server or proxy that takes LISTEN and then drops
// the connection, does not: every reconnect re-reads each watched order).
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 5 * time.Second
)

// healthyAfter is how long a connection must have listened for its loss
// to start the reconnect delays again; a variable for tests.
var healthyAfter = maxBackoff

// Run listens until ctx ends, reconnecting after connection loss.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := minBackoff
	for {
		listened, err := w.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if listened >= healthyAfter {
			backoff = minBackoff
		}
		w.log.WarnContext(ctx, "order watch connection lost; reconnecting", "error", err, "retry_in", backoff)
		if !ctxsleep.Sleep(ctx, backoff) {
			return nil
		}
		backoff = min(backoff*2, maxBackoff)
	}
}

// listen listens on a connection of its own until ctx ends or the
// connection fails, and returns how long it listened (0: it never did).
func (w *Watcher) listen(ctx context.Context) (listened time.Duration, err error) {
	setupCtx, cancel := context.WithTimeout(ctx, setupTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(setupCtx, w.conn)
	if err != nil {
		return 0, fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(setupCtx, "LISTEN "+pgx.Identifier{w.channel}.Sanitize()); err != nil {
		return 0, fmt.Errorf("listen %s: %w", w.channel, err)
	}
	w.listening.Store(true)
	defer w.listening.Store(false)
	since := time.Now()
	// Changes made while no connection listened were missed.
	w.signalAll()
	for {
		// A quiet connection is pinged now and then: one that silently
		// died would otherwise leave every watcher waiting forever.
		waitCtx, cancel := context.WithTimeout(ctx, livenessInterval)
		n, err := conn.WaitForNotification(waitCtx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return time.Since(since), nil
		case errors.Is(err, context.DeadlineExceeded):
			pingCtx, cancel := context.WithTimeout(ctx, pingTimeout)
			err := conn.Ping(pingCtx)
			cancel()
			if err != nil {
				return time.Since(since), fmt.Errorf("ping listening connection: %w", err)
			}
		case err != nil:
			return time.Since(since), fmt.Errorf("wait for notification: %w", err)
		default:
			w.signal(n.Payload)
		}
	}
}

// Connecting and subscribing must take less than setupTimeout. The
// listening connection is checked after livenessInterval without a
// notification, and considered dead when a ping takes longer than
// pingTimeout.
const (
	setupTimeout     = 10 * time.Second
	livenessInterval = 5 * time.Second
	pingTimeout      = 3 * time.Second
)

func (w *Watcher) signal(id string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for ch := range w.subs[id] {
		notify(ch)
	}
}

func (w *Watcher) signalAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, subs := range w.subs {
		for ch := range subs {
			notify(ch)
		}
	}
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
