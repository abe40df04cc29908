package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
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
	url     string
	channel string
	log     *slog.Logger

	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
}

// NewWatcher returns a Watcher for the orders in schema of the database at
// url; Run must be running for it to deliver anything.
func NewWatcher(url, schema string, log *slog.Logger) *Watcher {
	return &Watcher{
		url:     url,
		channel: "orders." + schema,
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

// Run listens until ctx ends, reconnecting after connection loss.
func (w *Watcher) Run(ctx context.Context) error {
	backoff := 100 * time.Millisecond
	for {
		err := w.listen(ctx)
		if ctx.Err() != nil {
			return nil
		}
		w.log.WarnContext(ctx, "order watch connection lost; reconnecting", "error", err, "retry_in", backoff)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
}

func (w *Watcher) listen(ctx context.Context) error {
	conn, err := pgx.Connect(ctx, w.url)
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Second)
		defer cancel()
		_ = conn.Close(closeCtx)
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{w.channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen %s: %w", w.channel, err)
	}
	// Changes made while no connection listened were missed.
	w.signalAll()
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) && ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("wait for notification: %w", err)
		}
		w.signal(n.Payload)
	}
}

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
