package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/ordermesh/ordermesh/internal/buildflags"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/healthcheck"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/internal/testport"
)

// Services are the platform's gRPC services in start order; "gateway" is
// the REST gateway.
var Services = []string{"order", "inventory", "payment", "notification"}

// Build compiles the four services and the gateway from the module at root
// into dir, as the Dockerfile builds the images' binaries (static, without
// cgo, symbol tables stripped, buildflags.Tags), so memory is measured for
// what ships: a cgo build links libc and peaks 1.4–1.9 MiB higher.
func Build(ctx context.Context, root, dir string) error {
	args := append([]string{"build"}, buildflags.Args()...)
	args = append(args, "-trimpath", "-ldflags=-s -w", "-o", dir+string(filepath.Separator))
	for _, s := range Services {
		args = append(args, "./services/"+s)
	}
	cmd := exec.CommandContext(ctx, "go", append(args, "./gateway")...)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w\n%s", err, out)
	}
	return nil
}

// Proc is one running binary.
type Proc struct {
	Name string
	// Addr is its gRPC address, or the gateway's HTTP address.
	Addr string
	// AdminAddr serves /metrics and /debug/pprof (services only).
	AdminAddr string
	cmd       *exec.Cmd
	log       *tail
	done      chan struct{}
	err       error
}

// Pid is the process id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Platform is a set of ordermesh processes on their own database and
// topology prefix, with an SMTP sink for the notification service.
type Platform struct {
	Prefix      string
	Database    string
	DatabaseURL string
	AMQPURL     string
	Procs       map[string]*Proc
	binDir      string
	adminURL    string
	sink        *smtpsink.Sink
	retryDelays string
}

// PlatformConfig says what to start.
type PlatformConfig struct {
	// BinDir holds the binaries built by Build.
	BinDir string
	// AdminDatabaseURL reaches a database from which the platform's own
	// database is created and dropped.
	AdminDatabaseURL string
	AMQPURL          string
	// ID makes the database and prefix names unique.
	ID string
	// Names are the processes to start, in order: services and "gateway".
	Names []string
	// LogDir receives each process's output as <prefix><name>.log.
	LogDir string
}

// StartPlatform creates the platform's database, starts the processes and
// waits until every one is serving. On error, what was created is removed.
func StartPlatform(ctx context.Context, cfg PlatformConfig) (_ *Platform, err error) {
	p := &Platform{
		Prefix: "bench-" + cfg.ID + ".", Database: "bench_" + cfg.ID, AMQPURL: cfg.AMQPURL,
		Procs: map[string]*Proc{}, binDir: cfg.BinDir, adminURL: cfg.AdminDatabaseURL, retryDelays: "1s,5s",
	}
	if p.DatabaseURL, err = databaseURL(cfg.AdminDatabaseURL, p.Database); err != nil {
		return nil, err
	}
	if err := postgres.CreateDatabaseIfMissing(ctx, p.DatabaseURL); err != nil {
		return nil, fmt.Errorf("create database %s: %w", p.Database, err)
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	// The sink stands in for a mail server elsewhere: it takes each email
	// as a server would, but only counts it, so that the benchmark's own
	// process spends as little of the machine as it can on emails.
	if p.sink, err = smtpsink.Start(ctx, "127.0.0.1:0", smtpsink.WithoutKeeping()); err != nil {
		return nil, fmt.Errorf("start smtp sink: %w", err)
	}
	for _, name := range cfg.Names {
		if err := p.start(name, cfg.LogDir); err != nil {
			return nil, err
		}
	}
	if err := p.waitServing(ctx, time.Minute); err != nil {
		return nil, err
	}
	return p, nil
}

// platformSets are the variables start gives every process, whatever the
// environment says.
var platformSets = func() (names []string) {
	var p Platform
	for _, kv := range append(p.settings("order", "", ""), p.settings("gateway", "", "")...) {
		if name, _, _ := strings.Cut(kv, "="); !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}()

// settings returns the variables start gives process name, listening on
// addr with its admin endpoint on adminAddr: they come after, and so
// override, the environment's.
func (p *Platform) settings(name, addr, adminAddr string) []string {
	smtp := ""
	if p.sink != nil {
		smtp = p.sink.Addr()
	}
	env := []string{
		"ORDERMESH_DATABASE_URL=" + p.DatabaseURL,
		"ORDERMESH_AMQP_URL=" + p.AMQPURL,
		"ORDERMESH_TOPOLOGY_PREFIX=" + p.Prefix,
		"ORDERMESH_RETRY_DELAYS=" + p.retryDelays,
		"ORDERMESH_SMTP_ADDR=" + smtp,
		"ORDERMESH_SHUTDOWN_TIMEOUT=" + shutdownTimeout.String(),
		"ORDERMESH_ADMIN_ADDR=" + adminAddr,
	}
	if name != "gateway" {
		return append(env, "ORDERMESH_GRPC_ADDR="+addr)
	}
	upstream := func(name string) string {
		if pr := p.Procs[name]; pr != nil {
			return pr.Addr
		}
		return "127.0.0.1:1" // not running: nothing answers there
	}
	return append(env, "ORDERMESH_HTTP_ADDR="+addr, "ORDERMESH_ORDER_ADDR="+upstream("order"), "ORDERMESH_INVENTORY_ADDR="+upstream("inventory"))
}

func (p *Platform) start(name, logDir string) error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	adminAddr, err := freeAddr()
	if err != nil {
		return err
	}
	env := append(os.Environ(), p.settings(name, addr, adminAddr)...)
	logFile, err := os.Create(filepath.Join(logDir, p.Prefix+name+".log"))
	if err != nil {
		return fmt.Errorf("create log of %s: %w", name, err)
	}
	proc := &Proc{Name: name, Addr: addr, AdminAddr: adminAddr, log: &tail{max: 16 << 10}, done: make(chan struct{})}
	cmd := exec.Command(filepath.Join(p.binDir, name))
	cmd.Env = env
	// The file gets everything; the tail is for error messages.
	out := io.MultiWriter(logFile, proc.log)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return fmt.Errorf("start %s: %w", name, err)
	}
	proc.cmd = cmd
	go func() {
		proc.err = cmd.Wait()
		_ = logFile.Close()
		close(proc.done)
	}()
	p.Procs[name] = proc
	return nil
}

