package store_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/logtest"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// TestWatcherReconnectsAtOnceAfterEachLoss: a listening connection lost
// again and again, each time after it listened, is each time reconnected
// after the shortest delay; the delay grows only while reconnecting
// fails.
func TestWatcherReconnectsAtOnceAfterEachLoss(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pool, schema := postgrestest.NewSchema(t, store.Migrations)
	log, logs := logtest.New()
	w := store.NewWatcher(postgrestest.URL(), schema, log)
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
	listening("after it started")
	const losses = 5
	for i := range losses {
		// The watcher's connection is the one listening on its schema's
		// channel.
		var ended bool
		err := pool.QueryRow(ctx, `
			SELECT pg_terminate_backend(pid) FROM pg_stat_activity
			WHERE query LIKE 'LISTEN %' AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()`, schema).Scan(&ended)
		if err != nil || !ended {
			t.Fatalf("end the watcher's connection (loss %d): %v, %v", i+1, ended, err)
		}
		for deadline := time.Now().Add(10 * time.Second); w.Listening(); time.Sleep(time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("the watcher still listens 10s after its connection was ended (loss %d)", i+1)
			}
		}
		listening("after its connection was ended")
	}
	// Each loss logged its delay, in nanoseconds: all the shortest.
	var delays []string
	for line := range strings.Lines(logs.String()) {
		if _, after, ok := strings.Cut(line, `"retry_in":`); ok {
			delays = append(delays, strings.TrimRight(strings.SplitN(after, ",", 2)[0], "}\n"))
		}
	}
	if len(delays) != losses {
		t.Fatalf("%d reconnects logged, want %d; the log:\n%s", len(delays), losses, logs.String())
	}
	for i, d := range delays {
		if d != "100000000" {
			t.Errorf("reconnect %d waited %s ns, want 100000000 (100ms) after a connection that listened", i+1, d)
		}
	}
}
