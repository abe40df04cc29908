// Package postgres is ordermesh's PostgreSQL platform code: a pgx
// connection pool bound to one service's schema, per-schema migrations from
// embedded SQL files, and a transaction helper.
//
// Every service owns one schema. The pool sets the connection's search_path
// to that schema (see Open), so SQL in services, the outbox and the inbox is
// written unqualified and always lands in the owning service's schema.
package postgres

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Pool defaults, used unless the URL sets the matching pool_* parameter or an
// Option overrides them.
const (
	DefaultMaxConns          = 10
	DefaultMinConns          = 1
	DefaultMaxConnLifetime   = time.Hour
	DefaultMaxConnIdleTime   = 10 * time.Minute
	DefaultHealthCheckPeriod = 30 * time.Second
	DefaultConnectTimeout    = 5 * time.Second
	// DefaultPingTimeout bounds Ping when the caller's context has no
	// earlier deadline.
	DefaultPingTimeout = 2 * time.Second
	// DefaultStatementCacheCapacity sizes each connection's prepared
	// statement and description caches. A service runs a few dozen
	// distinct statements at most; pgx's default of 512 preallocates
	// about 27 KiB per cache, 55 KiB per connection.
	DefaultStatementCacheCapacity = 64
)

// Option adjusts the pool configuration built by Open.
type Option func(*pgxpool.Config)

// WithMaxConns sets the maximum number of pooled connections.
func WithMaxConns(n int32) Option {
	return func(c *pgxpool.Config) { c.MaxConns = n }
}

// WithMinConns sets the number of connections the pool keeps open when idle.
func WithMinConns(n int32) Option {
	return func(c *pgxpool.Config) { c.MinConns = n }
}

// WithApplicationName sets application_name, which shows in
// pg_stat_activity.
func WithApplicationName(name string) Option {
	return func(c *pgxpool.Config) { c.ConnConfig.RuntimeParams["application_name"] = name }
}

// WithIdleInTransactionTimeout sets idle_in_transaction_session_timeout to
// d on each connection where nothing else set it (it reads 0 there: not
// set for the server, the database or the role, nor in the URL's
// options). The server then ends a session whose transaction sat idle that
// long, such as one whose client was cut off mid-transaction: otherwise it
// would hold its locks (an inbox row, which every redelivery of that event
// waits for) until TCP notices the client is gone, hours by default. d
// must exceed the longest wait inside a transaction (a handler's calls, a
// relay's wait for confirms). It costs a statement per new connection.
func WithIdleInTransactionTimeout(d time.Duration) Option {
	return func(c *pgxpool.Config) {
		next := c.AfterConnect
		c.AfterConnect = func(ctx context.Context, conn *pgx.Conn) error {
			if _, err := conn.Exec(ctx, `SELECT set_config('idle_in_transaction_session_timeout', $1, false)
				WHERE current_setting('idle_in_transaction_session_timeout') = '0'`, strconv.FormatInt(d.Milliseconds(), 10)); err != nil {
				return fmt.Errorf("set idle_in_transaction_session_timeout: %w", err)
			}
			if next != nil {
				return next(ctx, conn)
			}
			return nil
		}
	}
}

