package postgres

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/ctxsleep"
)

// ErrSchemaTaken reports a schema that already belongs to another service
// (MigrateOwned).
var ErrSchemaTaken = errors.New("schema belongs to another service")

// MigrationsTable is the table, in each migrated schema, that records the
// applied migrations, and OwnerTable the one that records the service the
// schema belongs to (MigrateOwned).
const (
	MigrationsTable = "schema_migrations"
	OwnerTable      = "schema_owner"
)

// Source is one set of migrations: a service's domain tables, or the
// tables of a platform package such as the outbox or the inbox.
//
// FS holds files named <version>_<description>.sql (e.g. 001_orders.sql)
// anywhere in its tree; versions are positive integers, unique within the
// source, applied in ascending order. Each file runs in its own transaction
// with search_path set to the target schema, so its SQL is unqualified. A
// file must therefore not contain statements that cannot run in a
// transaction (CREATE INDEX CONCURRENTLY, VACUUM). Applied files must never
// change: Migrate refuses a source whose applied file's checksum differs.
type Source struct {
	// Name identifies the source in the migrations table; versions are
	// tracked per name, so sources number their files independently.
	Name string
	FS   fs.FS
}

// migration is one parsed migration file.
type migration struct {
	version  int
	file     string
	sql      string
	checksum string
}

// Migrate applies every migration of sources that schema has not had yet,
// creating the schema if needed. Sources are applied in the order given, and
// each source's files in version order. Every migration runs in its own
// transaction holding a transaction-level advisory lock keyed by the schema
// name, so concurrent migrators (several replicas starting at once) apply
// each migration exactly once and never interleave.
func Migrate(ctx context.Context, db TxBeginner, schema string, sources ...Source) error {
	if schema == "" {
		return errors.New("migrate: empty schema name")
	}
	// The migrations' attempts to have their tables' locks share one
	// patience, however many of them wait, from the first that could not.
	var giveUp time.Time
	for _, src := range sources {
		migs, err := readSource(src)
		if err != nil {
			return err
		}
		for _, m := range migs {
			if err := apply(ctx, db, schema, src.Name, m, &giveUp); err != nil {
				return err
			}
		}
	}
	return nil
}

// readSource lists and parses src's migration files.
func readSource(src Source) ([]migration, error) {
	if src.Name == "" {
		return nil, errors.New("read migrations: source has no name")
	}
	if src.FS == nil {
		return nil, fmt.Errorf("read migrations %s: nil FS", src.Name)
	}
	var migs []migration
	seen := map[int]string{}
	err := fs.WalkDir(src.FS, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || path.Ext(p) != ".sql" {
			return nil
		}
		base := path.Base(p)
		prefix, _, ok := strings.Cut(base, "_")
		version, convErr := strconv.Atoi(prefix)
		if !ok || convErr != nil || version <= 0 {
			return fmt.Errorf("file %s: name must be <version>_<description>.sql with a positive version", p)
		}
		if other, dup := seen[version]; dup {
			return fmt.Errorf("files %s and %s share version %d", other, p, version)
		}
		seen[version] = p
		body, err := fs.ReadFile(src.FS, p)
		if err != nil {
			return err
		}
		sum := sha256.Sum256(body)
		migs = append(migs, migration{version: version, file: base, sql: string(body), checksum: hex.EncodeToString(sum[:])})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read migrations %s: %w", src.Name, err)
	}
	slices.SortFunc(migs, func(a, b migration) int { return a.version - b.version })
	return migs, nil
}

// migrationLockTimeout bounds how long a migration's attempt waits for a
// lock on a table (lock_timeout): an ALTER TABLE queued behind a long
// transaction holds up every query on that table behind it, so an attempt
// that cannot get its locks soon gives up, and the table serves its
// queries until the next attempt, after a pause. Attempts go on for
// migrationLockPatience; then the migration fails, and the service's
// start with it. Tests shorten both.
var (
	migrationLockTimeout  = 2 * time.Second
	migrationLockPatience = 2 * time.Minute
)

