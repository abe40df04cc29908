package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
	"sync"
	"testing"
	"testing/fstest"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// domain is a two-file source whose second file counts its own runs, so a
// migration applied twice shows.
var domain = postgres.Source{Name: "domain", FS: fstest.MapFS{
	"migrations/001_widgets.sql": {Data: []byte(`
		CREATE TABLE widgets (id bigint PRIMARY KEY, name text NOT NULL);
		CREATE TABLE runs (n integer NOT NULL);`)},
	"migrations/002_seed.sql": {Data: []byte(`
		INSERT INTO widgets VALUES (1, 'first');
		INSERT INTO runs VALUES (1);`)},
	"migrations/README.md": {Data: []byte("not a migration")},
}}

// platform numbers its files independently of domain.
var platform = postgres.Source{Name: "platform", FS: fstest.MapFS{
	"001_things.sql": {Data: []byte(`CREATE TABLE things (id bigint PRIMARY KEY);`)},
}}

// freshSchema returns a pool on a random schema that has no migrations yet.
func freshSchema(t *testing.T) (*pgxpool.Pool, string) {
	t.Helper()
	return postgrestest.NewSchema(t)
}

func count(t *testing.T, db *pgxpool.Pool, query string, args ...any) int {
	t.Helper()
	var n int
	if err := db.QueryRow(context.Background(), query, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", query, err)
	}
	return n
}

