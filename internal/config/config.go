// Package config reads a binary's typed configuration from environment
// variables and renders it for logging with secrets masked.
//
// A binary fills its Config in one place, with the defaults in plain sight,
// and fails fast on every bad variable at once:
//
//	env := config.NewEnv(getenv)
//	cfg := Config{
//		GRPCAddr:    env.Addr("ORDERMESH_GRPC_ADDR", ":50051"),
//		DatabaseURL: env.URL("ORDERMESH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable", "postgres", "postgresql"),
//		Prefetch:    env.Int("ORDERMESH_PREFETCH", 16),
//	}
//	if err := env.Err(); err != nil {
//		return fmt.Errorf("read config: %w", err)
//	}
//	log.InfoContext(ctx, "starting", slog.Any("config", config.LogValue(cfg)))
package config

import (
	"errors"
	"fmt"
	"math"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Env reads typed values from environment variables through a getenv
// function (os.Getenv in main, a map lookup in tests) and collects every
// problem instead of stopping at the first. A variable that is unset or
// empty takes its default; values other than String's are trimmed of
// surrounding white space. Env is not safe for concurrent use.
type Env struct {
	getenv func(string) string
	errs   []error
}

// NewEnv returns an Env reading from getenv.
func NewEnv(getenv func(string) string) *Env {
	return &Env{getenv: getenv}
}

// Err returns every problem recorded so far, one per line, each naming its
// variable; nil if there were none.
func (e *Env) Err() error {
	return errors.Join(e.errs...)
}

// Fail records a problem with the variable name that the typed readers
// cannot see, such as a value out of the range the binary accepts. It is
// reported by Err as "name: err".
func (e *Env) Fail(name string, err error) {
	e.errs = append(e.errs, fmt.Errorf("%s: %w", name, err))
}

func (e *Env) lookup(name string) (string, bool) {
	v := strings.TrimSpace(e.getenv(name))
	return v, v != ""
}

// String returns the variable's value as is, or def when it is unset or
// empty.
func (e *Env) String(name, def string) string {
	if v := e.getenv(name); v != "" {
		return v
	}
	return def
}

// Int returns the variable as a base-10 integer, or def.
func (e *Env) Int(name string, def int) int {
	v, ok := e.lookup(name)
	if !ok {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		reason := err
		if numErr, ok := errors.AsType[*strconv.NumError](err); ok {
			reason = numErr.Err
		}
		e.errs = append(e.errs, fmt.Errorf("%s: invalid integer %q: %w", name, v, reason))
		return def
	}
	return n
}

// Duration returns the variable as a time.Duration ("300ms", "1.5s",
// "2m"), or def.
func (e *Env) Duration(name string, def time.Duration) time.Duration {
	v, ok := e.lookup(name)
	if !ok {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s: invalid duration %q: want a number with a unit such as 300ms, 1.5s or 2m", name, v))
		return def
	}
	return d
}

// PositiveDuration is Duration for a variable that must be above zero
// (a timeout, an interval); a value that is not is a problem, and def is
// returned.
func (e *Env) PositiveDuration(name string, def time.Duration) time.Duration {
	d := e.Duration(name, def)
	if d <= 0 {
		e.errs = append(e.errs, fmt.Errorf("%s: must be positive", name))
		return def
	}
	return d
}

// Bool returns the variable as a bool (1, t, true, 0, f, false in any
// case), or def.
func (e *Env) Bool(name string, def bool) bool {
	v, ok := e.lookup(name)
	if !ok {
		return def
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s: invalid boolean %q: want true or false", name, v))
		return def
	}
	return b
}

// Bytes is an amount of memory in bytes. It prints in the largest binary
// unit that divides it exactly ("18MiB", "1536KiB", "100B"), the form
// Env.Bytes and GOMEMLIMIT read.
type Bytes int64

// Binary units of Bytes, largest first.
var byteUnits = []struct {
	name string
	size Bytes
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

func (b Bytes) String() string {
	for _, u := range byteUnits {
		if b != 0 && b%u.size == 0 {
			return strconv.FormatInt(int64(b/u.size), 10) + u.name
		}
	}
	return strconv.FormatInt(int64(b), 10) + "B"
}

// Bytes returns the variable as an amount of memory, or def: a whole
// number with an optional unit B, KiB, MiB, GiB or TiB ("64MiB"), the
// syntax of GOMEMLIMIT.
func (e *Env) Bytes(name string, def Bytes) Bytes {
	v, ok := e.lookup(name)
	if !ok {
		return def
	}
	digits, unit := v, Bytes(1)
	for _, u := range byteUnits {
		if n, ok := strings.CutSuffix(v, u.name); ok {
			digits, unit = n, u.size
			break
		}
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil || n < 0 || digits[0] == '+' || n > math.MaxInt64/int64(unit) {
		e.errs = append(e.errs, fmt.Errorf("%s: invalid size %q: want a whole number with an optional unit B, KiB, MiB, GiB or TiB, such as 64MiB", name, v))
		return def
	}
	return Bytes(n) * unit
}

// Addr returns the variable, or def, after checking it is a host:port
// address with a numeric port; the host may be empty (":50051" listens on
// every interface).
func (e *Env) Addr(name, def string) string {
	v, ok := e.lookup(name)
	if !ok {
		v = def
	}
	if err := checkAddr(v); err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s: invalid address %q: %w", name, v, err))
		return def
	}
	return v
}

func checkAddr(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("port %q is not a number from 0 to 65535", port)
	}
	return nil
}

// URL returns the variable, or def, after checking it is an absolute URL
// and, when schemes are given, that its scheme is one of them. Problems are
// reported with the URL's password masked.
func (e *Env) URL(name, def string, schemes ...string) string {
	v, ok := e.lookup(name)
	if !ok {
		v = def
	}
	u, err := ParseURL(v)
	if err != nil {
		e.errs = append(e.errs, fmt.Errorf("%s: invalid URL: %w", name, err))
		return def
	}
	switch {
	case u.Scheme == "":
		e.errs = append(e.errs, fmt.Errorf("%s: invalid URL %q: no scheme", name, u.Redacted()))
		return def
	case len(schemes) > 0 && !slices.Contains(schemes, u.Scheme):
		e.errs = append(e.errs, fmt.Errorf("%s: invalid URL %q: scheme %q is not one of %s",
			name, u.Redacted(), u.Scheme, strings.Join(schemes, ", ")))
		return def
	}
	return v
}