// Open returns a pool of connections to the database at url whose
// search_path is schema (unless schema is empty, which keeps the server's
// default). It applies the package's pool defaults where the URL sets no
// pool_* parameter, then opts, and verifies the database answers before
// returning. The schema need not exist yet: Migrate creates it. The caller
// closes the pool.
func Open(ctx context.Context, url, schema string, opts ...Option) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	setDefault := func(param string, apply func()) {
		if !strings.Contains(url, param) {
			apply()
		}
	}
	setDefault("pool_max_conns", func() { cfg.MaxConns = DefaultMaxConns })
	setDefault("pool_min_conns", func() { cfg.MinConns = DefaultMinConns })
	setDefault("pool_max_conn_lifetime", func() { cfg.MaxConnLifetime = DefaultMaxConnLifetime })
	setDefault("pool_max_conn_idle_time", func() { cfg.MaxConnIdleTime = DefaultMaxConnIdleTime })
	setDefault("pool_health_check_period", func() { cfg.HealthCheckPeriod = DefaultHealthCheckPeriod })
	if os.Getenv("PGCONNECT_TIMEOUT") == "" { // libpq's variable, which pgx reads too
		setDefault("connect_timeout", func() { cfg.ConnConfig.ConnectTimeout = DefaultConnectTimeout })
	}
	setDefault("statement_cache_capacity", func() { cfg.ConnConfig.StatementCacheCapacity = DefaultStatementCacheCapacity })
	setDefault("description_cache_capacity", func() { cfg.ConnConfig.DescriptionCacheCapacity = DefaultStatementCacheCapacity })
	if schema != "" {
		cfg.ConnConfig.RuntimeParams["search_path"] = SearchPath(schema)
	}
	for _, opt := range opts {
		opt(cfg)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	// The first ping opens the first connection: it may take the whole
	// connect timeout (TLS, authentication) for each address or fallback
	// (sslmode=prefer tries twice), and a round trip after it. A connect
	// timeout of 0 means none: the caller's ctx bounds it then.
	pctx := ctx
	if ct := cfg.ConnConfig.ConnectTimeout; ct > 0 {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, time.Duration(len(cfg.ConnConfig.Fallbacks)+1)*ct+DefaultPingTimeout)
		defer cancel()
	}
	if err := pool.Ping(pctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping database: %w", err)
	}
	return pool, nil
}

// SearchPath returns the search_path value that selects only schema, quoted
// so that reserved words ("order") and mixed case survive.
func SearchPath(schema string) string {
	return pgx.Identifier{schema}.Sanitize()
}

// Ping reports whether the database answers a round trip on one of pool's
// connections, within DefaultPingTimeout unless ctx ends sooner. With
// every connection busy it waits for one; a readiness check wants a
// Prober, which does not.
func Ping(ctx context.Context, pool *pgxpool.Pool) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultPingTimeout)
	defer cancel()
	if err := pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

// Prober checks that the database answers, on a connection of its own
// rather than one of the pool's: under load every pooled connection may be
// busy, and a check that queued for one would report a database that
// answers as down (and a service as not serving) for as long as the load
// lasts. It keeps its connection between pings, and opens a new one when
// it has none or the one it has no longer answers. It is safe for
// concurrent use; Close it when done.
type Prober struct {
	cfg  *pgx.ConnConfig
	mu   sync.Mutex
	conn *pgx.Conn
}

// NewProber returns a Prober connecting as pool's connections do.
func NewProber(pool *pgxpool.Pool) *Prober {
	return &Prober{cfg: pool.Config().ConnConfig.Copy()}
}

// Ping reports whether the database answers a round trip, within
// DefaultPingTimeout unless ctx ends sooner, connecting first if need be.
func (p *Prober) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, DefaultPingTimeout)
	defer cancel()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn != nil {
		if p.conn.Ping(ctx) == nil {
			return nil
		}
		// The connection may be broken (the server ended it while idle,
		// say) or mid-exchange: the answer is a new connection's.
		p.closeLocked()
	}
	conn, err := pgx.ConnectConfig(ctx, p.cfg)
	if err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	if err := conn.Ping(ctx); err != nil {
		_ = conn.Close(context.WithoutCancel(ctx))
		return fmt.Errorf("ping database: %w", err)
	}
	p.conn = conn
	return nil
}

// Close closes the prober's connection; a later Ping opens another.
func (p *Prober) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closeLocked()
}

func (p *Prober) closeLocked() {
	if p.conn == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	_ = p.conn.Close(ctx)
	p.conn = nil
}

