// Command devrun runs the whole platform on this machine for development:
// it checks that RabbitMQ and PostgreSQL answer, creates the database if
// missing, builds the binaries, starts a local SMTP sink (unless something
// already listens on the SMTP port), starts every service and the gateway
// with their output prefixed by name, waits until all report SERVING, and
// prints where everything is. Ctrl-C or SIGTERM stops it all gracefully.
//
// It is what `make run` runs.
package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/buildflags"
	"github.com/ordermesh/ordermesh/internal/healthcheck"
	"github.com/ordermesh/ordermesh/internal/postgres"
)

func main() {
	// `make run` execs devrun in its place, but make stays its parent: if
	// make is stopped (kill, a closed terminal), devrun gets SIGTERM and
	// stops everything as it does on Ctrl-C. A closed terminal also sends
	// SIGHUP to make and devrun: devrun ignores it, so that the SIGTERM
	// of make's end is its first signal (a graceful stop), not a second
	// one (which kills).
	_, _, _ = syscall.RawSyscall(syscall.SYS_PRCTL, syscall.PR_SET_PDEATHSIG, uintptr(syscall.SIGTERM), 0)
	signal.Ignore(syscall.SIGHUP)
	// Output piped to a reader that has gone (`make run | tee`, Ctrl-C)
	// fails its writes instead of ending devrun mid-stop.
	signal.Ignore(syscall.SIGPIPE)
	// The first Ctrl-C or SIGTERM stops everything gracefully; a second one
	// kills what is still running.
	ctx, stop := context.WithCancel(context.Background())
	hurry := make(chan struct{})
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	go func() {
		<-sigs
		stop()
		<-sigs
		close(hurry)
	}()
	err := run(ctx, hurry, os.Getenv, os.Stdout)
	signal.Stop(sigs)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ordermesh:", err)
		os.Exit(1)
	}
}

// process is one binary devrun starts.
type process struct {
	name string
	// pkg is the Go package to build.
	pkg string
	// grpcAddr is where it serves gRPC (health is checked there); empty for
	// the gateway, which is checked over HTTP.
	grpcAddr string
	env      []string
}

type config struct {
	amqpURL     string
	databaseURL string
	smtpAddr    string
	httpAddr    string
	binDir      string
	// stopGrace is how long a process may take to stop after SIGTERM
	// before it is killed: ORDERMESH_DRAIN_DELAY (serving on while health
	// says NOT_SERVING), its shutdown phases (in-flight RPCs and event
	// handlers side by side, then the outbox flush) of
	// ORDERMESH_SHUTDOWN_TIMEOUT each, at most, and a margin.
	stopGrace time.Duration
}

