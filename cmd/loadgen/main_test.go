package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/bench"
	"github.com/ordermesh/ordermesh/internal/loadgen"
)

func TestParse(t *testing.T) {
	noEnv := func(string) string { return "" }
	tests := []struct {
		name string
		args []string
		ok   bool
	}{
		{"closed loop by duration", []string{"--concurrency", "8", "--duration", "10s"}, true},
		{"open loop by count over REST", []string{"--rate", "100", "--count", "500", "--protocol", "rest"}, true},
		{"no load shape", []string{"--duration", "10s"}, false},
		{"both load shapes", []string{"--rate", "1", "--concurrency", "1", "--count", "1"}, false},
		{"no bound", []string{"--concurrency", "1"}, false},
		{"unknown protocol", []string{"--concurrency", "1", "--count", "1", "--protocol", "http3"}, false},
		{"no products", []string{"--concurrency", "1", "--count", "1", "--products", "0"}, false},
		{"stray argument", []string{"--concurrency", "1", "--count", "1", "extra"}, false},
		{"unknown flag", []string{"--bogus"}, false},
		{"negative rate", []string{"--concurrency", "2", "--rate", "-5", "--count", "1"}, false},
		{"rate not a number", []string{"--rate", "NaN", "--count", "1"}, false},
		{"infinite rate", []string{"--rate", "Inf", "--count", "1"}, false},
		{"negative concurrency", []string{"--concurrency", "-1", "--count", "1"}, false},
		{"negative duration", []string{"--concurrency", "1", "--duration", "-1s", "--count", "1"}, false},
		{"negative count", []string{"--concurrency", "1", "--count", "-1", "--duration", "1s"}, false},
		{"zero timeout", []string{"--concurrency", "1", "--count", "1", "--timeout", "0s"}, false},
		{"zero max in flight", []string{"--rate", "1", "--count", "1", "--max-inflight", "0"}, false},
		{"zero poll", []string{"--concurrency", "1", "--count", "1", "--poll", "0s"}, false},
		{"zero conns", []string{"--concurrency", "1", "--count", "1", "--conns", "0"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			_, err := parse(tt.args, noEnv, &stderr)
			if tt.ok && err != nil {
				t.Errorf("parse(%q) = %v, want ok; stderr: %s", tt.args, err, stderr.String())
			}
			if !tt.ok && !errors.Is(err, errUsage) {
				t.Errorf("parse(%q) = %v, want a usage error", tt.args, err)
			}
		})
	}
	t.Run("help is no usage error", func(t *testing.T) {
		var stderr bytes.Buffer
		if _, err := parse([]string{"-h"}, noEnv, &stderr); !errors.Is(err, flag.ErrHelp) || !strings.Contains(stderr.String(), "-concurrency") {
			t.Errorf("parse(-h) = %v, stderr %q; want flag.ErrHelp and the flags", err, stderr.String())
		}
	})
	t.Run("addresses default from the environment", func(t *testing.T) {
		env := map[string]string{"ORDERMESH_ADDR": "127.0.0.2:1", "ORDERMESH_HTTP_URL": "http://gw:9"}
		o, err := parse([]string{"--concurrency", "1", "--count", "1"}, func(k string) string { return env[k] }, &bytes.Buffer{})
		if err != nil {
			t.Fatal(err)
		}
		if o.addr != "127.0.0.2:1" || o.httpURL != "http://gw:9" || o.inventoryAddr != "127.0.0.1:50052" {
			t.Errorf("addresses %q %q %q", o.addr, o.httpURL, o.inventoryAddr)
		}
	})
}

