package postgres_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/ordermesh/ordermesh/internal/postgres"
)

func TestErrorClasses(t *testing.T) {
	pgErr := func(code string) error {
		return fmt.Errorf("insert: %w", &pgconn.PgError{Code: code, Message: "m"})
	}
	for _, tt := range []struct {
		name                   string
		err                    error
		unreachable, transient bool
		conflict, busy, tooBig bool
		dataException          bool
		serverEnding, refused  bool
	}{
		{name: "nil"},
		{name: "canceled", err: fmt.Errorf("query: %w", context.Canceled)},
		{name: "deadline", err: fmt.Errorf("query: %w", context.DeadlineExceeded)},
		{name: "refused connection", err: &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, unreachable: true, transient: true},
		{name: "connection cut mid-reply", err: fmt.Errorf("read: %w", io.ErrUnexpectedEOF), unreachable: true, transient: true},
		{name: "admin shutdown", err: pgErr("57P01"), unreachable: true, transient: true, serverEnding: true},
		{name: "cannot connect now", err: pgErr("57P03"), unreachable: true, transient: true, serverEnding: true},
		{name: "connection failure", err: pgErr("08006"), unreachable: true, transient: true, serverEnding: true},
		{name: "serialization failure", err: pgErr("40001"), transient: true, conflict: true, busy: true},
		{name: "deadlock", err: pgErr("40P01"), transient: true, conflict: true, busy: true},
		{name: "deferred constraint failed at commit", err: pgErr("40002"), transient: true},
		{name: "out of memory", err: pgErr("53200"), transient: true, tooBig: true},
		{name: "temp_file_limit", err: pgErr("53400"), transient: true, tooBig: true},
		{name: "too many connections", err: pgErr("53300"), transient: true, busy: true},
		{name: "disk full", err: pgErr("53100"), transient: true, busy: true},
		{name: "lock timeout", err: pgErr("55P03"), busy: true},
		{name: "not null violation", err: pgErr("23502"), refused: true},
		{name: "invalid text", err: pgErr("22P02"), dataException: true, refused: true},
		{name: "NUL in text", err: pgErr("22021"), dataException: true, refused: true},
		{name: "numeric out of range", err: pgErr("22003"), dataException: true, refused: true},
		{name: "query canceled by statement timeout", err: pgErr("57014")},
		{name: "a handler's own error", err: errors.New("unexpected event")},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := postgres.Unreachable(tt.err); got != tt.unreachable {
				t.Errorf("Unreachable(%v) = %v, want %v", tt.err, got, tt.unreachable)
			}
			if got := postgres.Transient(tt.err); got != tt.transient {
				t.Errorf("Transient(%v) = %v, want %v", tt.err, got, tt.transient)
			}
			if got := postgres.Conflict(tt.err); got != tt.conflict {
				t.Errorf("Conflict(%v) = %v, want %v", tt.err, got, tt.conflict)
			}
			if got := postgres.Busy(tt.err); got != tt.busy {
				t.Errorf("Busy(%v) = %v, want %v", tt.err, got, tt.busy)
			}
			if got := postgres.TooBig(tt.err); got != tt.tooBig {
				t.Errorf("TooBig(%v) = %v, want %v", tt.err, got, tt.tooBig)
			}
			if got := postgres.DataException(tt.err); got != tt.dataException {
				t.Errorf("DataException(%v) = %v, want %v", tt.err, got, tt.dataException)
			}
			if got := postgres.ServerEnding(tt.err); got != tt.serverEnding {
				t.Errorf("ServerEnding(%v) = %v, want %v", tt.err, got, tt.serverEnding)
			}
			if got := postgres.DataRefused(tt.err); got != tt.refused {
				t.Errorf("DataRefused(%v) = %v, want %v", tt.err, got, tt.refused)
			}
		})
	}
}

// TestUnreachableConnectTimeout: a server that accepts connections and
// never answers is unreachable once connect_timeout ends the attempt,
// although the error wraps context.DeadlineExceeded like a caller's
// deadline; a connect the caller cancels is not.
func TestUnreachableConnectTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	held := make(chan net.Conn, 16)
	defer func() {
		ln.Close()
		for len(held) > 0 {
			(<-held).Close()
		}
	}()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			held <- c // silent until the test ends
		}
	}()
	url := "postgres://nobody@" + ln.Addr().String() + "/db?sslmode=disable&connect_timeout=1"

	_, err = pgconn.Connect(context.Background(), url)
	if err == nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Connect to a silent server = %v, want a connect timeout", err)
	}
	if !postgres.Unreachable(err) || !postgres.Transient(err) {
		t.Errorf("Unreachable, Transient(%v) = %v, %v; want true, true", err, postgres.Unreachable(err), postgres.Transient(err))
	}

	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	_, err = pgconn.Connect(ctx, url)
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("Connect cancelled by its caller = %v, want context.Canceled", err)
	}
	if postgres.Unreachable(err) || postgres.Transient(err) {
		t.Errorf("Unreachable, Transient(%v) = %v, %v; want false, false", err, postgres.Unreachable(err), postgres.Transient(err))
	}
}