func loadConfig(getenv func(string) string) config {
	get := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	shutdown, err := time.ParseDuration(get("ORDERMESH_SHUTDOWN_TIMEOUT", "15s"))
	if err != nil || shutdown <= 0 {
		shutdown = 15 * time.Second // the services refuse the value and say so
	}
	drain, err := time.ParseDuration(get("ORDERMESH_DRAIN_DELAY", "0s"))
	if err != nil || drain < 0 {
		drain = 0 // refused by the services likewise
	}
	return config{
		amqpURL:     get("ORDERMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
		databaseURL: get("ORDERMESH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/ordermesh?sslmode=disable"),
		smtpAddr:    get("ORDERMESH_SMTP_ADDR", "127.0.0.1:1025"),
		httpAddr:    get("ORDERMESH_HTTP_ADDR", "127.0.0.1:8080"),
		binDir:      get("ORDERMESH_BIN_DIR", filepath.Join(".run", "bin")),
		stopGrace:   drain + 3*shutdown + 5*time.Second,
	}
}

// run starts the platform and stops it when ctx ends; once hurry is
// closed, the processes still stopping are killed.
func run(ctx context.Context, hurry <-chan struct{}, getenv func(string) string, stdout io.Writer) error {
	cfg := loadConfig(getenv)
	out := &lockedWriter{w: stdout}
	say := func(format string, args ...any) { fmt.Fprintf(out, "devrun  | "+format+"\n", args...) }

	// Preflight: settings the processes cannot share, the broker and the
	// database.
	if err := checkShared(getenv); err != nil {
		return err
	}
	if err := checkRabbitMQ(ctx, cfg.amqpURL); err != nil {
		return err
	}
	say("RabbitMQ is up at %s", redact(cfg.amqpURL))
	if err := checkPostgres(ctx, cfg.databaseURL); err != nil {
		return err
	}
	say("PostgreSQL is up; database ready at %s", redact(cfg.databaseURL))

	// Build.
	procs := []process{
		{name: "order", pkg: "./services/order", grpcAddr: "127.0.0.1:50051"},
		{name: "inventory", pkg: "./services/inventory", grpcAddr: "127.0.0.1:50052"},
		{name: "payment", pkg: "./services/payment", grpcAddr: "127.0.0.1:50053"},
		{name: "notification", pkg: "./services/notification", grpcAddr: "127.0.0.1:50054"},
		{name: "gateway", pkg: "./gateway"},
	}
	say("building %d binaries into %s", len(procs), cfg.binDir)
	if err := build(ctx, cfg.binDir, procs); err != nil {
		return err
	}

	// Mail: a local sink unless something already listens on the SMTP port.
	mailWhere, stopSink, err := startMail(ctx, cfg.smtpAddr, out)
	if err != nil {
		return err
	}
	defer stopSink()

	// Start everything.
	signalled := ctx
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	exited := make(chan string, len(procs))
	var children []*child
	for _, p := range procs {
		cmd := exec.Command(filepath.Join(cfg.binDir, p.name))
		cmd.Env = os.Environ()
		if p.grpcAddr != "" {
			cmd.Env = append(cmd.Env, "ORDERMESH_GRPC_ADDR="+p.grpcAddr)
		} else {
			cmd.Env = append(cmd.Env, "ORDERMESH_HTTP_ADDR="+cfg.httpAddr)
		}
		cmd.Env = append(cmd.Env, p.env...)
		cmd.Stdout = prefixed(out, p.name)
		cmd.Stderr = cmd.Stdout
		// Own process group: Ctrl-C reaches devrun, which then stops each
		// child with SIGTERM in order.
		// If devrun itself dies, the kernel stops the children too.
		cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
		if err := cmd.Start(); err != nil {
			cancel()
			_ = stopAll(children, cfg.stopGrace, hurry, out)
			return fmt.Errorf("start %s: %w", p.name, err)
		}
		c := &child{name: p.name, cmd: cmd, done: make(chan struct{})}
		children = append(children, c)
		go func() {
			c.err = cmd.Wait()
			close(c.done)
			if ctx.Err() == nil {
				say("%s exited unexpectedly: %v", p.name, c.err)
			}
			exited <- p.name
		}()
	}
	stopped := false
	defer func() {
		if !stopped {
			cancel() // what stops now was stopped, not lost
			_ = stopAll(children, cfg.stopGrace, hurry, out)
		}
	}()
	shutDown := func() error {
		stopped = true
		cancel()
		say("shutting down")
		err := stopAll(children, cfg.stopGrace, hurry, out)
		if err == nil {
			say("stopped")
		}
		return err
	}

	// Wait for health.
	if err := waitServing(ctx, procs, cfg.httpAddr, exited); err != nil {
		if signalled.Err() != nil {
			return shutDown() // Ctrl-C while starting
		}
		return err
	}
	printBanner(out, cfg, procs, mailWhere)

	select {
	case <-ctx.Done():
		return shutDown()
	case name := <-exited:
		return fmt.Errorf("%s stopped; shutting the rest down", name)
	}
}

// child is a process devrun started.
type child struct {
	name string
	cmd  *exec.Cmd
	// done is closed once the process has exited; err is then its Wait's.
	done chan struct{}
	err  error
}

// perProcess are settings every process passes on from devrun's
// environment but must not share: each service defaults to its own.
var perProcess = []string{"ORDERMESH_ADMIN_ADDR", "ORDERMESH_DATABASE_SCHEMA"}

// checkShared refuses to start when the environment sets a perProcess
// variable: four services on one admin address would fail to start, and
// four in one schema would share one outbox and inbox table.
func checkShared(getenv func(string) string) error {
	for _, k := range perProcess {
		v := getenv(k)
		if v == "" || (k == "ORDERMESH_ADMIN_ADDR" && strings.EqualFold(strings.TrimSpace(v), "off")) {
			continue
		}
		return fmt.Errorf("%s=%q is set, and make run would give it to every service, which need one each: unset it (the services default to their own), or run the binaries yourself", k, v)
	}
	return nil
}

func checkRabbitMQ(ctx context.Context, rawURL string) error {
	conn, err := amqp.DialConfig(rawURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return fmt.Errorf(`RabbitMQ is not reachable at %s: %v
  Start it:   sudo systemctl start rabbitmq-server   (install: sudo apt-get install rabbitmq-server)
  or:         docker compose up -d rabbitmq
  or point ORDERMESH_AMQP_URL at another broker`, redact(rawURL), err)
	}
	_ = conn.Close()
	return ctx.Err()
}

func checkPostgres(ctx context.Context, rawURL string) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := postgres.CreateDatabaseIfMissing(ctx, rawURL); err != nil {
		return fmt.Errorf(`PostgreSQL is not usable at %s: %v
  Start it:   sudo systemctl start postgresql   (install: sudo apt-get install postgresql)
  or:         docker compose up -d postgres   (then ORDERMESH_DATABASE_URL=postgres://postgres:ordermesh@127.0.0.1:5432/ordermesh?sslmode=disable)
  or point ORDERMESH_DATABASE_URL at another server`, redact(rawURL), err)
	}
	return nil
}

func build(ctx context.Context, dir string, procs []process) error {
	args := append([]string{"build"}, buildflags.Args()...)
	args = append(args, "-o", dir+string(filepath.Separator))
	for _, p := range procs {
		args = append(args, p.pkg)
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("build: %w", err)
	}
	return nil
}