func TestMigrateAppliesOnceAndIsIdempotent(t *testing.T) {
	ctx := context.Background()
	pool, schema := freshSchema(t)

	for run := 1; run <= 3; run++ {
		if err := postgres.Migrate(ctx, pool, schema, domain, platform); err != nil {
			t.Fatalf("run %d: Migrate: %v", run, err)
		}
	}
	if got := count(t, pool, `SELECT count(*) FROM runs`); got != 1 {
		t.Errorf("seed migration ran %d times, want 1", got)
	}
	rows, err := pool.Query(ctx, `SELECT source, version, file FROM schema_migrations ORDER BY source, version`)
	if err != nil {
		t.Fatal(err)
	}
	type applied struct {
		Source  string
		Version int
		File    string
	}
	got, err := pgx.CollectRows(rows, pgx.RowToStructByPos[applied])
	if err != nil {
		t.Fatal(err)
	}
	want := []applied{
		{"domain", 1, "001_widgets.sql"},
		{"domain", 2, "002_seed.sql"},
		{"platform", 1, "001_things.sql"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("schema_migrations (-want +got):\n%s", diff)
	}
	// The tables live in the test schema, not in public.
	if got := count(t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('widgets', 'runs', 'things')`, schema); got != 3 {
		t.Errorf("tables in %s: %d, want 3", schema, got)
	}
}

// TestMigrateIntoASchemaMadeForTheRole: a role that owns a schema made for
// it, and may not create schemas in the database, migrates it.
func TestMigrateIntoASchemaMadeForTheRole(t *testing.T) {
	ctx := context.Background()
	admin, err := pgx.Connect(ctx, postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	schema := postgrestest.RandomSchema(t)
	role := "ordermesh_" + schema
	var pool *pgxpool.Pool
	t.Cleanup(func() {
		if pool != nil {
			pool.Close()
		}
		for _, stmt := range []string{"DROP SCHEMA IF EXISTS " + schema + " CASCADE", "DROP ROLE IF EXISTS " + role} {
			if _, err := admin.Exec(context.Background(), stmt); err != nil {
				t.Errorf("%s: %v", stmt, err)
			}
		}
		admin.Close(context.Background())
	})
	for _, stmt := range []string{
		"CREATE ROLE " + role + " LOGIN",
		"CREATE SCHEMA " + schema + " AUTHORIZATION " + role,
	} {
		if _, err := admin.Exec(ctx, stmt); err != nil {
			t.Fatalf("%s: %v", stmt, err)
		}
	}
	var mayCreate bool
	if err := admin.QueryRow(ctx, "SELECT has_database_privilege($1, current_database(), 'CREATE')", role).Scan(&mayCreate); err != nil || mayCreate {
		t.Fatalf("the role may create schemas (%v); the test shows nothing", err)
	}
	cfg, err := pgxpool.ParseConfig(postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	cfg.ConnConfig.User = role
	if pool, err = pgxpool.NewWithConfig(ctx, cfg); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, schema, domain, platform); err != nil {
		t.Fatalf("Migrate as the schema's owner: %v", err)
	}
	if n := count(t, pool, `SELECT count(*) FROM `+schema+`.schema_migrations`); n != 3 {
		t.Errorf("schema_migrations has %d rows, want 3", n)
	}
	if n := count(t, pool, `SELECT count(*) FROM `+schema+`.widgets`); n != 1 {
		t.Errorf("widgets has %d rows, want the seeded 1", n)
	}
}

func TestMigrateConcurrentMigratorsDoNotCollide(t *testing.T) {
	ctx := context.Background()
	pool, schema := freshSchema(t)

	errs := atOnce(schema, 8, func(p *pgxpool.Pool, _ int) error {
		return postgres.Migrate(ctx, p, schema, domain, platform)
	})
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent Migrate: %v", err)
	}
	if got := count(t, pool, `SELECT count(*) FROM runs`); got != 1 {
		t.Errorf("seed migration ran %d times, want 1", got)
	}
	if got := count(t, pool, `SELECT count(*) FROM schema_migrations`); got != 3 {
		t.Errorf("schema_migrations has %d rows, want 3", got)
	}
}

// atOnce runs migrate n times at once, each with a pool of its own on
// schema, like separate replicas, and returns their errors.
func atOnce(schema string, n int, migrate func(p *pgxpool.Pool, i int) error) []error {
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() {
			p, err := postgres.Open(context.Background(), postgrestest.URL(), schema, postgres.WithMaxConns(2))
			if err != nil {
				errs[i] = err
				return
			}
			defer p.Close()
			errs[i] = migrate(p, i)
		})
	}
	wg.Wait()
	return errs
}

// heldTable returns a schema with table t, a transaction holding t (an
// ACCESS SHARE lock, until it ends), and a source whose next migration
// alters t, which needs the lock that transaction's conflicts with.
func heldTable(t *testing.T) (*pgxpool.Pool, string, pgx.Tx, postgres.Source) {
	t.Helper()
	ctx := context.Background()
	pool, schema := freshSchema(t)
	first := postgres.Source{Name: "busy", FS: fstest.MapFS{"001_t.sql": {Data: []byte(`CREATE TABLE t (id int);`)}}}
	if err := postgres.Migrate(ctx, pool, schema, first); err != nil {
		t.Fatal(err)
	}
	holder, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Rollback(context.Background()) })
	if _, err := holder.Exec(ctx, `SELECT * FROM t`); err != nil {
		t.Fatal(err)
	}
	second := postgres.Source{Name: "busy", FS: fstest.MapFS{
		"001_t.sql":     {Data: []byte(`CREATE TABLE t (id int);`)},
		"002_alter.sql": {Data: []byte(`ALTER TABLE t ADD COLUMN name text;`)},
	}}
	return pool, schema, holder, second
}

// TestMigrationGivesUpWaitingForALock: a migration that needs a table a
// long transaction holds fails once its attempts, each bounded by the lock
// timeout, have gone on for the patience, rather than queueing every later
// query on that table behind it; once the table is free, the same
// migration applies.
func TestMigrationGivesUpWaitingForALock(t *testing.T) {
	defer postgres.SetMigrationLockTimeout(300 * time.Millisecond)()
	defer postgres.SetMigrationLockPatience(time.Second)()
	ctx := context.Background()
	pool, schema, holder, second := heldTable(t)
	var err error
	err = postgres.Migrate(ctx, pool, schema, second)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
		t.Fatalf("Migrate behind a transaction holding the table = %v, want lock_not_available (55P03)", err)
	}
	// Stopped while it waits to try again, it says so.
	restore := postgres.SetMigrationLockPatience(time.Minute)
	stopped, stop := context.WithTimeout(ctx, 500*time.Millisecond)
	err = postgres.Migrate(stopped, pool, schema, second)
	stop()
	restore()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Migrate stopped while waiting for its lock = %v, want the context's error", err)
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, schema, second); err != nil {
		t.Fatalf("Migrate once the table is free: %v", err)
	}
}

// TestMigrationTriesAgainForItsLock: a migration that could not have its
// table's lock in time (a transaction held it) tries again after a pause,
// each attempt waiting no longer than the lock timeout, and applies once
// the table is free, without failing the start; meanwhile queries on the
// table are held up only while an attempt waits.
func TestMigrationTriesAgainForItsLock(t *testing.T) {
	defer postgres.SetMigrationLockTimeout(200 * time.Millisecond)()
	defer postgres.SetMigrationLockPatience(30 * time.Second)()
	ctx := context.Background()
	pool, schema, holder, second := heldTable(t)
	migrated := make(chan error, 1)
	go func() { migrated <- postgres.Migrate(ctx, pool, schema, second) }()
	time.Sleep(time.Second) // several attempts
	// A writer queues behind an attempt only while it waits for its lock:
	// the insert is done long before the holder lets go.
	if err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SET LOCAL statement_timeout = '5s'`); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, `INSERT INTO t (id) VALUES (1)`)
		return err
	}); err != nil {
		t.Errorf("insert while the migration tries again: %v", err)
	}
	select {
	case err := <-migrated:
		t.Fatalf("Migrate returned %v while the table was held", err)
	default:
	}
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate once the table was free: %v", err)
	}
	if _, err := pool.Exec(ctx, `SELECT name FROM t`); err != nil {
		t.Errorf("the migration did not apply: %v", err)
	}
}

