// Package platformtest runs the real ordermesh binaries as processes for
// end-to-end tests and benchmarks: on an isolated database and topology
// prefix, against the machine's RabbitMQ and PostgreSQL, with an in-process
// SMTP sink receiving the mail, and cleans all of it up afterwards.
package platformtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ordermesh/ordermesh/internal/buildflags"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/healthcheck"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/internal/testport"
)

// Services are the gRPC services of the platform, in start order.
var Services = []string{"order", "inventory", "payment", "notification"}

// AMQPURL is the test broker: ORDERMESH_TEST_AMQP_URL or the local default.
func AMQPURL() string {
	if u := os.Getenv("ORDERMESH_TEST_AMQP_URL"); u != "" {
		return u
	}
	return eventbus.DefaultURL
}

// Options tune a platform; the zero value gives the defaults.
type Options struct {
	// RetryDelays is ORDERMESH_RETRY_DELAYS for every service; default
	// "200ms,500ms" so retried messages settle quickly.
	RetryDelays string
	// Env adds variables to every process.
	Env []string
	// ProcessEnv adds variables to one process, by name ("order", …,
	// "gateway"), after Env; a variable set here overrides the defaults.
	ProcessEnv map[string][]string
	// AMQPURL is the broker of the platform; default AMQPURL().
	AMQPURL string
	// AdminDatabaseURL is where the platform's database is created and
	// finally dropped (any database of the server); default
	// postgrestest.URL().
	AdminDatabaseURL string
	// BinDir holds binaries made by Build; default: Start builds them
	// into a temporary directory.
	BinDir string
	// Rewrite, if set, gives the address ("host:port") process name dials
	// instead of addr for kind "amqp" (the broker) or "postgres" (the
	// database), e.g. a fault-injecting proxy in front of it. Returning
	// addr unchanged keeps the direct link.
	Rewrite func(name, kind, addr string) string
}

// Address kinds passed to Options.Rewrite.
const (
	KindAMQP     = "amqp"
	KindPostgres = "postgres"
)

// Process is one running binary. Its fields other than Name and Addr
// change when the platform restarts it, so they are read through methods.
type Process struct {
	Name string
	// Addr is its gRPC address, or the gateway's HTTP address.
	Addr string
	env  []string
	log  *bytes.Buffer
	mu   *sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	err  error
	// starts counts how often it was started.
	starts int
}

// run returns the current incarnation's command and exit channel.
func (p *Process) run() (*exec.Cmd, chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cmd, p.done
}

// Exited reports whether the current incarnation of the process has
// exited, and its exit error.
func (p *Process) Exited() (bool, error) {
	p.mu.Lock()
	done := p.done
	p.mu.Unlock()
	select {
	case <-done:
		p.mu.Lock()
		defer p.mu.Unlock()
		return true, p.err
	default:
		return false, nil
	}
}

// Starts returns how often the process was started (1 until a Restart).
func (p *Process) Starts() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.starts
}

// Log returns what the process printed so far.
func (p *Process) Log() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

// Platform is a running set of services and the gateway.
type Platform struct {
	t        testing.TB
	Prefix   string
	Database string
	// DatabaseURL reaches the platform's database.
	DatabaseURL string
	Sink        *smtpsink.Sink
	// Procs by name: the four services and "gateway".
	Procs   map[string]*Process
	HTTPURL string
	binDir  string
	opts    Options
}

// Build compiles the binaries into dir, from the module root.
func Build(dir string) error {
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	args := append([]string{"build"}, buildflags.Args()...)
	args = append(args, "-o", dir+string(filepath.Separator))
	for _, s := range Services {
		args = append(args, "./services/"+s)
	}
	args = append(args, "./gateway")
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %v\n%s", err, out)
	}
	return nil
}

func moduleRoot() (string, error) {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		return "", errors.New("cannot locate the module root")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", "..")), nil
}

