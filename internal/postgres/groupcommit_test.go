package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
)

// itemsTable returns a pool on a schema of the test's own holding a table
// items (n int PRIMARY KEY).
func itemsTable(t *testing.T) *pgxpool.Pool {
	t.Helper()
	pool, schema := postgrestest.NewSchema(t)
	if _, err := pool.Exec(context.Background(), `CREATE SCHEMA IF NOT EXISTS `+pgx.Identifier{schema}.Sanitize()+`; CREATE TABLE items (n int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	return pool
}

func TestGroupCommitSharesTransactionsAndIsolatesFailures(t *testing.T) {
	pool := itemsTable(t)
	ctx := context.Background()
	g := postgres.NewGroupCommit(pool, 128, 1, 10*time.Second)
	const calls = 64
	errs := make([]error, calls)
	var wg sync.WaitGroup
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = g.Do(ctx, "k", func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1)`, i); err != nil {
					return err
				}
				switch i {
				case 7:
					return errors.New("unit 7 fails")
				case 9:
					panic("unit 9 panics")
				case 11:
					// A failing statement (its own row again) aborts only
					// this unit's savepoint.
					_, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1)`, i)
					return err
				}
				return nil
			})
		}()
	}
	wg.Wait()
	for i, err := range errs {
		wantErr := i == 7 || i == 9 || i == 11
		if (err != nil) != wantErr {
			t.Errorf("unit %d: err = %v, want error %v", i, err, wantErr)
		}
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != calls-3 {
		t.Errorf("%d rows committed, want %d (every unit but the three failing ones)", n, calls-3)
	}
	batches, units := g.Stats()
	if units != calls || batches >= calls {
		t.Errorf("%d units in %d transactions: want %d units sharing fewer transactions", units, batches, calls)
	}
	t.Logf("%d units in %d transactions", units, batches)
}

// TestGroupCommitUnitDroppingAFailedStatementFailsAlone: a unit that
// drops the error of a statement that failed, which leaves its
// transaction aborted, fails alone; the units batched with it commit.
func TestGroupCommitUnitDroppingAFailedStatementFailsAlone(t *testing.T) {
	pool := itemsTable(t)
	ctx := context.Background()
	g := postgres.NewGroupCommit(pool, 16, 1, 10*time.Second)
	// The first unit holds the lane until the three behind it queued, so
	// that they share one transaction.
	release, started := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		_ = g.Do(ctx, "k", func(context.Context, pgx.Tx) error { close(started); <-release; return nil })
	})
	<-started
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() {
			errs[i] = g.Do(ctx, "k", func(ctx context.Context, tx pgx.Tx) error {
				if _, err := tx.Exec(ctx, `INSERT INTO items VALUES ($1)`, i); err != nil {
					return err
				}
				if i == 1 {
					_, _ = tx.Exec(ctx, `INSERT INTO items VALUES ($1)`, i) // fails; the error dropped
				}
				return nil
			})
		})
	}
	deadline := time.Now().Add(10 * time.Second)
	for g.Queued() != 3 {
		if time.Now().After(deadline) {
			close(release)
			t.Fatalf("%d units queued, want 3", g.Queued())
		}
		time.Sleep(time.Millisecond)
	}
	close(release)
	wg.Wait()
	if errs[0] != nil || errs[2] != nil || errs[1] == nil {
		t.Errorf("errors %v; want only unit 1's", errs)
	}
	var n int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM items`).Scan(&n); err != nil || n != 2 {
		t.Errorf("%d rows committed (%v), want 2", n, err)
	}
}

func TestGroupCommitFailsEveryUnitWhenTheDatabaseIsDown(t *testing.T) {
	_, schema := postgrestest.NewSchema(t)
	proxy, proxied := postgrestest.Proxied(t)
	pool, err := postgres.Open(context.Background(), proxied, schema)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	g := postgres.NewGroupCommit(pool, 16, 2, 5*time.Second)
	proxy.SetUp(false)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- g.Do(context.Background(), fmt.Sprint(len(errs)), func(ctx context.Context, tx pgx.Tx) error {
				_, err := tx.Exec(ctx, `SELECT 1`)
				return err
			})
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err == nil {
			t.Error("a unit succeeded with the database down")
		}
	}
}

func TestGroupCommitRefusesEndedContext(t *testing.T) {
	pool, _ := postgrestest.NewSchema(t)
	g := postgres.NewGroupCommit(pool, 16, 2, 5*time.Second)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	ran := false
	err := g.Do(ctx, "k", func(context.Context, pgx.Tx) error { ran = true; return nil })
	if !errors.Is(err, context.Canceled) || ran {
		t.Fatalf("err = %v, ran = %v; want context.Canceled without running", err, ran)
	}
}