// TestMigrationPatienceStartsAtTheFirstLockWait: the patience counts from
// the first migration that could not have its lock, not from the start:
// a long migration before it (an index build, a backfill) does not use
// it up.
func TestMigrationPatienceStartsAtTheFirstLockWait(t *testing.T) {
	defer postgres.SetMigrationLockTimeout(200 * time.Millisecond)()
	defer postgres.SetMigrationLockPatience(3 * time.Second)()
	ctx := context.Background()
	pool, schema, holder, _ := heldTable(t)
	slowThenAlter := postgres.Source{Name: "busy", FS: fstest.MapFS{
		"001_t.sql":     {Data: []byte(`CREATE TABLE t (id int);`)},
		"002_slow.sql":  {Data: []byte(`SELECT pg_sleep(3.5);`)},
		"003_alter.sql": {Data: []byte(`ALTER TABLE t ADD COLUMN name text;`)},
	}}
	migrated := make(chan error, 1)
	go func() { migrated <- postgres.Migrate(ctx, pool, schema, slowThenAlter) }()
	// The alter's first attempt fails at about 3.7 s; its patience lasts
	// until about 6.7 s.
	time.Sleep(4500 * time.Millisecond)
	if err := holder.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-migrated; err != nil {
		t.Fatalf("Migrate = %v; want the alter applied once the table was free, within its patience", err)
	}
}

