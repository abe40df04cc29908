// Package privateinfra starts private RabbitMQ and PostgreSQL servers for
// fault-injection tests: each on its own loopback ports, with its data,
// logs and (for RabbitMQ) its own Erlang cookie and epmd under a directory
// of the caller's, so a test may kill, stop and restart them without
// disturbing the machine's shared servers. Every command it runs is bounded
// by a timeout.
package privateinfra

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/testport"
)

// RabbitMQHome is where the RabbitMQ scripts live on Debian and Ubuntu.
const RabbitMQHome = "/usr/lib/rabbitmq/bin"

// ctlTimeout bounds one rabbitmqctl call unless the caller's context is
// shorter.
const ctlTimeout = 30 * time.Second

// QuorumStatsLag is how stale the message counts the private node reports
// for a quorum queue may be: it refreshes them every second (its quorum
// queues' tick, quorum_tick_interval, set so; RabbitMQ's default is 5 s,
// platformtest.QuorumStatsLag), so a test waiting for its queues to look
// empty for longer than this waits less.
const QuorumStatsLag = time.Second

// RabbitMQ is a private RabbitMQ node. Its methods are not safe for
// concurrent use with each other, except Ctl.
type RabbitMQ struct {
	// Node is the Erlang node name, e.g. "faults-1a2b@localhost".
	Node string
	// Port is the AMQP port on 127.0.0.1; DistPort the Erlang distribution
	// port; EPMDPort the private epmd's port.
	Port, DistPort, EPMDPort int
	// URL is the AMQP URL of the node (guest/guest).
	URL string
	// Dir holds the node's data, logs, configuration and cookie.
	Dir string

	env  []string
	proc *process
	// epmd is the node's name server on EPMDPort, started before the
	// node and kept across its restarts.
	epmd *process
}

