package privateinfra_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
)

// publicDir is a temporary directory the postgres user can enter.
func publicDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "privateinfra-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	return dir
}

func TestRabbitMQKillRestartAndStopApp(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := privateinfra.StartRabbitMQ(ctx, filepath.Join(publicDir(t), "rabbitmq"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Port == 5672 {
		t.Fatal("private node took the shared port")
	}
	// Its quorum queues' counts refresh every QuorumStatsLag.
	if out, err := r.Ctl(ctx, "eval", "application:get_env(rabbit, quorum_tick_interval)."); err != nil ||
		!strings.Contains(out, fmt.Sprintf("{ok,%d}", privateinfra.QuorumStatsLag.Milliseconds())) {
		t.Errorf("quorum_tick_interval: %q, %v; want %v", out, err, privateinfra.QuorumStatsLag)
	}

	declare := func() {
		t.Helper()
		conn, err := amqp.Dial(r.URL)
		if err != nil {
			t.Fatalf("dial: %v", err)
		}
		defer conn.Close()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("channel: %v", err)
		}
		if _, err := ch.QueueDeclare("probe", true, false, false, false, amqp.Table{"x-queue-type": "quorum"}); err != nil {
			t.Fatalf("declare: %v", err)
		}
	}
	declare()
	if err := r.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := r.Start(ctx); err != nil {
		t.Fatal(err)
	}
	qs, err := r.Queues(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := qs["probe"]; !ok {
		t.Errorf("durable queue lost over kill -9: %v", qs)
	}
	if err := r.StopApp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.StartApp(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.CloseAllConnections(ctx, "test"); err != nil {
		t.Fatal(err)
	}
	declare()
}

func TestPostgreSQLImmediateStopKeepsCommits(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	p, err := privateinfra.StartPostgreSQL(ctx, filepath.Join(publicDir(t), "pg"))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "CREATE TABLE t (v int); INSERT INTO t VALUES (42)"); err != nil {
		t.Fatal(err)
	}
	if err := p.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Error("connection survived an immediate stop")
	}
	if err := p.Start(ctx); err != nil {
		t.Fatal(err)
	}
	conn, err = pgx.Connect(ctx, p.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var v int
	if err := conn.QueryRow(ctx, "SELECT v FROM t").Scan(&v); err != nil || v != 42 {
		t.Errorf("after restart: v=%d err=%v, want 42", v, err)
	}
}