// TestAgainstPlatform runs the command against the real binaries on the
// machine's RabbitMQ and PostgreSQL (an isolated database and prefix).
func TestAgainstPlatform(t *testing.T) {
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	if err := bench.Build(ctx, root, dir); err != nil {
		t.Fatal(err)
	}
	dbURL := os.Getenv("ORDERMESH_TEST_DATABASE_URL")
	if dbURL == "" {
		dbURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	}
	amqpURL := os.Getenv("ORDERMESH_TEST_AMQP_URL")
	if amqpURL == "" {
		amqpURL = "amqp://guest:guest@127.0.0.1:5672/"
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	pf, err := bench.StartPlatform(ctx, bench.PlatformConfig{BinDir: dir, AdminDatabaseURL: dbURL, AMQPURL: amqpURL,
		ID: "lg" + hex.EncodeToString(b[:]), Names: append(append([]string{}, bench.Services...), "gateway"), LogDir: dir})
	if err != nil {
		t.Fatalf("start the platform (RabbitMQ at %s and PostgreSQL at %s are required): %v", amqpURL, dbURL, err)
	}
	t.Cleanup(func() {
		if err := pf.Close(); err != nil {
			t.Errorf("clean up: %v", err)
		}
	})
	addrs := []string{"--addr", pf.Procs["order"].Addr, "--inventory-addr", pf.Procs["inventory"].Addr, "--http", pf.HTTPURL(),
		"--products", "3", "--product-prefix", "LGTEST", "--poll", "200ms", "--drain-timeout", "1m"}
	noEnv := func(string) string { return "" }

	t.Run("grpc closed loop, json", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--concurrency", "4", "--count", "40", "--json"}, addrs...)
		if err := run(ctx, args, noEnv, &stdout, &stderr, false); err != nil {
			t.Fatalf("run: %v\nstderr: %s", err, stderr.String())
		}
		var sum loadgen.Summary
		if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
			t.Fatalf("decode summary: %v\n%s", err, stdout.String())
		}
		if sum.Created != 40 || sum.Failed != 0 || sum.Final["CONFIRMED"] != 40 || sum.TerminalLatency.Count != 40 {
			t.Errorf("created %d, failed %d (%v), final %v, %d terminal latencies; want 40 created and confirmed",
				sum.Created, sum.Failed, sum.Errors, sum.Final, sum.TerminalLatency.Count)
		}
		if sum.ConfirmedPerSec <= 0 || sum.CreateLatency.P99 <= 0 || sum.TerminalLatency.P50 < sum.CreateLatency.P50 {
			t.Errorf("implausible figures: %+v", sum)
		}
		if !strings.Contains(stderr.String(), "sent 40") {
			t.Errorf("no progress line on stderr: %q", stderr.String())
		}
	})
	t.Run("rest open loop, table", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		args := append([]string{"--protocol", "rest", "--rate", "40", "--count", "20"}, addrs...)
		if err := run(ctx, args, noEnv, &stdout, &stderr, false); err != nil {
			t.Fatalf("run: %v\nstderr: %s", err, stderr.String())
		}
		for _, want := range []string{"rest, open loop at 40/s", "sent 20, created 20, failed 0", "CONFIRMED 20", "errors       none", "create→terminal"} {
			if !strings.Contains(stdout.String(), want) {
				t.Errorf("summary lacks %q:\n%s", want, stdout.String())
			}
		}
	})
	t.Run("errors are counted by code", func(t *testing.T) {
		var stdout, stderr bytes.Buffer
		// Nothing listens on port 1: every CreateOrder is UNAVAILABLE.
		args := []string{"--concurrency", "2", "--count", "4", "--addr", "127.0.0.1:1", "--no-stock", "--no-track", "--json", "--timeout", "2s"}
		if err := run(ctx, args, noEnv, &stdout, &stderr, false); err != nil {
			t.Fatalf("run: %v", err)
		}
		var sum loadgen.Summary
		if err := json.Unmarshal(stdout.Bytes(), &sum); err != nil {
			t.Fatal(err)
		}
		if sum.Failed != 4 || sum.Errors["UNAVAILABLE"] != 4 {
			t.Errorf("failed %d, errors %v; want 4 UNAVAILABLE", sum.Failed, sum.Errors)
		}
	})
}