// TxBeginner starts transactions; *pgxpool.Pool, *pgx.Conn and pgx.Tx (as a
// savepoint) implement it.
type TxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// WithTx runs fn in a transaction started on db. It commits when fn returns
// nil and rolls back otherwise (also when fn panics, before the panic goes
// on). fn's error is returned as is, so callers can match it with errors.Is
// and errors.As; commit failures are wrapped.
func WithTx(ctx context.Context, db TxBeginner, fn func(tx pgx.Tx) error) error {
	tx, err := db.Begin(ctx)
	if err != nil {
		return fmt.Errorf("begin transaction: %w", err)
	}
	// Rollback after a successful Commit is a no-op returning ErrTxClosed.
	defer rollback(ctx, tx)
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// WithTxBatch is WithTx with statements to run first: queue adds them to
// a batch (with their result callbacks), and they run at the start of the
// transaction, before fn. On a pool or a connection the transaction's
// BEGIN goes in the same round trip as those statements, which saves the
// round trip of BEGIN; on a transaction (a savepoint) the batch follows
// the savepoint. An error from the batch (a statement's, or a callback's)
// is returned wrapped, and fn does not run.
func WithTxBatch(ctx context.Context, db TxBeginner, queue func(b *pgx.Batch), fn func(tx pgx.Tx) error) error {
	var sender interface {
		SendBatch(ctx context.Context, b *pgx.Batch) pgx.BatchResults
	}
	switch d := db.(type) {
	case *pgxpool.Pool:
		sender = d
	case *pgxpool.Conn:
		sender = d
	case *pgx.Conn:
		sender = d
	default:
		return WithTx(ctx, db, func(tx pgx.Tx) error {
			b := &pgx.Batch{}
			queue(b)
			if err := tx.SendBatch(ctx, b).Close(); err != nil {
				return fmt.Errorf("first %d statements of transaction: %w", b.Len(), err)
			}
			return fn(tx)
		})
	}
	b := &pgx.Batch{}
	b.BeginTx(pgx.TxOptions{})
	queue(b)
	br := sender.SendBatch(ctx, b)
	tx := br.Tx()
	// Rollback after a successful Commit is a no-op returning ErrTxClosed;
	// a batch that failed before BEGIN left tx closed.
	defer rollback(ctx, tx)
	if err := br.Close(); err != nil {
		if c := tx.Conn(); c == nil || c.PgConn().TxStatus() == 'I' {
			return fmt.Errorf("begin transaction: %w", err)
		}
		return fmt.Errorf("first %d statements of transaction: %w", b.Len()-1, err)
	}
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit transaction: %w", err)
	}
	return nil
}

// RollbackConn ends the transaction open on conn, if any, for code that
// runs BEGIN and COMMIT as statements of its own batches on a pooled
// connection. It does so even when ctx has ended; the pool closes a
// connection released inside a transaction, so one whose ROLLBACK failed
// is not used again.
func RollbackConn(ctx context.Context, conn *pgxpool.Conn) {
	if conn.Conn().PgConn().TxStatus() == 'I' {
		return
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_, _ = conn.Exec(ctx, `ROLLBACK`) // The caller's own error is what matters.
}

// rollback ends tx even when ctx is already cancelled, so the connection goes
// back to the pool clean instead of being discarded.
func rollback(ctx context.Context, tx pgx.Tx) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	_ = tx.Rollback(ctx) // The transaction's own error, if any, is what matters to the caller.
}

// maintenanceDatabase is the database CreateDatabaseIfMissing connects to
// to create another.
var maintenanceDatabase = "postgres"

// CreateDatabaseIfMissing creates the database named in url unless it
// exists. The URL is read as Open reads it (pool_* parameters are the
// pool's, not the server's). It connects to that database first, and only
// when it does not exist (3D000) to the "postgres" maintenance database on
// the same server with the same credentials, to create it: a role that
// may not connect to "postgres" can still use a database that exists.
// Concurrent callers are safe: losing the race to create it is not an
// error.
func CreateDatabaseIfMissing(ctx context.Context, url string) error {
	pcfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return fmt.Errorf("parse database url: %w", err)
	}
	cfg := pcfg.ConnConfig
	name := cfg.Database
	if name == "" {
		return errors.New("create database: url names no database")
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err == nil {
		_ = conn.Close(context.WithoutCancel(ctx)) // it exists: that was the question
		return nil
	}
	if pgErr, ok := errors.AsType[*pgconn.PgError](err); !ok || pgErr.Code != "3D000" { // invalid_catalog_name
		return fmt.Errorf("connect to database %q: %w", name, err)
	}
	maint := cfg.Copy()
	maint.Database = maintenanceDatabase
	conn, err = pgx.ConnectConfig(ctx, maint)
	if err != nil {
		return fmt.Errorf("connect to maintenance database: %w", err)
	}
	defer conn.Close(context.WithoutCancel(ctx))

	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("look up database %q: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
			// 42P04 duplicate_database; 23505 when a concurrent CREATE won
			// the race on pg_database's unique index.
			return nil
		}
		return fmt.Errorf("create database %q: %w", name, err)
	}
	return nil
}