// process is one started server process and its exit.
type process struct {
	cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// StartRabbitMQ starts a node with its data under dir (created if needed)
// and waits until it accepts AMQP connections. Call Close to stop it.
func StartRabbitMQ(ctx context.Context, dir string) (*RabbitMQ, error) {
	server := filepath.Join(RabbitMQHome, "rabbitmq-server")
	if _, err := os.Stat(server); err != nil {
		return nil, fmt.Errorf("start rabbitmq: rabbitmq-server not installed: %w", err)
	}
	ports, err := testport.Ports(3)
	if err != nil {
		return nil, fmt.Errorf("start rabbitmq: %w", err)
	}
	r := &RabbitMQ{
		Node: "faults-" + randomHex(4) + "@localhost",
		Port: ports[0], DistPort: ports[1], EPMDPort: ports[2],
		Dir: dir,
	}
	r.URL = fmt.Sprintf("amqp://guest:guest@127.0.0.1:%d/", r.Port)
	home := filepath.Join(dir, "home")
	for _, d := range []string{home, filepath.Join(dir, "mnesia"), filepath.Join(dir, "log")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("start rabbitmq: %w", err)
		}
	}
	files := map[string]string{
		filepath.Join(home, ".erlang.cookie"):   randomHex(16),
		filepath.Join(dir, "rabbitmq-env.conf"): "",
		filepath.Join(dir, "enabled_plugins"):   "[].\n",
		// No default listener: only the loopback port of this node.
		filepath.Join(dir, "rabbitmq.conf"):   fmt.Sprintf("listeners.tcp.1 = 127.0.0.1:%d\nloopback_users = none\n", r.Port),
		filepath.Join(dir, "advanced.config"): fmt.Sprintf("[{rabbit, [{quorum_tick_interval, %d}]}].\n", QuorumStatsLag.Milliseconds()),
	}
	for path, content := range files {
		if err := os.WriteFile(path, []byte(content), 0o400); err != nil {
			return nil, fmt.Errorf("start rabbitmq: %w", err)
		}
	}
	r.env = append(os.Environ(),
		"HOME="+home,
		"RABBITMQ_NODENAME="+r.Node,
		"RABBITMQ_NODE_IP_ADDRESS=127.0.0.1",
		"RABBITMQ_NODE_PORT="+strconv.Itoa(r.Port),
		"RABBITMQ_DIST_PORT="+strconv.Itoa(r.DistPort),
		"RABBITMQ_MNESIA_BASE="+filepath.Join(dir, "mnesia"),
		"RABBITMQ_LOG_BASE="+filepath.Join(dir, "log"),
		"RABBITMQ_CONF_ENV_FILE="+filepath.Join(dir, "rabbitmq-env.conf"),
		"RABBITMQ_CONFIG_FILE="+filepath.Join(dir, "rabbitmq.conf"),
		"RABBITMQ_ADVANCED_CONFIG_FILE="+filepath.Join(dir, "advanced.config"),
		"RABBITMQ_ENABLED_PLUGINS_FILE="+filepath.Join(dir, "enabled_plugins"),
		"RABBITMQ_PID_FILE="+filepath.Join(dir, "pid"),
		"ERL_EPMD_PORT="+strconv.Itoa(r.EPMDPort),
		"ERL_EPMD_ADDRESS=127.0.0.1",
		"ERL_FLAGS=-kernel inet_dist_use_interface {127,0,0,1}",
		// The script then execs the Erlang VM instead of forking it, so
		// the VM is our child and dies with the test (Pdeathsig).
		"RUNNING_UNDER_SYSTEMD=true",
	)
	if err := r.startEPMD(ctx); err != nil {
		r.Close()
		return nil, err
	}
	if err := r.Start(ctx); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// startEPMD starts the node's epmd in the foreground as the test's child,
// so that, like the node, it dies with the test even when the test is
// killed; the node would otherwise start one as a daemon that outlives
// it. The node finds it on ERL_EPMD_PORT.
func (r *RabbitMQ) startEPMD(ctx context.Context) error {
	path := findEPMD()
	if path == "" {
		var err error
		if path, err = exec.LookPath("epmd"); err != nil {
			return fmt.Errorf("start epmd: %w", err)
		}
	}
	cmd := exec.Command(path, "-port", strconv.Itoa(r.EPMDPort), "-address", "127.0.0.1")
	cmd.Env = r.env
	var err error
	if r.epmd, err = startProcess(cmd, filepath.Join(r.Dir, "epmd.out"), nil); err != nil {
		return fmt.Errorf("start epmd: %w", err)
	}
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(r.EPMDPort))
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			return c.Close()
		}
		if r.epmd.exited() || time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("start epmd on %s: %w\n%s", addr, err, tail(filepath.Join(r.Dir, "epmd.out"), 1000))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Start starts the node (again, after Kill or Shutdown) on the same data
// and waits until it accepts AMQP connections.
func (r *RabbitMQ) Start(ctx context.Context) error {
	if r.proc != nil && !r.proc.exited() {
		return errors.New("start rabbitmq: already running")
	}
	cmd := exec.Command(filepath.Join(RabbitMQHome, "rabbitmq-server"))
	cmd.Env = r.env
	p, err := startProcess(cmd, filepath.Join(r.Dir, "server.out"), nil)
	if err != nil {
		return fmt.Errorf("start rabbitmq: %w", err)
	}
	r.proc = p
	if err := r.WaitReady(ctx, 90*time.Second); err != nil {
		return fmt.Errorf("start rabbitmq: %w\n%s", err, tail(filepath.Join(r.Dir, "server.out"), 3000))
	}
	return nil
}