// TestMigrateOwnedRefusesAnotherOwner: two services given one schema
// would each take the other's events for duplicates in their shared
// inbox; the second to migrate it is refused, whether it comes after the
// first or alongside it. The owner itself may come back with other
// sources (a newer version's, or an older one's after a rollback).
func TestMigrateOwnedRefusesAnotherOwner(t *testing.T) {
	other := postgres.Source{Name: "other", FS: fstest.MapFS{
		"001_gadgets.sql": {Data: []byte(`CREATE TABLE gadgets (id bigint PRIMARY KEY);`)},
	}}
	ctx := context.Background()

	t.Run("one after the other", func(t *testing.T) {
		pool, schema := freshSchema(t)
		if err := postgres.MigrateOwned(ctx, pool, schema, "widgets", domain, platform); err != nil {
			t.Fatal(err)
		}
		err := postgres.MigrateOwned(ctx, pool, schema, "gadgets", other, platform)
		if !errors.Is(err, postgres.ErrSchemaTaken) || !strings.Contains(err.Error(), "widgets") {
			t.Fatalf("MigrateOwned by another owner = %v, want ErrSchemaTaken naming widgets", err)
		}
		if got := count(t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'gadgets'`, schema); got != 0 {
			t.Errorf("the refused owner's table was created")
		}
		// The owner comes back with fewer sources, and with more.
		for _, srcs := range [][]postgres.Source{{domain}, {domain, platform, other}} {
			if err := postgres.MigrateOwned(ctx, pool, schema, "widgets", srcs...); err != nil {
				t.Fatalf("MigrateOwned by the schema's owner: %v", err)
			}
		}
	})

	t.Run("a schema migrated before owners were recorded", func(t *testing.T) {
		pool, schema := freshSchema(t)
		if err := postgres.Migrate(ctx, pool, schema, domain, platform); err != nil {
			t.Fatal(err)
		}
		err := postgres.MigrateOwned(ctx, pool, schema, "gadgets", other, platform)
		if !errors.Is(err, postgres.ErrSchemaTaken) || !strings.Contains(err.Error(), "domain") {
			t.Fatalf("MigrateOwned of a schema holding another service's migrations = %v, want ErrSchemaTaken naming domain", err)
		}
		if got := count(t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'schema_owner'`, schema); got != 0 {
			t.Errorf("the refused claim was recorded")
		}
		if err := postgres.MigrateOwned(ctx, pool, schema, "domain", domain, platform); err != nil {
			t.Fatalf("MigrateOwned by the service whose source the schema holds: %v", err)
		}
	})

	t.Run("at once", func(t *testing.T) {
		for range 5 {
			pool, schema := freshSchema(t)
			owners := []string{"widgets", "gadgets"}
			errs := atOnce(schema, len(owners), func(p *pgxpool.Pool, i int) error {
				return postgres.MigrateOwned(ctx, p, schema, owners[i], domain, platform)
			})
			refused := 0
			for _, err := range errs {
				switch {
				case errors.Is(err, postgres.ErrSchemaTaken):
					refused++
				case err != nil:
					t.Fatalf("MigrateOwned: %v", err)
				}
			}
			if refused != 1 {
				t.Fatalf("of two owners migrating one empty schema at once, %d were refused, want 1 (errors: %v)", refused, errs)
			}
			if got := count(t, pool, `SELECT count(*) FROM schema_owner`); got != 1 {
				t.Fatalf("schema_owner has %d rows, want 1", got)
			}
		}
	})
}

func TestMigrateFailingFileRollsBackAndStops(t *testing.T) {
	ctx := context.Background()
	pool, schema := freshSchema(t)
	bad := postgres.Source{Name: "bad", FS: fstest.MapFS{
		"001_ok.sql":      {Data: []byte(`CREATE TABLE ok (id int);`)},
		"002_broken.sql":  {Data: []byte(`CREATE TABLE half (id int); SELECT * FROM no_such_table;`)},
		"003_skipped.sql": {Data: []byte(`CREATE TABLE skipped (id int);`)},
	}}
	err := postgres.Migrate(ctx, pool, schema, bad)
	if err == nil || !strings.Contains(err.Error(), "002_broken.sql") {
		t.Fatalf("Migrate error = %v, want one naming 002_broken.sql", err)
	}
	tables := count(t, pool, `SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename IN ('ok', 'half', 'skipped')`, schema)
	if tables != 1 {
		t.Errorf("tables after failed migration: %d, want only 'ok'", tables)
	}
	if got := count(t, pool, `SELECT count(*) FROM schema_migrations`); got != 1 {
		t.Errorf("schema_migrations has %d rows, want 1", got)
	}
}

func TestMigrateRefusesChangedFile(t *testing.T) {
	ctx := context.Background()
	pool, schema := freshSchema(t)
	v1 := postgres.Source{Name: "s", FS: fstest.MapFS{"001_a.sql": {Data: []byte(`CREATE TABLE a (id int);`)}}}
	v2 := postgres.Source{Name: "s", FS: fstest.MapFS{"001_a.sql": {Data: []byte(`CREATE TABLE a (id bigint);`)}}}
	if err := postgres.Migrate(ctx, pool, schema, v1); err != nil {
		t.Fatal(err)
	}
	if err := postgres.Migrate(ctx, pool, schema, v2); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Fatalf("Migrate with an edited file: %v, want a checksum error", err)
	}
}

