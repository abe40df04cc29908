package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"
)

func TestRunRefusesANegativeOrderTimeout(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env := map[string]string{envOrderTimeout: "-1m"}
	err := run(ctx, func(k string) string { return env[k] }, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), envOrderTimeout) {
		t.Fatalf("run = %v, want an error naming %s", err, envOrderTimeout)
	}
}

func TestRunRefusesASchemaTooLongForItsChannel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// 57 bytes: a schema name PostgreSQL takes, but "orders." and it make
	// 64, longer than a channel name may be.
	env := map[string]string{envDatabaseSchema: strings.Repeat("s", 57)}
	err := run(ctx, func(k string) string { return env[k] }, io.Discard, nil)
	if err == nil || !strings.Contains(err.Error(), envDatabaseSchema+`: "sss`) || !strings.Contains(err.Error(), "at most 56") {
		t.Fatalf("run = %v, want an error naming %s and its limit", err, envDatabaseSchema)
	}
}

func TestExpiryInterval(t *testing.T) {
	for timeout, want := range map[time.Duration]time.Duration{
		2 * time.Second:  time.Second,
		20 * time.Second: 5 * time.Second,
		15 * time.Minute: time.Minute,
	} {
		if got := expiryInterval(timeout); got != want {
			t.Errorf("expiryInterval(%s) = %s, want %s", timeout, got, want)
		}
	}
}

func TestLadderLength(t *testing.T) {
	if got := ladderLength([]time.Duration{time.Second, 10 * time.Second, time.Minute}); got != 71*time.Second {
		t.Errorf("ladderLength(1s,10s,60s) = %s, want 1m11s", got)
	}
	if got := ladderLength(nil); got != 0 {
		t.Errorf("ladderLength() = %s, want 0", got)
	}
}

// TestRunWarnsOfATimeoutShorterThanTheLadder: an order timeout shorter
// than the retry ladder rejects orders whose outcomes are still being
// retried; the service starts, and says so.
func TestRunWarnsOfATimeoutShorterThanTheLadder(t *testing.T) {
	const warning = "ORDERMESH_ORDER_TIMEOUT is shorter than the retry ladder"
	short := startService(t, map[string]string{envOrderTimeout: "30s", "ORDERMESH_RETRY_DELAYS": "1s,10s,60s"})
	if !strings.Contains(short.logs.String(), warning) || !strings.Contains(short.logs.String(), `"ladder":71000000000`) {
		t.Errorf("with a timeout of 30s and a ladder of 71s, the log did not warn; the log:\n%s", short.logs.String())
	}
	long := startService(t, map[string]string{envOrderTimeout: "2m", "ORDERMESH_RETRY_DELAYS": "1s,10s,60s"})
	if strings.Contains(long.logs.String(), warning) {
		t.Errorf("with a timeout of 2m and a ladder of 71s, the log warned; the log:\n%s", long.logs.String())
	}
}
