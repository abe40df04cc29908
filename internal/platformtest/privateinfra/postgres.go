package privateinfra

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/ordermesh/ordermesh/internal/testport"
)

// PostgreSQL is a private PostgreSQL cluster. Its methods are not safe for
// concurrent use.
type PostgreSQL struct {
	// Port is the TCP port on 127.0.0.1.
	Port int
	// URL reaches the cluster's "postgres" database as user postgres
	// (trust authentication).
	URL string
	// Dir holds the data directory, the socket directory and the log.
	Dir string

	bin string
	// runAs is the unprivileged user that owns the cluster when the test
	// runs as root (PostgreSQL refuses to run as root), empty otherwise;
	// cred is that user's credentials for the server process.
	runAs string
	cred  *syscall.Credential
	// proc is the server (postmaster), a child of the test's process.
	proc *process
}

// StartPostgreSQL creates a cluster under dir (which must not exist yet or
// be empty) and starts it. When the test runs as root, the cluster belongs
// to the "postgres" system user: dir and its parents must be searchable by
// it. Call Close to stop it.
func StartPostgreSQL(ctx context.Context, dir string) (*PostgreSQL, error) {
	bin, err := postgresBin()
	if err != nil {
		return nil, fmt.Errorf("start postgresql: %w", err)
	}
	ports, err := testport.Ports(1)
	if err != nil {
		return nil, fmt.Errorf("start postgresql: %w", err)
	}
	p := &PostgreSQL{Port: ports[0], Dir: dir, bin: bin}
	p.URL = fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres?sslmode=disable", p.Port)
	if err := os.MkdirAll(filepath.Join(dir, "sock"), 0o755); err != nil {
		return nil, fmt.Errorf("start postgresql: %w", err)
	}
	if os.Geteuid() == 0 {
		p.runAs = "postgres"
		u, err := user.Lookup(p.runAs)
		if err != nil {
			return nil, fmt.Errorf("start postgresql: running as root needs the %q user: %w", p.runAs, err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		p.cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}}
		for _, d := range []string{dir, filepath.Join(dir, "sock")} {
			if err := os.Chown(d, uid, gid); err != nil {
				return nil, fmt.Errorf("start postgresql: %w", err)
			}
		}
	}
	if out, err := p.run(ctx, time.Minute, "initdb", "-D", p.dataDir(), "-U", "postgres",
		"--auth=trust", "-E", "UTF8", "--no-sync"); err != nil {
		return nil, fmt.Errorf("start postgresql: initdb: %w: %s", err, out)
	}
	if err := p.Start(ctx); err != nil {
		return nil, err
	}
	return p, nil
}

// postgresBin finds the newest PostgreSQL server installation.
func postgresBin() (string, error) {
	matches, _ := filepath.Glob("/usr/lib/postgresql/*/bin/pg_ctl")
	if len(matches) == 0 {
		if p, err := exec.LookPath("pg_ctl"); err == nil {
			return filepath.Dir(p), nil
		}
		return "", errors.New("pg_ctl not found under /usr/lib/postgresql/*/bin or on PATH")
	}
	sort.Slice(matches, func(i, j int) bool {
		vi, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(matches[i]))))
		vj, _ := strconv.Atoi(filepath.Base(filepath.Dir(filepath.Dir(matches[j]))))
		return vi < vj
	})
	return filepath.Dir(matches[len(matches)-1]), nil
}

func (p *PostgreSQL) dataDir() string { return filepath.Join(p.Dir, "data") }

// run runs one of the cluster's programs as the cluster's owner.
func (p *PostgreSQL) run(ctx context.Context, timeout time.Duration, prog string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	path := filepath.Join(p.bin, prog)
	var cmd *exec.Cmd
	if p.runAs != "" {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", p.runAs, "--", path}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, path, args...)
	}
	// A program that leaves a child holding our output would keep
	// CombinedOutput waiting; WaitDelay bounds that.
	cmd.WaitDelay = 2 * time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Start starts the cluster (again, after Stop) unless it runs, and waits
// until it accepts connections. The server runs in the foreground as the
// test's child rather than detached by pg_ctl, so that it dies with the
// test (Pdeathsig) even when the test is killed and has no chance to stop
// it; its backends follow their postmaster.
func (p *PostgreSQL) Start(ctx context.Context) error {
	if p.proc == nil || p.proc.exited() {
		cmd := exec.Command(filepath.Join(p.bin, "postgres"), "-D", p.dataDir(),
			"-p", strconv.Itoa(p.Port), "-k", filepath.Join(p.Dir, "sock"),
			"-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300")
		var err error
		if p.proc, err = startProcess(cmd, filepath.Join(p.Dir, "server.log"), p.cred); err != nil {
			return fmt.Errorf("start postgresql: %w", err)
		}
	}
	if err := p.WaitReady(ctx, time.Minute); err != nil {
		return fmt.Errorf("start postgresql: %w\n%s", err, tail(filepath.Join(p.Dir, "server.log"), 3000))
	}
	return nil
}

// WaitReady waits until a connection to the cluster works; it gives up
// early if the server exited.
func (p *PostgreSQL) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := p.ping(ctx)
		if err == nil {
			return nil
		}
		if p.proc == nil || p.proc.exited() {
			return fmt.Errorf("postgresql on port %d is not running: %w", p.Port, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("postgresql on port %d not ready: %w", p.Port, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (p *PostgreSQL) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.URL)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.Ping(ctx)
}

// Stop stops the cluster with pg_ctl's mode: "immediate" (a crash: no
// checkpoint, every client cut off), "fast" or "smart", and waits until
// the server process has exited.
func (p *PostgreSQL) Stop(ctx context.Context, mode string) error {
	if out, err := p.run(ctx, time.Minute, "pg_ctl", "-D", p.dataDir(), "-m", mode, "-w", "-t", "50", "stop"); err != nil {
		return fmt.Errorf("stop postgresql (%s): %w: %s", mode, err, out)
	}
	if p.proc != nil {
		select {
		case <-p.proc.done:
		case <-time.After(30 * time.Second):
			return fmt.Errorf("stop postgresql (%s): the server process did not exit", mode)
		}
	}
	return nil
}

// Close stops the cluster if it runs, killing it if it does not stop in
// time; the caller owns Dir.
func (p *PostgreSQL) Close() {
	if p.proc == nil || p.proc.exited() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := p.Stop(ctx, "fast"); err != nil && p.Stop(ctx, "immediate") != nil {
		_ = p.proc.cmd.Process.Kill()
		<-p.proc.done
	}
}