func TestMigrateRejectsBadSources(t *testing.T) {
	tests := []struct {
		name string
		src  postgres.Source
		want string
	}{
		{"no name", postgres.Source{FS: fstest.MapFS{}}, "no name"},
		{"nil fs", postgres.Source{Name: "x"}, "nil FS"},
		{"no version", postgres.Source{Name: "x", FS: fstest.MapFS{"orders.sql": {}}}, "positive version"},
		{"zero version", postgres.Source{Name: "x", FS: fstest.MapFS{"000_orders.sql": {}}}, "positive version"},
		{"not a number", postgres.Source{Name: "x", FS: fstest.MapFS{"v1_orders.sql": {}}}, "positive version"},
		{"duplicate version", postgres.Source{Name: "x", FS: fstest.MapFS{"1_a.sql": {}, "001_b.sql": {}}}, "share version 1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Sources are read before any connection is used.
			err := postgres.Migrate(context.Background(), nil, "unused", tt.src)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Migrate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestOpenSetsSearchPathForAwkwardSchemaNames(t *testing.T) {
	ctx := context.Background()
	// Mixed case and a reserved word need quoting everywhere.
	schema := "Order_" + postgrestest.RandomSchema(t)
	t.Cleanup(func() { postgrestest.DropSchema(t, schema) })
	pool, err := postgres.Open(ctx, postgrestest.URL(), schema)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	if err := postgres.Migrate(ctx, pool, schema, platform); err != nil {
		t.Fatal(err)
	}
	var current string
	if err := pool.QueryRow(ctx, `SELECT current_schema()`).Scan(&current); err != nil {
		t.Fatal(err)
	}
	if current != schema {
		t.Errorf("current_schema() = %q, want %q", current, schema)
	}
	if _, err := pool.Exec(ctx, `INSERT INTO things VALUES (1)`); err != nil {
		t.Errorf("unqualified insert: %v", err)
	}
	if err := postgres.Ping(ctx, pool); err != nil {
		t.Errorf("Ping: %v", err)
	}
}

func TestOpenStatementCacheCapacity(t *testing.T) {
	withParam := func(param string) string {
		u, err := url.Parse(postgrestest.URL())
		if err != nil {
			t.Fatalf("parse test database url: %v", err)
		}
		q := u.Query()
		q.Set(param, "128")
		u.RawQuery = q.Encode()
		return u.String()
	}
	tests := []struct {
		name                    string
		url                     string
		wantStatement, wantDesc int
	}{
		{name: "defaults", url: postgrestest.URL(), wantStatement: postgres.DefaultStatementCacheCapacity, wantDesc: postgres.DefaultStatementCacheCapacity},
		{name: "statement cache set in the url", url: withParam("statement_cache_capacity"), wantStatement: 128, wantDesc: postgres.DefaultStatementCacheCapacity},
		{name: "description cache set in the url", url: withParam("description_cache_capacity"), wantStatement: postgres.DefaultStatementCacheCapacity, wantDesc: 128},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool, err := postgres.Open(context.Background(), tt.url, "")
			if err != nil {
				t.Fatal(err)
			}
			defer pool.Close()
			cc := pool.Config().ConnConfig
			if cc.StatementCacheCapacity != tt.wantStatement || cc.DescriptionCacheCapacity != tt.wantDesc {
				t.Errorf("statement, description cache capacity = %d, %d; want %d, %d",
					cc.StatementCacheCapacity, cc.DescriptionCacheCapacity, tt.wantStatement, tt.wantDesc)
			}
		})
	}
}

func TestOpenFailsFastOnUnreachableDatabase(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// Port 1 is closed on any sane host.
	_, err := postgres.Open(ctx, "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable", "x")
	if err == nil {
		t.Fatal("Open on a closed port succeeded")
	}
}

func TestWithTx(t *testing.T) {
	ctx := context.Background()
	pool, _ := postgrestest.NewSchema(t, platform)
	errBoom := errors.New("boom")

	tests := []struct {
		name    string
		id      int
		fnErr   error
		wantErr error
		wantRow bool
	}{
		{name: "commit on nil", id: 1, wantRow: true},
		{name: "rollback on error", id: 2, fnErr: errBoom, wantErr: errBoom},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO things VALUES ($1)`, tt.id); err != nil {
					return err
				}
				return tt.fnErr
			})
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("WithTx = %v, want %v", err, tt.wantErr)
			}
			if got := count(t, pool, `SELECT count(*) FROM things WHERE id = $1`, tt.id) == 1; got != tt.wantRow {
				t.Errorf("row present = %v, want %v", got, tt.wantRow)
			}
		})
	}
	t.Run("rollback on panic", func(t *testing.T) {
		func() {
			defer func() { _ = recover() }()
			_ = postgres.WithTx(ctx, pool, func(tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO things VALUES (3)`); err != nil {
					return err
				}
				panic("handler bug")
			})
		}()
		if got := count(t, pool, `SELECT count(*) FROM things WHERE id = 3`); got != 0 {
			t.Errorf("row of a panicking transaction committed")
		}
		// The pool is still usable: the connection went back clean.
		if err := postgres.Ping(ctx, pool); err != nil {
			t.Errorf("Ping after panic: %v", err)
		}
	})
}