// Start builds the binaries (into a temporary directory) and starts the
// platform on a fresh database and topology prefix; everything is stopped
// and removed when the test ends. It fails the test if a service does not
// become SERVING within a minute.
func Start(t testing.TB, opts Options) *Platform {
	t.Helper()
	if opts.RetryDelays == "" {
		opts.RetryDelays = "200ms,500ms"
	}
	if opts.AMQPURL == "" {
		opts.AMQPURL = AMQPURL()
	}
	if opts.AdminDatabaseURL == "" {
		opts.AdminDatabaseURL = postgrestest.URL()
	}
	binDir := opts.BinDir
	if binDir == "" {
		binDir = t.TempDir()
		if err := Build(binDir); err != nil {
			t.Fatal(err)
		}
	}
	id := randomID(t)
	p := &Platform{t: t, Prefix: "e2e-" + id + ".", Database: "e2e_" + id, Procs: map[string]*Process{}, binDir: binDir, opts: opts}

	u, err := url.Parse(opts.AdminDatabaseURL)
	if err != nil {
		t.Fatalf("parse test database url: %v", err)
	}
	u.Path = "/" + p.Database
	p.DatabaseURL = u.String()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := postgres.CreateDatabaseIfMissing(ctx, p.DatabaseURL); err != nil {
		t.Fatalf("PostgreSQL at %s is required: %v", opts.AdminDatabaseURL, err)
	}
	t.Cleanup(p.dropDatabase)
	t.Cleanup(p.deleteTopology)

	sink, err := smtpsink.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start smtp sink: %v", err)
	}
	p.Sink = sink
	t.Cleanup(func() { _ = sink.Close() })
	t.Cleanup(func() { p.Stop() })

	for _, name := range Services {
		p.start(name, testport.Addr(t))
	}
	p.start("gateway", testport.Addr(t))
	p.HTTPURL = "http://" + p.Procs["gateway"].Addr
	p.WaitServing(time.Minute)
	return p
}

func (p *Platform) start(name, addr string) {
	p.t.Helper()
	env := append(os.Environ(),
		"ORDERMESH_DATABASE_URL="+p.rewriteURL(name, KindPostgres, p.DatabaseURL),
		"ORDERMESH_AMQP_URL="+p.rewriteURL(name, KindAMQP, p.opts.AMQPURL),
		"ORDERMESH_TOPOLOGY_PREFIX="+p.Prefix,
		"ORDERMESH_RETRY_DELAYS="+p.opts.RetryDelays,
		"ORDERMESH_SMTP_ADDR="+p.Sink.Addr(),
		"ORDERMESH_SHUTDOWN_TIMEOUT=20s",
		// Several platforms may run at once: no fixed admin ports.
		"ORDERMESH_ADMIN_ADDR=off",
	)
	if name == "gateway" {
		env = append(env, "ORDERMESH_HTTP_ADDR="+addr,
			"ORDERMESH_ORDER_ADDR="+p.Procs["order"].Addr,
			"ORDERMESH_INVENTORY_ADDR="+p.Procs["inventory"].Addr)
	} else {
		env = append(env, "ORDERMESH_GRPC_ADDR="+addr)
	}
	env = append(env, p.opts.Env...)
	env = append(env, p.opts.ProcessEnv[name]...)
	proc := &Process{Name: name, Addr: addr, env: env, log: &bytes.Buffer{}, mu: &sync.Mutex{}}
	if err := p.launch(proc); err != nil {
		p.t.Fatalf("start %s: %v", name, err)
	}
	p.Procs[name] = proc
}

// rewriteURL applies Options.Rewrite to the host of u.
func (p *Platform) rewriteURL(name, kind, u string) string {
	if p.opts.Rewrite == nil {
		return u
	}
	parsed, err := url.Parse(u)
	if err != nil {
		return u
	}
	parsed.Host = p.opts.Rewrite(name, kind, parsed.Host)
	return parsed.String()
}

// launch starts a new incarnation of proc; its output goes on in the same
// log.
func (p *Platform) launch(proc *Process) error {
	cmd := exec.Command(filepath.Join(p.binDir, proc.Name))
	cmd.Env = proc.env
	w := &lockedBuffer{buf: proc.log, mu: proc.mu}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	proc.mu.Lock()
	defer proc.mu.Unlock()
	if proc.starts > 0 {
		fmt.Fprintf(proc.log, "---- platformtest: restart %d of %s ----\n", proc.starts, proc.Name)
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	proc.cmd, proc.done = cmd, done
	proc.starts++
	go func() {
		err := cmd.Wait()
		proc.mu.Lock()
		proc.err = err
		proc.mu.Unlock()
		close(done)
	}()
	return nil
}

// Kill sends SIGKILL to process name and waits for it to exit.
func (p *Platform) Kill(name string) error {
	proc := p.Procs[name]
	if proc == nil {
		return fmt.Errorf("kill %s: no such process", name)
	}
	cmd, done := proc.run()
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill %s: %w", name, err)
	}
	select {
	case <-done:
		return nil
	case <-time.After(30 * time.Second):
		return fmt.Errorf("kill %s: still running 30 s after SIGKILL", name)
	}
}

// Restart starts process name again, with the same address and
// environment, after it exited (see Kill). It does not wait for health;
// see WaitHealthy.
func (p *Platform) Restart(name string) error {
	proc := p.Procs[name]
	if proc == nil {
		return fmt.Errorf("restart %s: no such process", name)
	}
	if exited, _ := proc.Exited(); !exited {
		return fmt.Errorf("restart %s: still running", name)
	}
	if err := p.launch(proc); err != nil {
		return fmt.Errorf("restart %s: %w", name, err)
	}
	return nil
}