// MigrateOwned is Migrate for owner, the service whose schema it is. A
// schema belongs to one service: its first MigrateOwned records the owner,
// and a MigrateOwned for another owner is refused with ErrSchemaTaken, as
// when two services are given the same schema (their tables would not
// collide, but their inboxes would: each would take the other's events for
// duplicates). The claim is made under the schema's migration lock, so of
// two owners starting on one empty schema at once, the second is refused.
// The sources may change from one version to the next (a rollback to a
// version with fewer of them is no other owner). A schema migrated before
// owners were recorded is claimed by its first MigrateOwned, unless it
// holds migrations of a source that is neither owner nor among sources:
// another service's.
func MigrateOwned(ctx context.Context, db TxBeginner, schema, owner string, sources ...Source) error {
	if schema == "" {
		return errors.New("migrate: empty schema name")
	}
	if owner == "" {
		return errors.New("migrate: empty owner")
	}
	err := WithTx(ctx, db, func(tx pgx.Tx) error {
		if err := lockSchema(ctx, tx, schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+OwnerTable+` (
			owner      text        PRIMARY KEY,
			claimed_at timestamptz NOT NULL DEFAULT now()
		)`); err != nil {
			return fmt.Errorf("create owner table: %w", err)
		}
		var other string
		err := tx.QueryRow(ctx, `SELECT owner FROM `+OwnerTable+` WHERE owner <> $1 LIMIT 1`, owner).Scan(&other)
		switch {
		case err == nil:
			return fmt.Errorf("%w: it is %s's; give each service a schema of its own", ErrSchemaTaken, other)
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("read owner: %w", err)
		}
		tag, err := tx.Exec(ctx, `INSERT INTO `+OwnerTable+` (owner) VALUES ($1) ON CONFLICT DO NOTHING`, owner)
		if err != nil {
			return fmt.Errorf("record owner: %w", err)
		}
		if tag.RowsAffected() == 1 {
			// The first claim of a schema migrated before owners were
			// recorded: one holding another service's migrations is not
			// this one's to take.
			return checkSources(ctx, tx, owner, sources)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("claim schema %s for %s: %w", schema, owner, err)
	}
	return Migrate(ctx, db, schema, sources...)
}

// checkSources returns ErrSchemaTaken when the schema tx's search_path
// names has migrations of a source that is neither owner nor one of
// sources (a service's domain source bears its name).
func checkSources(ctx context.Context, tx pgx.Tx, owner string, sources []Source) error {
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, MigrationsTable).Scan(&exists); err != nil {
		return fmt.Errorf("look up migrations table: %w", err)
	}
	if !exists {
		return nil
	}
	names := []string{owner}
	for _, src := range sources {
		names = append(names, src.Name)
	}
	var other string
	err := tx.QueryRow(ctx, `SELECT source FROM `+MigrationsTable+` WHERE source <> ALL($1) LIMIT 1`, names).Scan(&other)
	switch {
	case err == nil:
		return fmt.Errorf("%w: it holds the migrations of %s; give each service a schema of its own", ErrSchemaTaken, other)
	case errors.Is(err, pgx.ErrNoRows):
		return nil
	default:
		return fmt.Errorf("read applied sources: %w", err)
	}
}

// lockSchema takes, in tx, the lock that serializes the migrators of
// schema (it ends with tx), creates the schema when missing, and sets
// tx's search_path to it.
func lockSchema(ctx context.Context, tx pgx.Tx, schema string) error {
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, "ordermesh.migrate."+schema); err != nil {
		return fmt.Errorf("lock schema: %w", err)
	}
	ident := pgx.Identifier{schema}.Sanitize()
	// Created only when missing: CREATE SCHEMA IF NOT EXISTS asks for the
	// database's CREATE privilege even when the schema exists, which a role
	// given a schema made for it need not have.
	var exists bool
	if err := tx.QueryRow(ctx, `SELECT to_regnamespace($1) IS NOT NULL`, ident).Scan(&exists); err != nil {
		return fmt.Errorf("look up schema: %w", err)
	}
	if !exists {
		if _, err := tx.Exec(ctx, "CREATE SCHEMA "+ident); err != nil {
			return fmt.Errorf("create schema: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, "SELECT set_config('search_path', $1, true)", ident); err != nil {
		return fmt.Errorf("set search_path: %w", err)
	}
	return nil
}

// apply runs one migration unless the schema already has it.
// A migration that could not have a table's lock in time is tried again
// after a pause, until *giveUp, which the first such failure of a Migrate
// sets migrationLockPatience ahead.
func apply(ctx context.Context, db TxBeginner, schema, source string, m migration, giveUp *time.Time) error {
	pause := migrationLockTimeout
	for {
		err := applyOnce(ctx, db, schema, source, m)
		if !LockNotAvailable(err) {
			return err
		}
		if giveUp.IsZero() {
			*giveUp = time.Now().Add(migrationLockPatience)
		}
		if time.Now().Add(pause).After(*giveUp) {
			return err
		}
		// A lock not had within migrationLockTimeout: let the table's
		// queries through, then try again.
		if !ctxsleep.Sleep(ctx, pause) {
			return fmt.Errorf("migrate %s %s/%s: stopped while waiting to try again: %w (after: %w)", schema, source, m.file, ctx.Err(), err)
		}
		pause = min(2*pause, 15*time.Second)
	}
}

// applyOnce is one attempt of apply.
func applyOnce(ctx context.Context, db TxBeginner, schema, source string, m migration) error {
	err := WithTx(ctx, db, func(tx pgx.Tx) error {
		if err := lockSchema(ctx, tx, schema); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `CREATE TABLE IF NOT EXISTS `+MigrationsTable+` (
			source     text        NOT NULL,
			version    integer     NOT NULL,
			file       text        NOT NULL,
			checksum   text        NOT NULL,
			applied_at timestamptz NOT NULL DEFAULT now(),
			PRIMARY KEY (source, version)
		)`); err != nil {
			return fmt.Errorf("create migrations table: %w", err)
		}
		var applied string
		err := tx.QueryRow(ctx, `SELECT checksum FROM `+MigrationsTable+` WHERE source = $1 AND version = $2`, source, m.version).Scan(&applied)
		switch {
		case err == nil:
			if applied != m.checksum {
				return errors.New("applied file has changed since (checksum differs); add a new migration instead")
			}
			return nil
		case !errors.Is(err, pgx.ErrNoRows):
			return fmt.Errorf("read applied version: %w", err)
		}
		if _, err := tx.Exec(ctx, "SELECT set_config('lock_timeout', $1, true)", fmt.Sprintf("%dms", migrationLockTimeout.Milliseconds())); err != nil {
			return fmt.Errorf("set lock_timeout: %w", err)
		}
		// No arguments: pgx sends the file with the simple protocol, which
		// allows several statements.
		if _, err := tx.Exec(ctx, m.sql); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, `INSERT INTO `+MigrationsTable+` (source, version, file, checksum) VALUES ($1, $2, $3, $4)`,
			source, m.version, m.file, m.checksum); err != nil {
			return fmt.Errorf("record version: %w", err)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("migrate %s %s/%s: %w", schema, source, m.file, err)
	}
	return nil
}