// waitServing waits until every process reports SERVING (the gateway:
// /healthz answers 200).
func (p *Platform) waitServing(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for name, proc := range p.Procs {
		for {
			err := healthy(ctx, proc)
			if err == nil {
				break
			}
			select {
			case <-proc.done:
				return fmt.Errorf("%s exited before it was ready: %v\n%s", name, proc.err, proc.log)
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%s not ready after %v: %v\n%s", name, timeout, err, proc.log)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
	return nil
}

func healthy(ctx context.Context, proc *Proc) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if proc.Name == "gateway" {
		return healthcheck.HTTP(ctx, "http://"+proc.Addr+"/healthz")
	}
	return healthcheck.GRPC(ctx, proc.Addr)
}

// Dial returns a client connection to process name.
func (p *Platform) Dial(name string) (*grpc.ClientConn, error) {
	conn, err := grpc.NewClient(p.Procs[name].Addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", name, err)
	}
	return conn, nil
}

// HTTPURL is the gateway's base URL.
func (p *Platform) HTTPURL() string { return "http://" + p.Procs["gateway"].Addr }

// Names returns the started processes' names in a stable order.
func (p *Platform) Names() []string {
	var out []string
	for _, n := range append(slices.Clone(Services), "gateway") {
		if p.Procs[n] != nil {
			out = append(out, n)
		}
	}
	return out
}

// shutdownTimeout is the processes' ORDERMESH_SHUTDOWN_TIMEOUT; a
// service's stop has two phases of it at most (the RPC and handler
// drains side by side, then the outbox flush), and Close gives it that
// and a margin before SIGKILL.
const (
	shutdownTimeout = 20 * time.Second
	stopGrace       = 2*shutdownTimeout + 10*time.Second
)

// Close stops every process (SIGTERM, then SIGKILL after stopGrace),
// drops the database and deletes the exchange and queues under the
// prefix. It returns the first problem and still does everything else.
func (p *Platform) Close() error {
	var errs []error
	for _, proc := range p.Procs {
		select {
		case <-proc.done:
		default:
			_ = proc.cmd.Process.Signal(syscall.SIGTERM)
		}
	}
	for name, proc := range p.Procs {
		select {
		case <-proc.done:
		case <-time.After(stopGrace):
			_ = proc.cmd.Process.Kill()
			<-proc.done
			errs = append(errs, fmt.Errorf("%s did not stop within %v of SIGTERM; the end of its log:\n%s", name, stopGrace, lastLines(proc.log.String(), 20)))
		}
	}
	if p.sink != nil {
		_ = p.sink.Close()
	}
	if err := dropDatabase(p.adminURL, p.Database); err != nil {
		errs = append(errs, err)
	}
	if err := deleteTopology(p.AMQPURL, p.Prefix, Services, p.retryDelays); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// databaseURL is adminURL with its database replaced by name.
func databaseURL(adminURL, name string) (string, error) {
	u, err := url.Parse(adminURL)
	if err != nil {
		return "", fmt.Errorf("parse database url: %w", err)
	}
	u.Path = "/" + name
	return u.String(), nil
}

// deleteTopology deletes the queues of services (service queue, DLQ,
// retry queues for the delays in retryDelays) and the exchange under
// prefix; queues that do not exist are fine.
func deleteTopology(amqpURL, prefix string, services []string, retryDelays string) error {
	conn, err := amqp.DialConfig(amqpURL, amqp.Config{Properties: amqp.Table{"connection_name": prefix + "cleanup"}})
	if err != nil {
		return fmt.Errorf("delete topology %s: %w", prefix, err)
	}
	defer conn.Close()
	for _, q := range queueNames(prefix, services, retryDelays, true) {
		// A failed delete closes the channel, so each gets its own.
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("delete queue %s: %w", q, err)
		}
		_, _ = ch.QueueDelete(q, false, false, false)
		_ = ch.Close()
	}
	ch, err := conn.Channel()
	if err != nil {
		return fmt.Errorf("delete exchange: %w", err)
	}
	defer ch.Close()
	if err := ch.ExchangeDelete(eventbus.Config{Prefix: prefix}.ExchangeName(), false, false); err != nil {
		return fmt.Errorf("delete exchange: %w", err)
	}
	return nil
}

// queueNames returns the queues of services under prefix: each service
// queue, its retry queues for the delays in retryDelays and, with dlq, its
// dead-letter queue.
func queueNames(prefix string, services []string, retryDelays string, dlq bool) []string {
	var delays []time.Duration
	for _, d := range strings.Split(retryDelays, ",") {
		if v, err := time.ParseDuration(strings.TrimSpace(d)); err == nil {
			delays = append(delays, v)
		}
	}
	var names []string
	for _, s := range services {
		cfg := eventbus.Config{Prefix: prefix, Service: s}
		names = append(names, cfg.QueueName())
		if dlq {
			names = append(names, cfg.DLQName())
		}
		for _, d := range delays {
			names = append(names, cfg.RetryQueueName(d))
		}
	}
	return names
}

// Emails returns how many emails the platform's SMTP sink has accepted.
func (p *Platform) Emails() int64 { return p.sink.Received() }

// drainPolls is how many polls in a row must find nothing left before
// WaitDrained believes it: a delivery a handler holds unacknowledged is in
// no queue's count, but what it writes shows up in an outbox or a queue by
// the next poll.
const (
	drainPolls    = 3
	drainInterval = 200 * time.Millisecond
)

// Drain is what WaitDrained found.
type Drain struct {
	// Took is how long the wait lasted.
	Took time.Duration
	// Initial is what the first poll found left (nil: nothing).
	Initial []string
}

// WaitDrained waits until the running services have no event left to
// work off: every service queue and retry queue has no ready message and
// every service's outbox is empty, drainPolls polls in a row. It returns
// how long that took and what was left at first, or an error naming what
// was still queued after timeout. Dead-letter queues are not waited for
// (nothing takes messages out of them); their counts are only reported.
func (p *Platform) WaitDrained(ctx context.Context, timeout time.Duration) (Drain, error) {
	var services []string
	for _, s := range Services {
		if p.Procs[s] != nil {
			services = append(services, s)
		}
	}
	var d Drain
	conn, err := amqp.DialConfig(p.AMQPURL, amqp.Config{Properties: amqp.Table{"connection_name": p.Prefix + "drain"}})
	if err != nil {
		return d, fmt.Errorf("wait for drain: %w", err)
	}
	defer conn.Close()
	db, err := pgx.Connect(ctx, p.DatabaseURL)
	if err != nil {
		return d, fmt.Errorf("wait for drain: %w", err)
	}
	defer db.Close(context.WithoutCancel(ctx))

	queues := queueNames(p.Prefix, services, p.retryDelays, false)
	start := time.Now()
	deadline := start.Add(timeout)
	quiet := 0
	for polls := 0; ; polls++ {
		left, err := p.backlog(ctx, conn, db, queues, services)
		d.Took = time.Since(start)
		if err != nil {
			return d, err
		}
		if polls == 0 {
			d.Initial = left
		}
		if len(left) == 0 {
			quiet++
			if quiet == drainPolls {
				return d, nil
			}
		} else {
			quiet = 0
		}
		if time.Now().After(deadline) {
			return d, fmt.Errorf("events not worked off after %v: %s", timeout, strings.Join(left, ", "))
		}
		select {
		case <-ctx.Done():
			return d, ctx.Err()
		case <-time.After(drainInterval):
		}
	}
}

// backlog describes what is left in queues (ready messages) and in the
// outboxes of services; nil when nothing is.
func (p *Platform) backlog(ctx context.Context, conn *amqp.Connection, db *pgx.Conn, queues, services []string) ([]string, error) {
	var left []string
	for _, q := range queues {
		n, err := readyMessages(conn, q)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			left = append(left, fmt.Sprintf("queue %s: %d ready", q, n))
		}
	}
	for _, s := range services {
		n, err := outbox.CountIn(ctx, db, s)
		if err != nil {
			return nil, err
		}
		if n > 0 {
			left = append(left, fmt.Sprintf("%s outbox: %d rows", s, n))
		}
	}
	if len(left) > 0 {
		// Say what the dead-letter queues hold too.
		for _, s := range services {
			q := eventbus.Config{Prefix: p.Prefix, Service: s}.DLQName()
			if n, err := readyMessages(conn, q); err == nil && n > 0 {
				left = append(left, fmt.Sprintf("queue %s: %d dead letters", q, n))
			}
		}
	}
	return left, nil
}

// readyMessages is the number of messages ready for delivery in queue q
// (a passive declare; messages delivered but not yet acknowledged are not
// counted).
func readyMessages(conn *amqp.Connection, q string) (int, error) {
	// A failed passive declare closes its channel, so each gets its own.
	ch, err := conn.Channel()
	if err != nil {
		return 0, fmt.Errorf("inspect queue %s: %w", q, err)
	}
	defer ch.Close()
	st, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
	if err != nil {
		return 0, fmt.Errorf("inspect queue %s: %w", q, err)
	}
	return st.Messages, nil
}

// PeakRSS returns the process's peak resident set size in bytes (VmHWM).
func (p *Proc) PeakRSS() (int64, error) {
	return procStatusKB(p.Pid(), "VmHWM:")
}

func procStatusKB(pid int, field string) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read status of %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s of %d: %w", field, pid, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("no %s in status of %d", field, pid)
}