func TestCreateDatabaseIfMissing(t *testing.T) {
	ctx := context.Background()
	name := "ordermesh_" + postgrestest.RandomSchema(t)
	cfg, err := pgx.ParseConfig(postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	// With a pool parameter, which Open takes and the server would refuse.
	url := fmt.Sprintf("postgres://%s@%s:%d/%s?sslmode=disable&pool_max_conns=3", cfg.User, cfg.Host, cfg.Port, name)
	t.Cleanup(func() {
		conn, err := pgx.Connect(ctx, postgrestest.URL())
		if err != nil {
			t.Errorf("drop database: %v", err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			t.Errorf("drop database: %v", err)
		}
	})

	// Several callers at once, then again once it exists.
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = postgres.CreateDatabaseIfMissing(ctx, url) })
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatalf("concurrent CreateDatabaseIfMissing: %v", err)
	}
	if err := postgres.CreateDatabaseIfMissing(ctx, url); err != nil {
		t.Fatalf("CreateDatabaseIfMissing on an existing database: %v", err)
	}
	// A database that exists needs no maintenance database: a role that
	// may not connect to one can use it.
	restore := postgres.SetMaintenanceDatabase("ordermesh_no_such_database")
	err = postgres.CreateDatabaseIfMissing(ctx, url)
	restore()
	if err != nil {
		t.Fatalf("CreateDatabaseIfMissing on an existing database, with no maintenance database: %v", err)
	}
	pool, err := postgres.Open(ctx, url, "")
	if err != nil {
		t.Fatalf("open created database: %v", err)
	}
	pool.Close()
}

// beginCounter is a pgx tracer counting BEGINs sent as statements of
// their own (a batch's statements are not traced as queries).
type beginCounter struct {
	mu sync.Mutex
	n  int
}

func (c *beginCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, d pgx.TraceQueryStartData) context.Context {
	if strings.HasPrefix(strings.ToLower(strings.TrimSpace(d.SQL)), "begin") {
		c.mu.Lock()
		c.n++
		c.mu.Unlock()
	}
	return ctx
}

