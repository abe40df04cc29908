// Package postgrestest gives each test its own migrated PostgreSQL schema on
// the shared test server, and removes it when the test ends.
package postgrestest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/config"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/testproxy"
)

// DefaultURL is the test database used when ORDERMESH_TEST_DATABASE_URL is
// unset.
const DefaultURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"

// URL returns the test database URL: ORDERMESH_TEST_DATABASE_URL, or
// DefaultURL.
func URL() string {
	if u := os.Getenv("ORDERMESH_TEST_DATABASE_URL"); u != "" {
		return u
	}
	return DefaultURL
}

// Proxied starts a testproxy.Proxy in front of the test database (the
// host and port of URL) and returns it with URL rewritten to reach the
// database through it. A URL the proxy cannot stand in for (not a
// postgres:// URL with one host, or one naming its host in its query)
// fails the test rather than bypassing the proxy.
func Proxied(tb testing.TB) (*testproxy.Proxy, string) {
	tb.Helper()
	u, err := config.ParseURL(URL())
	if err != nil {
		tb.Fatalf("parse test database URL %s: %v", config.RedactURL(URL()), err)
	}
	q := u.Query()
	if (u.Scheme != "postgres" && u.Scheme != "postgresql") || u.Host == "" || strings.Contains(u.Host, ",") ||
		q.Has("host") || q.Has("hostaddr") || q.Has("port") {
		tb.Fatalf("cannot proxy test database URL %s: want postgres://host[:port]/... with one host and no host or port parameter", config.RedactURL(URL()))
	}
	target := u.Host
	if u.Port() == "" {
		target = net.JoinHostPort(u.Hostname(), "5432")
	}
	proxy := testproxy.New(tb, target)
	u.Host = proxy.Addr()
	return proxy, u.String()
}

// RandomSchema returns a fresh schema name, "t_" and 16 hex digits: short
// enough for channel names derived from it, and unique across concurrent
// test runs.
func RandomSchema(tb testing.TB) string {
	tb.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		tb.Fatalf("random schema name: %v", err)
	}
	return "t_" + hex.EncodeToString(b[:])
}

// NewSchema creates a schema with a random name, applies sources to it and
// returns a pool whose search_path is that schema, with the schema's name.
// When the test ends the pool is closed and the schema dropped with
// everything in it. An unreachable database fails the test (it is never
// skipped), naming the URL and the variable that sets it.
func NewSchema(tb testing.TB, sources ...postgres.Source) (*pgxpool.Pool, string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	schema := RandomSchema(tb)
	pool, err := postgres.Open(ctx, URL(), schema, postgres.WithApplicationName("ordermesh-test-"+schema))
	if err != nil {
		tb.Fatalf("PostgreSQL at %s is required (set ORDERMESH_TEST_DATABASE_URL): %v", config.RedactURL(URL()), err)
	}
	tb.Cleanup(func() {
		pool.Close()
		DropSchema(tb, schema)
	})
	if err := postgres.Migrate(ctx, pool, schema, sources...); err != nil {
		tb.Fatalf("migrate test schema: %v", err)
	}
	return pool, schema
}

// DropSchema drops schema and everything in it, on its own connection.
func DropSchema(tb testing.TB, schema string) {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, URL())
	if err != nil {
		tb.Errorf("drop schema %s: connect: %v", schema, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
		tb.Errorf("drop schema %s: %v", schema, err)
	}
}

// SeqTuplesRead returns how many rows of table, in the current schema, the
// session of tx has read in sequential scans and not yet reported to the
// statistics system. A session reports its counts after its transactions
// end, never within one, so the difference of two calls in one transaction
// is what that transaction read in between.
func SeqTuplesRead(tb testing.TB, tx pgx.Tx, table string) int64 {
	tb.Helper()
	var n int64
	if err := tx.QueryRow(context.Background(), `
		SELECT coalesce(sum(seq_tup_read), 0) FROM pg_stat_xact_user_tables
		WHERE schemaname = current_schema() AND relname = $1`, table).Scan(&n); err != nil {
		tb.Fatalf("read scan statistics of %s: %v", table, err)
	}
	return n
}
