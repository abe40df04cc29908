// Package faults is ordermesh's fault-injection suite. It runs the real
// binaries (internal/platformtest) against a private RabbitMQ node and a
// private PostgreSQL cluster that it starts itself on their own ports and
// data directories (internal/platformtest/privateinfra), so it may kill,
// stop and cut them off without disturbing the machine's shared servers.
// Each scenario places a few thousand orders while it injects its faults,
// then checks the platform's invariants: every accepted order ends in a
// terminal state within a minute of the last fault, none is lost, no order
// is charged twice and every compensated charge is refunded, stock
// reconciles exactly, each expected email is sent once, every outbox is
// empty and the dead-letter queues hold exactly the poison injected.
//
// The suite runs only with ORDERMESH_FAULTS=1 (make test-faults). -short
// runs every scenario with fewer orders and fewer faults;
// ORDERMESH_FAULTS_ORDERS overrides the number of orders per scenario.
package faults

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
)

// infra is the suite's private servers and binaries, shared by its tests,
// which run one after another.
var infra struct {
	rabbit *privateinfra.RabbitMQ
	pg     *privateinfra.PostgreSQL
	binDir string
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	// The suite takes minutes and kills servers: it runs when asked for
	// (make test-faults), not as part of every go test ./....
	if os.Getenv("ORDERMESH_FAULTS") == "" {
		fmt.Println("faults: not run; set ORDERMESH_FAULTS=1 (make test-faults) to run the fault-injection suite")
		return 0
	}
	removeAbandoned(os.TempDir())
	// The PostgreSQL cluster is owned by the postgres user when the suite
	// runs as root: its directory must be reachable by that user.
	dir, err := os.MkdirTemp("", workDirPattern)
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	// Written aside and renamed into place, so that another run never
	// reads it half-written.
	if err := os.WriteFile(filepath.Join(dir, ownerFile+".new"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	if err := os.Rename(filepath.Join(dir, ownerFile+".new"), filepath.Join(dir, ownerFile)); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		fmt.Fprintln(os.Stderr, "faults:", err)
		return 1
	}
	start := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	infra.binDir = filepath.Join(dir, "bin")
	if err := platformtest.Build(infra.binDir); err != nil {
		fmt.Fprintln(os.Stderr, "faults: build binaries:", err)
		return 1
	}
	infra.rabbit, err = privateinfra.StartRabbitMQ(ctx, filepath.Join(dir, "rabbitmq"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: a private RabbitMQ node is required (rabbitmq-server installed under /usr/lib/rabbitmq):", err)
		return 1
	}
	defer infra.rabbit.Close()
	infra.pg, err = privateinfra.StartPostgreSQL(ctx, filepath.Join(dir, "postgresql"))
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: a private PostgreSQL cluster is required (initdb and pg_ctl under /usr/lib/postgresql/*/bin):", err)
		return 1
	}
	defer infra.pg.Close()
	fmt.Printf("faults: private RabbitMQ %s on 127.0.0.1:%d, PostgreSQL on 127.0.0.1:%d, ready in %v\n",
		infra.rabbit.Node, infra.rabbit.Port, infra.pg.Port, time.Since(start).Round(time.Millisecond))
	return m.Run()
}

// The suite's working directory (binaries, the servers' data and logs) is
// a temporary directory named after workDirPattern, holding the pid of
// the test process that owns it in ownerFile.
const (
	workDirPattern = "ordermesh-faults-"
	ownerFile      = "owner.pid"
)

// removeAbandoned removes the working directories of earlier runs that
// were killed before they could remove their own (their servers died with
// them): those whose owner is no longer running, or that never got an
// owner and are more than an hour old.
func removeAbandoned(tmp string) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, workDirPattern+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, ownerFile))
		pid, perr := strconv.Atoi(string(b))
		if err != nil || perr != nil {
			if fi, err := os.Stat(dir); err != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if syscall.Kill(pid, 0) != syscall.ESRCH {
			continue
		}
		if err := os.RemoveAll(dir); err == nil {
			fmt.Println("faults: removed", dir, "left by an earlier run")
		}
	}
}