// WaitReady waits until the node's application is running and an AMQP
// connection opens, for at most timeout.
func (r *RabbitMQ) WaitReady(ctx context.Context, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		if r.proc != nil && r.proc.exited() {
			return fmt.Errorf("rabbitmq node exited: %v", r.proc.err)
		}
		if _, last = r.Ctl(ctx, "await_startup", "--timeout", "5"); last == nil {
			last = r.ping()
			if last == nil {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("rabbitmq node %s not ready: %w", r.Node, last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// ping opens and closes one AMQP connection.
func (r *RabbitMQ) ping() error {
	conn, err := amqp.DialConfig(r.URL, amqp.Config{Dial: amqp.DefaultDial(3 * time.Second)})
	if err != nil {
		return err
	}
	return conn.Close()
}

// Ctl runs rabbitmqctl against the node and returns its output. It is
// bounded by ctx and by 30 seconds.
func (r *RabbitMQ) Ctl(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, ctlTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(RabbitMQHome, "rabbitmqctl"), append([]string{"-n", r.Node}, args...)...)
	cmd.Env = r.env
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("rabbitmqctl %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return string(out), nil
}

// Kill sends SIGKILL to the node's process group and waits for it to exit.
func (r *RabbitMQ) Kill() error {
	if r.proc == nil || r.proc.exited() {
		return errors.New("kill rabbitmq: not running")
	}
	if err := syscall.Kill(-r.proc.cmd.Process.Pid, syscall.SIGKILL); err != nil {
		return fmt.Errorf("kill rabbitmq: %w", err)
	}
	select {
	case <-r.proc.done:
		return nil
	case <-time.After(30 * time.Second):
		return errors.New("kill rabbitmq: node still running 30 s after SIGKILL")
	}
}

// Running reports whether the node's process runs (its application may
// still be stopped; see WaitReady).
func (r *RabbitMQ) Running() bool { return r.proc != nil && !r.proc.exited() }

// StopApp stops the RabbitMQ application, leaving the Erlang node up.
func (r *RabbitMQ) StopApp(ctx context.Context) error {
	_, err := r.Ctl(ctx, "stop_app")
	return err
}

// StartApp starts the application stopped by StopApp and waits until it
// accepts AMQP connections.
func (r *RabbitMQ) StartApp(ctx context.Context) error {
	if _, err := r.Ctl(ctx, "start_app"); err != nil {
		return err
	}
	return r.WaitReady(ctx, time.Minute)
}

// CloseAllConnections closes every client connection of this node.
func (r *RabbitMQ) CloseAllConnections(ctx context.Context, reason string) error {
	_, err := r.Ctl(ctx, "close_all_connections", reason)
	return err
}

// QueueStats maps each queue name to its ready and unacknowledged message
// counts.
type QueueStats map[string][2]int

// Queues lists the node's queues with their message counts.
func (r *RabbitMQ) Queues(ctx context.Context) (QueueStats, error) {
	out, err := r.Ctl(ctx, "list_queues", "-q", "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
	if err != nil {
		return nil, err
	}
	return ParseQueueStats(out), nil
}

// ParseQueueStats reads the output of `rabbitmqctl list_queues -q
// --no-table-headers name messages_ready messages_unacknowledged`.
func ParseQueueStats(out string) QueueStats {
	stats := QueueStats{}
	for line := range strings.Lines(out) {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		ready, err1 := strconv.Atoi(f[1])
		unacked, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		stats[f[0]] = [2]int{ready, unacked}
	}
	return stats
}

// Close shuts the node down (killing it if it does not stop in time),
// stops its epmd and removes nothing: the caller owns Dir.
func (r *RabbitMQ) Close() {
	if r.proc != nil && !r.proc.exited() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_, _ = r.Ctl(ctx, "shutdown")
		cancel()
		select {
		case <-r.proc.done:
		case <-time.After(10 * time.Second):
		}
		if !r.proc.exited() {
			_ = r.Kill()
		}
	}
	if r.epmd != nil && !r.epmd.exited() {
		_ = r.epmd.cmd.Process.Kill()
		<-r.epmd.done
	}
}

// findEPMD locates epmd in the Erlang installation.
func findEPMD() string {
	matches, _ := filepath.Glob("/usr/lib/erlang/erts-*/bin/epmd")
	if len(matches) == 0 {
		return ""
	}
	return matches[len(matches)-1]
}

// startProcess starts cmd as the test's child, with its output appended
// to the file at logPath, in a process group of its own (so a kill
// reaches its helpers too) and killed if the test dies (Pdeathsig), as
// cred's user when cred is not nil.
func startProcess(cmd *exec.Cmd, logPath string, cred *syscall.Credential) (*process, error) {
	log, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer log.Close() // The child has its own copy.
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL, Credential: cred}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// tail returns the last n bytes of the file at path, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