// CPUTime returns the CPU time (user + system) the process used so far.
func (p *Proc) CPUTime() (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.Pid()))
	if err != nil {
		return 0, fmt.Errorf("read stat of %s: %w", p.Name, err)
	}
	st, err := parseProcStat(string(b))
	if err != nil {
		return 0, fmt.Errorf("parse stat of %s: %w", p.Name, err)
	}
	return st.cpu, nil
}

// CPUProfile fetches a CPU profile of d from the process into path.
func (p *Proc) CPUProfile(ctx context.Context, d time.Duration, path string) error {
	if p.AdminAddr == "" {
		return fmt.Errorf("profile %s: no admin endpoint", p.Name)
	}
	u := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", p.AdminAddr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("profile %s: %w", p.Name, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("profile %s: %w", p.Name, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("profile %s: %s", p.Name, resp.Status)
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("profile %s: %w", p.Name, err)
	}
	if _, err := io.Copy(f, resp.Body); err != nil {
		f.Close()
		return fmt.Errorf("profile %s: %w", p.Name, err)
	}
	return f.Close()
}

// freeAddr returns a loopback address for a child process to listen on,
// its port below the kernel's ephemeral range (see internal/testport): a
// port the kernel handed out for ":0" could be given to an outgoing
// connection before the child binds it.
func freeAddr() (string, error) {
	ports, err := testport.Ports(1)
	if err != nil {
		return "", fmt.Errorf("find a free port: %w", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), nil
}

// tail keeps the last max bytes written to it.
type tail struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (t *tail) Write(b []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf.Write(b)
	if over := t.buf.Len() - t.max; over > 0 {
		t.buf.Next(over)
	}
	return len(b), nil
}

func (t *tail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(len(lines)-n, 0):], "\n")
}