// waitServing polls every service's gRPC health and the gateway's /healthz
// until all answer SERVING, a process exits, or a minute passes.
func waitServing(ctx context.Context, procs []process, httpAddr string, exited <-chan string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, p := range procs {
		for {
			var err error
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			if p.grpcAddr != "" {
				err = healthcheck.GRPC(cctx, p.grpcAddr)
			} else {
				err = healthcheck.HTTP(cctx, "http://"+httpAddr+"/healthz")
			}
			cancel()
			if err == nil {
				break
			}
			select {
			case name := <-exited:
				return fmt.Errorf("%s stopped before it was ready; its output above (prefixed %q) says why", name, name)
			case <-ctx.Done():
				return fmt.Errorf("%s did not become ready: %v", p.name, err)
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// stopAll stops the gateway first, so no new requests arrive, then the
// services: SIGTERM to each, and SIGKILL to one still running after grace,
// or once hurry is closed. It returns an error if a process had to be
// killed or did not exit cleanly (one that had exited before, already
// reported, does not count).
func stopAll(children []*child, grace time.Duration, hurry <-chan struct{}, out io.Writer) error {
	var failed []string
	stop := func(cs []*child) {
		var running []*child
		for _, c := range cs {
			select {
			case <-c.done:
			default:
				_ = c.cmd.Process.Signal(syscall.SIGTERM)
				running = append(running, c)
			}
		}
		deadline, cancel := context.WithTimeout(context.Background(), grace)
		defer cancel()
		for _, c := range running {
			select {
			case <-c.done:
			case <-deadline.Done():
			case <-hurry:
			}
			// Exited, or still running when the grace ran out: asked
			// apart, so that one that exited is never taken for the other.
			select {
			case <-c.done:
				if c.err != nil {
					failed = append(failed, fmt.Sprintf("%s (%v)", c.name, c.err))
				}
			default:
				if deadline.Err() == nil {
					fmt.Fprintf(out, "devrun  | %s is still stopping; killing it, as asked\n", c.name)
				} else {
					fmt.Fprintf(out, "devrun  | %s did not stop within %s; killing it\n", c.name, grace)
				}
				_ = c.cmd.Process.Kill()
				<-c.done
				failed = append(failed, c.name+" (killed)")
			}
		}
	}
	var gateway, services []*child
	for _, c := range children {
		if c.name == "gateway" {
			gateway = append(gateway, c)
		} else {
			services = append(services, c)
		}
	}
	stop(gateway)
	stop(services)
	if len(failed) > 0 {
		return fmt.Errorf("shutdown: %s", strings.Join(failed, ", "))
	}
	return nil
}

func printBanner(w io.Writer, cfg config, procs []process, mailWhere string) {
	base := "http://" + cfg.httpAddr
	fmt.Fprintf(w, `
================================================================================
 ordermesh is running.  Ctrl-C stops everything.

 gRPC       order %s · inventory %s · payment %s · notification %s
 REST       %s/v1/orders   (stock: %s/v1/stock/{product_id})
 OpenAPI    %s/openapi.json
 Health     %s/healthz
 Mail       %s

 Stock a product, then place an order:
   curl -s -X PUT %s/v1/stock/SKU-1 -d '{"available": 100}'
   curl -s -X POST %s/v1/orders -d '{"request_id": "'$(cat /proc/sys/kernel/random/uuid)'", "customer_email": "ada@example.com", "payment_token": "tok_visa", "items": [{"product_id": "SKU-1", "quantity": 2, "unit_price": {"currency_code": "EUR", "units": 19, "nanos": 990000000}}]}'
 Then watch it: curl -sN %s/v1/orders/<id>:watch
================================================================================
`, procs[0].grpcAddr, procs[1].grpcAddr, procs[2].grpcAddr, procs[3].grpcAddr,
		base, base, base, base, mailWhere, base, base, base)
}

// redact hides a URL's password.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

// lockedWriter serializes whole writes from several processes. A write
// that fails (the terminal closed, the disk full) is dropped, reported as
// done: the processes' output pipes must go on being read, or a process
// writing a log line while it stops would be ended by SIGPIPE.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(p)
	return len(p), nil
}

// prefixed returns a writer that writes each complete line to w prefixed
// with name; a partial line waits for its end (or is lost when the process
// dies mid-line, which is fine for logs).
func prefixed(w io.Writer, name string) io.Writer {
	return &linePrefixer{w: w, prefix: fmt.Sprintf("%-7.7s | ", name)}
}

type linePrefixer struct {
	w       io.Writer
	prefix  string
	partial []byte
}

func (l *linePrefixer) Write(p []byte) (int, error) {
	l.partial = append(l.partial, p...)
	for {
		i := bytes.IndexByte(l.partial, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := make([]byte, 0, len(l.prefix)+i+1)
		line = append(append(line, l.prefix...), l.partial[:i+1]...)
		if _, err := l.w.Write(line); err != nil {
			return len(p), err
		}
		l.partial = l.partial[i+1:]
	}
}

// listening reports whether something accepts connections on addr.
func listening(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, 500*time.Millisecond)
	if err != nil {
		return false
	}
	_ = c.Close()
	return true
}
