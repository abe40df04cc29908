package store_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/logtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// TestWatcherReconnectDelays: a listening connection lost again and
// again, each time after it had listened for a while, is each time
// reconnected after the shortest delay; one lost as soon as it listened
// (a server or proxy that takes LISTEN, then drops the connection) is
// reconnected after delays that grow.
func TestWatcherReconnectDelays(t *testing.T) {
	store.SetHealthyAfter(t, 300*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, schema := postgrestest.NewSchema(t, store.Migrations)
	log, logs := logtest.New()
	w := store.NewWatcher(pool.Config().ConnConfig, schema, log)
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Run(runCtx) }()
	defer func() {
		stop()
		<-done
	}()
	listening := func(what string) {
		t.Helper()
		for deadline := time.Now().Add(30 * time.Second); !w.Listening(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the watcher is not listening 30s %s", what)
			}
		}
	}
	// lose ends the watcher's connection, the one listening on its
	// schema's channel, and waits until it has reconnected.
	lose := func(i int) {
		t.Helper()
		var ended bool
		err := pool.QueryRow(ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()`, schema).Scan(&ended)
		if err != nil || !ended {
			t.Fatalf("end the watcher's connection (loss %d): %v, %v", i, ended, err)
		}
		for deadline := time.Now().Add(10 * time.Second); w.Listening(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the watcher still listens 10s after its connection was ended (loss %d)", i)
			}
		}
		listening("after its connection was ended")
	}
	// delays returns the reconnect delays logged so far, in nanoseconds.
	delays := func() []string {
		var out []string
		for line := range strings.Lines(logs.String()) {
			if _, after, ok := strings.Cut(line, `"retry_in":`); ok {
				out = append(out, strings.TrimRight(strings.SplitN(after, ",", 2)[0], "}\n"))
			}
		}
		return out
	}
	listening("after it started")
	for i := range 3 {
		time.Sleep(400 * time.Millisecond) // listened for longer than healthyAfter
		lose(i + 1)
	}
	if got, want := delays(), []string{"100000000", "100000000", "100000000"}; !slices.Equal(got, want) {
		t.Errorf("after connections that had listened a while, reconnect delays %v ns, want %v", got, want)
	}
	// The delay doubles after each wait: the first of these waits twice
	// the one before it.
	for i := range 3 {
		lose(i + 4) // at once
	}
	if got, want := delays()[3:], []string{"200000000", "400000000", "800000000"}; !slices.Equal(got, want) {
		t.Errorf("after connections lost as soon as they listened, reconnect delays %v ns, want %v", got, want)
	}
}