// WaitHealthy waits until process name is healthy (see Healthy), for at
// most timeout; it returns the last health error, or an error at once if
// the process exits.
func (p *Platform) WaitHealthy(ctx context.Context, name string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		err := p.Healthy(name)
		if err == nil {
			return nil
		}
		if exited, exitErr := p.Procs[name].Exited(); exited {
			return fmt.Errorf("%s exited: %v", name, exitErr)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s not healthy after %v: %w", name, timeout, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// WaitServing waits until every service's overall health is SERVING and
// the gateway's /healthz answers 200.
func (p *Platform) WaitServing(timeout time.Duration) {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for _, name := range append(append([]string{}, Services...), "gateway") {
		for {
			err := p.Healthy(name)
			if err == nil {
				break
			}
			if exited, exitErr := p.Procs[name].Exited(); exited {
				p.t.Fatalf("%s exited before it was ready: %v\n%s", name, exitErr, p.Procs[name].Log())
			}
			if time.Now().After(deadline) {
				p.t.Fatalf("%s not ready after %v: %v\n%s", name, timeout, err, p.Procs[name].Log())
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// Healthy reports whether process name is SERVING (gateway: /healthz 200).
func (p *Platform) Healthy(name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	proc := p.Procs[name]
	if name == "gateway" {
		return healthcheck.HTTP(ctx, "http://"+proc.Addr+"/healthz")
	}
	return healthcheck.GRPC(ctx, proc.Addr)
}

// Dial returns a client connection to service name, closed at test end.
func (p *Platform) Dial(name string) *grpc.ClientConn {
	p.t.Helper()
	conn, err := grpc.NewClient(p.Procs[name].Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		p.t.Fatalf("dial %s: %v", name, err)
	}
	p.t.Cleanup(func() { conn.Close() })
	return conn
}

// Stop sends SIGTERM to every process (gateway first) and waits up to 30 s
// for each; it returns the processes that did not exit cleanly. Stopping a
// stopped platform does nothing.
func (p *Platform) Stop() map[string]error {
	names := append([]string{"gateway"}, Services...)
	for _, n := range names {
		proc := p.Procs[n]
		if proc == nil {
			continue
		}
		cmd, done := proc.run()
		select {
		case <-done:
		default:
			_ = cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	failed := map[string]error{}
	for _, n := range names {
		proc := p.Procs[n]
		if proc == nil {
			continue
		}
		cmd, done := proc.run()
		select {
		case <-done:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			failed[n] = errors.New("did not stop within 30 s of SIGTERM")
			continue
		}
		if _, err := proc.Exited(); err != nil {
			failed[n] = err
		}
	}
	return failed
}

// QuorumStatsLag is how stale the message counts rabbitmqctl reports for
// a quorum queue may be: RabbitMQ refreshes them every 5 s (its quorum
// queues' tick). A queue must look empty for longer than this before it
// can be taken to be.
const QuorumStatsLag = 5 * time.Second

// QueuesBusy counts, by queue name, the messages in every service queue
// and retry queue of the platform (not the dead-letter queues): those
// ready (as the queue reports them now) and those a consumer holds
// unacknowledged, so that a delivery being handled counts. The latter come
// from the local RabbitMQ node (rabbitmqctl), as CloseConnections does,
// and lag by up to QuorumStatsLag; it fails if a queue of the platform is
// missing from the node's list (another node's broker, say).
func (p *Platform) QueuesBusy(ctx context.Context) (map[string]int, error) {
	uri, err := amqp.ParseURI(p.opts.AMQPURL)
	if err != nil {
		return nil, fmt.Errorf("broker url: %w", err)
	}
	out, err := exec.CommandContext(ctx, "rabbitmqctl", "-q", "list_queues", "-p", uri.Vhost, "--no-table-headers",
		"name", "messages_ready", "messages_unacknowledged").CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("rabbitmqctl list_queues: %w\n%s", err, out)
	}
	listed := privateinfra.ParseQueueStats(string(out))
	conn, err := amqp.DialConfig(p.opts.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(10 * time.Second)})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	busy := map[string]int{}
	for _, name := range p.QueueNames() {
		counts, ok := listed[name]
		if !ok {
			return nil, fmt.Errorf("queue %s is not among the local node's queues", name)
		}
		// A channel per queue: a passive declare of a missing queue
		// closes its channel.
		ch, err := conn.Channel()
		if err != nil {
			return nil, err
		}
		q, err := ch.QueueDeclarePassive(name, true, false, false, false, nil)
		_ = ch.Close()
		if err != nil {
			return nil, fmt.Errorf("inspect queue %s: %w", name, err)
		}
		busy[name] = q.Messages + counts[1] // ready now, unacknowledged as last refreshed
	}
	return busy, nil
}

// QueueNames returns the names of every service queue and retry queue of
// the platform (not the dead-letter queues): the queues its services
// declare, which must all be there once they are up.
func (p *Platform) QueueNames() []string {
	var names []string
	for _, s := range Services {
		cfg := eventbus.Config{Prefix: p.Prefix, Service: s}
		names = append(names, cfg.QueueName())
		for _, d := range strings.Split(p.opts.RetryDelays, ",") {
			if v, err := time.ParseDuration(strings.TrimSpace(d)); err == nil {
				names = append(names, cfg.RetryQueueName(v))
			}
		}
	}
	return names
}

// OutboxPending counts the rows waiting in every service's outbox, those
// the broker refused (outbox_deferred) included.
func (p *Platform) OutboxPending(ctx context.Context) (map[string]int, error) {
	conn, err := pgx.Connect(ctx, p.DatabaseURL)
	if err != nil {
		return nil, err
	}
	defer conn.Close(ctx)
	out := map[string]int{}
	for _, s := range Services {
		n, err := outbox.CountIn(ctx, conn, s)
		if err != nil {
			return nil, err
		}
		out[s] = int(n)
	}
	return out, nil
}

// Query runs a query on the platform's database.
func (p *Platform) Query(ctx context.Context, sql string, args ...any) (pgx.Rows, func(), error) {
	conn, err := pgx.Connect(ctx, p.DatabaseURL)
	if err != nil {
		return nil, nil, err
	}
	rows, err := conn.Query(ctx, sql, args...)
	if err != nil {
		conn.Close(ctx)
		return nil, nil, err
	}
	return rows, func() { rows.Close(); conn.Close(ctx) }, nil
}

// EachRow runs a query on the platform's database and calls each with
// every row it returns, stopping at the first error.
func (p *Platform) EachRow(ctx context.Context, sql string, each func(pgx.Rows) error) error {
	rows, done, err := p.Query(ctx, sql)
	if err != nil {
		return err
	}
	defer done()
	for rows.Next() {
		if err := each(rows); err != nil {
			return err
		}
	}
	return rows.Err()
}

// Strangers returns, sorted, the recipients of the SMTP sink's mail that
// are not among customers: mail no order called for.
func (p *Platform) Strangers(customers []string) []string {
	known := map[string]bool{}
	for _, c := range customers {
		known[c] = true
	}
	var out []string
	for _, m := range p.Sink.Messages() {
		for _, to := range m.To {
			if !known[to] {
				known[to] = true
				out = append(out, to)
			}
		}
	}
	slices.Sort(out)
	return out
}

// RecordedEmails returns the emails the notification service recorded as
// sent, by order id, each as its subject: "Order <id> <kind>".
func (p *Platform) RecordedEmails(ctx context.Context) (map[string][]string, error) {
	recorded := map[string][]string{}
	err := p.EachRow(ctx, `SELECT order_id, kind FROM notification.notifications`, func(rows pgx.Rows) error {
		var id, kind string
		if err := rows.Scan(&id, &kind); err != nil {
			return err
		}
		recorded[id] = append(recorded[id], "Order "+id+" "+kind)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read recorded emails: %w", err)
	}
	return recorded, nil
}

// DumpLogs writes every process's output to the test log; call it when a
// test fails.
func (p *Platform) DumpLogs() {
	for name, proc := range p.Procs {
		log := proc.Log()
		if len(log) > 20000 {
			log = "…" + log[len(log)-20000:]
		}
		p.t.Logf("---- %s ----\n%s", name, log)
	}
}

func (p *Platform) dropDatabase() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, p.opts.AdminDatabaseURL)
	if err != nil {
		p.t.Errorf("drop database %s: %v", p.Database, err)
		return
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{p.Database}.Sanitize()+" WITH (FORCE)"); err != nil {
		p.t.Errorf("drop database %s: %v", p.Database, err)
	}
}

// deleteTopology removes the exchange and every queue the services
// declared under the platform's prefix.
func (p *Platform) deleteTopology() {
	var delays []time.Duration
	for _, d := range strings.Split(p.opts.RetryDelays, ",") {
		if v, err := time.ParseDuration(strings.TrimSpace(d)); err == nil {
			delays = append(delays, v)
		}
	}
	DeleteTopology(p.t, p.opts.AMQPURL, p.Prefix, Services, delays)
}

func randomID(t testing.TB) string {
	var b [6]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("random id: %v", err)
	}
	return hex.EncodeToString(b[:])
}

type lockedBuffer struct {
	buf *bytes.Buffer
	mu  *sync.Mutex
}

func (l *lockedBuffer) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(b)
}
