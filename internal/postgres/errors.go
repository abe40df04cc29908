package postgres

import (
	"context"
	"errors"
	"io"
	"net"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// Unreachable reports whether err means the database could not be
// reached or the connection broke: a failed connect, a network error or
// timeout, a connection that ended mid-conversation, or the server
// refusing connections or ending them as it shuts down (SQLSTATE classes
// 08 and 57P). Context errors are not: the caller gave up. A failed
// connect is, even one that wraps context.DeadlineExceeded: that is how
// connect_timeout ends an attempt at a server that does not answer, and
// pgx's error cannot tell it from the caller's own deadline passing
// during the connect (a cancelled connect is still not unreachable).
func Unreachable(err error) bool {
	if err == nil || errors.Is(err, context.Canceled) {
		return false
	}
	if _, ok := errors.AsType[*pgconn.ConnectError](err); ok {
		return true
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return true
	}
	if pgconn.SafeToRetry(err) || pgconn.Timeout(err) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
		return true
	}
	return ServerEnding(err)
}

// ServerEnding reports whether err is the server refusing or ending the
// connection (SQLSTATE classes 08 and 57P: a restart, a failover, an
// administrator's command): the database was away, whatever the work.
func ServerEnding(err error) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && (strings.HasPrefix(pgErr.Code, "08") || strings.HasPrefix(pgErr.Code, "57P"))
}

// Transient reports whether err says nothing about the work that failed,
// only about when it ran, so the same work may succeed later: the
// database was unreachable (see Unreachable), the transaction lost a
// serialization conflict or a deadlock (class 40), or the server ran
// short of resources (class 53). Context errors are not transient.
func Transient(err error) bool {
	if Unreachable(err) {
		return true
	}
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && (strings.HasPrefix(pgErr.Code, "40") || strings.HasPrefix(pgErr.Code, "53"))
}

// Conflict reports whether err is a transaction that lost to a concurrent
// one: a serialization failure (SQLSTATE 40001) or a deadlock (40P01).
// Running the same transaction again usually succeeds.
func Conflict(err error) bool {
	return hasCode(err, "40001", "40P01")
}

// LockNotAvailable reports whether err is a statement that could not have
// a lock within its lock_timeout (SQLSTATE 55P03): another transaction
// held it that long.
func LockNotAvailable(err error) bool {
	return hasCode(err, "55P03")
}

// Busy reports whether err says the database could not do the work then,
// whatever the work: short of connections or disk (SQLSTATE 53000, 53100,
// 53300), a transaction that lost to concurrent ones (Conflict), a lock
// not had in time (LockNotAvailable). Out of memory (53200) and a
// configuration limit (53400, temp_file_limit) are not Busy but TooBig:
// the work itself may be too much.
func Busy(err error) bool {
	return hasCode(err, "53000", "53100", "53300") || Conflict(err) || LockNotAvailable(err)
}

// TooBig reports whether err is the server's refusal of a transaction for
// the resources it took: out of memory (SQLSTATE 53200) or a configuration
// limit such as temp_file_limit (53400). Less of the same work may pass.
func TooBig(err error) bool {
	return hasCode(err, "53200", "53400")
}

// DataException reports whether err is a statement that failed on the
// data it was given (SQLSTATE class 22): text PostgreSQL cannot store (a
// NUL byte), a number out of range, an invalid value for its type. The same
// statement with the same data fails again, however often it runs.
func DataException(err error) bool {
	return hasClass(err, "22")
}

// DataRefused reports whether err is PostgreSQL refusing a statement for
// its data: a DataException or an integrity constraint violation (class
// 23: a unique key taken, a NOT NULL or check constraint) rather than the
// connection or the server failing. Unlike a data exception, a violation
// may depend on the rows a concurrent transaction wrote.
func DataRefused(err error) bool {
	return hasClass(err, "22") || hasClass(err, "23")
}

// hasClass reports whether err is a PostgreSQL error of SQLSTATE class.
func hasClass(err error, class string) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && strings.HasPrefix(pgErr.Code, class)
}

// hasCode reports whether err is a PostgreSQL error with one of codes.
func hasCode(err error, codes ...string) bool {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	return ok && slices.Contains(codes, pgErr.Code)
}