func (c *beginCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

func (c *beginCounter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

func TestWithTxBatch(t *testing.T) {
	ctx := context.Background()
	plain, _ := postgrestest.NewSchema(t, platform)
	begins := &beginCounter{}
	cfg := plain.Config()
	cfg.ConnConfig.Tracer = begins
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	errBoom := errors.New("boom")
	conn, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)

	// The tracer sees a BEGIN of its own.
	if err := postgres.WithTx(ctx, pool, func(pgx.Tx) error { return nil }); err != nil {
		t.Fatal(err)
	}
	if n := begins.count(); n != 1 {
		t.Fatalf("the tracer counted %d BEGINs of WithTx, want 1", n)
	}

	// run inserts id with a queued statement and reads the transaction id
	// both there and in fn, which returns fnErr.
	run := func(db postgres.TxBeginner, id int, fnErr error) (queuedTx, fnTx int64, fnRan bool, err error) {
		err = postgres.WithTxBatch(ctx, db, func(b *pgx.Batch) {
			b.Queue(`INSERT INTO things VALUES ($1) RETURNING txid_current()`, id).QueryRow(func(r pgx.Row) error {
				return r.Scan(&queuedTx)
			})
		}, func(tx pgx.Tx) error {
			fnRan = true
			if err := tx.QueryRow(ctx, `SELECT txid_current()`).Scan(&fnTx); err != nil {
				return err
			}
			return fnErr
		})
		return queuedTx, fnTx, fnRan, err
	}
	for i, db := range []struct {
		name string
		db   postgres.TxBeginner
	}{{"pool", pool}, {"pool conn", conn}, {"conn", conn.Conn()}} {
		t.Run(db.name, func(t *testing.T) {
			base := 10 * (i + 1)
			before := begins.count()
			queuedTx, fnTx, _, err := run(db.db, base+1, nil)
			if err != nil {
				t.Fatalf("WithTxBatch = %v", err)
			}
			if queuedTx == 0 || queuedTx != fnTx {
				t.Errorf("queued statements ran in transaction %d, fn in %d; want one transaction", queuedTx, fnTx)
			}
			if n := begins.count() - before; n != 0 {
				t.Errorf("%d BEGINs sent on their own; want BEGIN in the batch", n)
			}
			if count(t, pool, `SELECT count(*) FROM things WHERE id = $1`, base+1) != 1 {
				t.Error("the queued insert did not commit")
			}

			if _, _, _, err := run(db.db, base+2, errBoom); !errors.Is(err, errBoom) {
				t.Errorf("WithTxBatch with a failing fn = %v, want %v", err, errBoom)
			}
			if count(t, pool, `SELECT count(*) FROM things WHERE id = $1`, base+2) != 0 {
				t.Error("the queued insert committed although fn failed")
			}

			_, _, fnRan, err := run(db.db, base+1, nil) // The row is there: a unique violation.
			var pgErr *pgconn.PgError
			if !errors.As(err, &pgErr) || pgErr.Code != "23505" {
				t.Errorf("WithTxBatch with a failing statement = %v, want the unique violation", err)
			}
			if fnRan {
				t.Error("fn ran after a queued statement failed")
			}
			if _, _, _, err := run(db.db, base+3, nil); err != nil {
				t.Errorf("WithTxBatch after a failed one: %v", err)
			}
		})
	}
	t.Run("database unreachable", func(t *testing.T) {
		closed, err := pgxpool.NewWithConfig(ctx, plain.Config())
		if err != nil {
			t.Fatal(err)
		}
		closed.Close()
		_, _, fnRan, err := run(closed, 99, nil)
		if err == nil || !strings.Contains(err.Error(), "begin transaction") {
			t.Errorf("WithTxBatch on a closed pool = %v, want a failure to begin", err)
		}
		if fnRan {
			t.Error("fn ran without a transaction")
		}
	})
	t.Run("savepoint", func(t *testing.T) {
		outer, err := pool.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer outer.Rollback(ctx)
		var outerTx int64
		if err := outer.QueryRow(ctx, `SELECT txid_current()`).Scan(&outerTx); err != nil {
			t.Fatal(err)
		}
		queuedTx, fnTx, _, err := run(outer, 91, nil)
		if err != nil {
			t.Fatalf("WithTxBatch in a transaction = %v", err)
		}
		if queuedTx != outerTx || fnTx != outerTx {
			t.Errorf("queued statements ran in transaction %d, fn in %d; want the enclosing %d", queuedTx, fnTx, outerTx)
		}
		if _, _, _, err := run(outer, 92, errBoom); !errors.Is(err, errBoom) {
			t.Errorf("WithTxBatch with a failing fn = %v, want %v", err, errBoom)
		}
		var n int
		if err := outer.QueryRow(ctx, `SELECT count(*) FROM things WHERE id IN (91, 92)`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 1 {
			t.Errorf("%d of the rows 91 (committed savepoint) and 92 (rolled back) in the enclosing transaction, want 1", n)
		}
	})
}

// TestOpenWaitsForASlowFirstConnection: a server that takes longer than
// a ping's 2 s to accept the first connection (TLS, authentication, a
// loaded machine) but answers within connect_timeout is not refused at
// start, and PGCONNECT_TIMEOUT, libpq's variable, sets that timeout.
func TestOpenWaitsForASlowFirstConnection(t *testing.T) {
	u, err := url.Parse(postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	upstream := u.Host
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu    sync.Mutex
		conns []net.Conn
		done  bool
	)
	// keep tracks c for closing at the end; false once the test ended.
	keep := func(c net.Conn) bool {
		mu.Lock()
		defer mu.Unlock()
		if done {
			c.Close()
			return false
		}
		conns = append(conns, c)
		return true
	}
	defer func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		done = true
		for _, c := range conns {
			c.Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil || !keep(c) {
				return
			}
			go func() {
				time.Sleep(3 * time.Second) // slower than a ping's 2 s
				up, err := net.Dial("tcp", upstream)
				if err != nil || !keep(up) {
					return
				}
				go func() { _, _ = io.Copy(up, c) }()
				_, _ = io.Copy(c, up)
			}()
		}
	}()
	u.Host = ln.Addr().String()
	t.Setenv("PGCONNECT_TIMEOUT", "10")

	pool, err := postgres.Open(context.Background(), u.String(), "")
	if err != nil {
		t.Fatalf("Open through a server slow to connect: %v", err)
	}
	defer pool.Close()
	if got := pool.Config().ConnConfig.ConnectTimeout; got != 10*time.Second {
		t.Errorf("connect timeout %v, want PGCONNECT_TIMEOUT's 10s", got)
	}
}

// TestIdleInTransactionTimeout: where nothing set it, the pool's
// connections get the idle-in-transaction timeout, and the server ends a
// session whose transaction sits idle past it (a client cut off
// mid-transaction would otherwise hold its locks for hours); a value the
// URL sets is kept.
func TestIdleInTransactionTimeout(t *testing.T) {
	ctx := context.Background()
	pool, err := postgres.Open(ctx, postgrestest.URL(), "", postgres.WithIdleInTransactionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var setting string
	if err := pool.QueryRow(ctx, `SHOW idle_in_transaction_session_timeout`).Scan(&setting); err != nil || setting != "500ms" {
		t.Fatalf("idle_in_transaction_session_timeout = %q, %v; want 500ms", setting, err)
	}
	tx, err := pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, `SELECT 1`); err != nil {
		t.Fatal(err)
	}
	time.Sleep(1500 * time.Millisecond)
	if _, err := tx.Exec(ctx, `SELECT 1`); err == nil {
		t.Error("a transaction idle for 1.5 s went on; want the server to have ended its session after 500ms")
	}

	sep := "?"
	if strings.Contains(postgrestest.URL(), "?") {
		sep = "&"
	}
	own, err := postgres.Open(ctx, postgrestest.URL()+sep+"options=-c%20idle_in_transaction_session_timeout%3D7s", "",
		postgres.WithIdleInTransactionTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := own.QueryRow(ctx, `SHOW idle_in_transaction_session_timeout`).Scan(&setting); err != nil || setting != "7s" {
		t.Errorf("with the URL's own value: idle_in_transaction_session_timeout = %q, %v; want 7s", setting, err)
	}
}

// TestProberDoesNotQueueForTheBusyPool: with every pooled connection busy
// the database still answers the prober, on a connection of its own,
// while a ping through the pool waits; a prober connection the server
// ended is replaced within the same Ping; a database that cannot be
// reached fails it.
func TestProberDoesNotQueueForTheBusyPool(t *testing.T) {
	ctx := context.Background()
	_, schema := postgrestest.NewSchema(t)
	// The name finds the prober's connection among the database's.
	name := "prober-" + schema
	u, err := url.Parse(postgrestest.URL())
	if err != nil {
		t.Fatal(err)
	}
	q := u.Query()
	q.Set("application_name", name)
	u.RawQuery = q.Encode()
	pool, err := postgres.Open(ctx, u.String(), schema, postgres.WithMaxConns(1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	held, err := pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()

	prober := postgres.NewProber(pool)
	defer prober.Close()
	if err := prober.Ping(ctx); err != nil {
		t.Fatalf("prober with the pool busy: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	if err := postgres.Ping(short, pool); err == nil {
		t.Fatal("a ping through the busy pool answered: the test shows nothing")
	}

	// The server ends the prober's connection (an idle timeout, a restart).
	var ended int
	if err := held.QueryRow(ctx, `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
		WHERE application_name = $1 AND pid <> pg_backend_pid()`, name).Scan(&ended); err != nil || ended != 1 {
		t.Fatalf("ended %d of the prober's connections (%v), want 1", ended, err)
	}
	if err := prober.Ping(ctx); err != nil {
		t.Errorf("prober after the server ended its connection: %v", err)
	}

	gone, err := pgxpool.New(ctx, "postgres://postgres@127.0.0.1:1/none?connect_timeout=2&sslmode=disable")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(gone.Close)
	if err := postgres.NewProber(gone).Ping(ctx); err == nil {
		t.Error("prober of a database nothing serves answered nil")
	}
}
