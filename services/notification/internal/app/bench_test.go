//go:build unix

package app_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"golang.org/x/sync/errgroup"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/cputime"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/inbox"
	"github.com/ordermesh/ordermesh/internal/outbox"
	"github.com/ordermesh/ordermesh/internal/postgres/postgrestest"
	"github.com/ordermesh/ordermesh/internal/smtpsink"
	"github.com/ordermesh/ordermesh/internal/telemetry"
	"github.com/ordermesh/ordermesh/services/notification/internal/app"
	"github.com/ordermesh/ordermesh/services/notification/internal/mailer"
	"github.com/ordermesh/ordermesh/services/notification/internal/store"
)

// BenchmarkRender renders the two emails of an order (received, with two
// lines, and confirmed), the service's steady load: "code" with Renderer,
// "templates" with the templates it replaced (the same emails, see
// TestRenderMatchesTemplates), the baseline. It reports the process's CPU
// time per email too.
//
//	go test -run '^$' -bench BenchmarkRender -benchmem ./services/notification/internal/app/
func BenchmarkRender(b *testing.B) {
	orderID := uuid.NewString()
	notices := []app.Notice{
		{Kind: app.KindReceived, OrderID: orderID, Recipient: "ada@example.com", Total: "EUR 20.00",
			Items: []app.Item{{ProductID: "SKU-1", Quantity: 2, UnitPrice: "EUR 9.50"}, {ProductID: "SKU-2", Quantity: 1, UnitPrice: "EUR 1.00"}}},
		{Kind: app.KindConfirmed, OrderID: orderID, Recipient: "ada@example.com", Total: "EUR 20.00"},
	}
	templates, err := app.NewTemplateRenderer()
	if err != nil {
		b.Fatalf("templates: %v", err)
	}
	code, err := app.NewRenderer()
	if err != nil {
		b.Fatalf("new renderer: %v", err)
	}
	for _, bb := range []struct {
		name string
		r    app.EmailRenderer
	}{{"templates", templates}, {"code", code}} {
		b.Run(bb.name, func(b *testing.B) {
			b.ReportAllocs()
			cpu := cputime.Self(b)
			for i := 0; b.Loop(); i++ {
				if _, err := bb.r.Render(notices[i%2]); err != nil {
					b.Fatalf("render: %v", err)
				}
			}
			// The machine may be busy with other work: CPU time is steadier
			// than the time per email.
			b.ReportMetric(float64((cputime.Self(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/email")
		})
	}
}

// BenchmarkDeliver processes order.created and order.confirmed of fresh
// orders through app.Handle run by an inbox.BatchRunner, as the service
// runs them: per transaction the batch's inbox rows, the rendering, the
// notifications claims with the outbox rows in one round trip, the emails
// over pooled SMTP sessions, sent at once, and one commit. It runs with
// one delivery in flight, so every batch holds one, and with 32, the
// service's default ORDERMESH_CONCURRENCY, so batches fill as they do
// under load. The SMTP sink runs in a process of its own
// (TestSinkProcess), as it does in the end-to-end benchmark, so the
// figures are the service's alone; so does PostgreSQL. The service's JSON
// logger writes to /dev/null, so each line it logs costs the write system
// call it costs the service.
//
// It reports allocations, the process's CPU time per email (user and
// system), that of the PostgreSQL backends serving it per email (read
// from /proc, in steps of 10 ms, so run at least a few thousand emails),
// and the emails per transaction.
//
//	go test -run '^$' -bench BenchmarkDeliver -benchtime 4000x ./services/notification/internal/app/
func BenchmarkDeliver(b *testing.B) {
	for _, inFlight := range []int{1, 32} {
		b.Run(fmt.Sprintf("in-flight=%d", inFlight), func(b *testing.B) { benchmarkDeliver(b, inFlight) })
	}
}

func benchmarkDeliver(b *testing.B, inFlight int) {
	const concurrency = 32 // ORDERMESH_CONCURRENCY's default
	pool, schema := postgrestest.NewSchema(b, store.Migrations, inbox.Migrations, outbox.Migrations)
	sinkAddr := startSinkProcess(b)
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatalf("open %s: %v", os.DevNull, err)
	}
	b.Cleanup(func() { _ = devNull.Close() })
	log := telemetry.NewLogger(devNull, app.Source, slog.LevelInfo)

	// Wired as main wires them.
	m, err := mailer.New(mailer.Config{
		Addr: sinkAddr, TLS: mailer.TLSNone, From: mailer.DefaultFrom, Timeout: 10 * time.Second,
	}, log, mailer.WithIdleSessions(concurrency))
	if err != nil {
		b.Fatalf("new mailer: %v", err)
	}
	b.Cleanup(m.Close)
	a, err := app.New(m, log, app.WithSends(concurrency))
	if err != nil {
		b.Fatalf("new app: %v", err)
	}
	runner := inbox.NewRunner(pool, app.Source, inbox.Metrics{})
	batches := inbox.NewBatchRunner(runner, a.Handle, concurrency, 30*time.Second)
	created := inbox.WrapBatch[*orderv1.OrderCreated](batches)
	confirmed := inbox.WrapBatch[*orderv1.OrderConfirmed](batches)

	// The events are made before the clock starts: two per order, the
	// warm-up's first.
	const warmUp = 64
	type event struct {
		created   *orderv1.OrderCreated
		confirmed *orderv1.OrderConfirmed
		meta      eventbus.Meta
	}
	total := &moneyv1.Money{CurrencyCode: "EUR", Units: 20}
	events := make([]event, warmUp+b.N)
	var orderID string
	for i := range events {
		meta := eventbus.Meta{
			ID: uuid.Must(uuid.NewV7()).String(), Source: "order", Attempt: 1,
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		}
		if i%2 == 0 {
			orderID = uuid.NewString()
			meta.Type, meta.CorrelationID = "ordermesh.order.v1.OrderCreated", orderID
			events[i] = event{meta: meta, created: &orderv1.OrderCreated{
				OrderId: orderID, CustomerEmail: "ada@example.com", Total: total,
				Items: []*orderv1.LineItem{
					{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500000000}},
					{ProductId: "SKU-2", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}},
				},
			}}
			continue
		}
		meta.Type, meta.CorrelationID = "ordermesh.order.v1.OrderConfirmed", orderID
		events[i] = event{meta: meta, confirmed: &orderv1.OrderConfirmed{OrderId: orderID, CustomerEmail: "ada@example.com", Total: total}}
	}
	// deliverAll delivers events[from:to], inFlight at a time.
	ctx := context.Background()
	deliverAll := func(from, to int) error {
		var next atomic.Int64
		next.Store(int64(from))
		var g errgroup.Group
		for range inFlight {
			g.Go(func() error {
				for i := int(next.Add(1) - 1); i < to; i = int(next.Add(1) - 1) {
					e := events[i]
					var err error
					if e.created != nil {
						err = created(ctx, e.created, e.meta)
					} else {
						err = confirmed(ctx, e.confirmed, e.meta)
					}
					if err != nil {
						return fmt.Errorf("deliver %d: %w", i, err)
					}
				}
				return nil
			})
		}
		return g.Wait()
	}
	// Warm up: the pool's connections, prepared statements and the SMTP
	// sessions.
	if err := deliverAll(0, warmUp); err != nil {
		b.Fatalf("warm up: %v", err)
	}
	txs, deliveries := batches.Stats()

	cpu, pgCPU := cputime.Self(b), backendsCPU(b, pool, schema)
	b.ReportAllocs()
	b.ResetTimer()
	if err := deliverAll(warmUp, len(events)); err != nil {
		b.Fatalf("%v", err)
	}
	b.StopTimer()
	usedCPU, usedPG := cputime.Self(b)-cpu, backendsCPU(b, pool, schema).since(pgCPU)
	b.ReportMetric(float64(usedCPU.Microseconds())/float64(b.N), "cpu-µs/email")
	b.ReportMetric(float64(usedPG.Microseconds())/float64(b.N), "pg-cpu-µs/email")
	endTxs, endDeliveries := batches.Stats()
	b.ReportMetric(float64(endDeliveries-deliveries)/float64(endTxs-txs), "emails/tx")
	if c := runner.Counts(); c.Failed != 0 || c.Duplicates != 0 {
		b.Fatalf("runner counts %+v: want every delivery processed", c)
	}
}

// pgCPU is the CPU time of PostgreSQL backends, by pid.
type pgCPU map[int]time.Duration

// since returns the CPU time the backends of c used since prev; one that
// was not there then counts from its start.
func (c pgCPU) since(prev pgCPU) time.Duration {
	var d time.Duration
	for pid, t := range c {
		d += t - prev[pid]
	}
	return d
}

// backendsCPU returns the CPU time (user and system) of the PostgreSQL
// backends of pool, the test schema's, told by their application name,
// as /proc shows it: PostgreSQL must run on this machine.
func backendsCPU(b *testing.B, pool *pgxpool.Pool, schema string) pgCPU {
	b.Helper()
	rows, err := pool.Query(context.Background(),
		`SELECT pid FROM pg_stat_activity WHERE application_name = $1`, "ordermesh-test-"+schema)
	if err != nil {
		b.Fatalf("list backends: %v", err)
	}
	pids, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		b.Fatalf("list backends: %v", err)
	}
	out := pgCPU{}
	for _, pid := range pids {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			b.Fatalf("PostgreSQL backend %d: %v (the benchmark reads its CPU time from /proc)", pid, err)
		}
		// The fields after the command name, in parentheses: utime and
		// stime are the 12th and 13th, in clock ticks of 10 ms.
		s := string(stat)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(f) < 13 {
			b.Fatalf("PostgreSQL backend %d: /proc stat %q", pid, s)
		}
		utime, err1 := strconv.ParseInt(f[11], 10, 64)
		stime, err2 := strconv.ParseInt(f[12], 10, 64)
		if err := errors.Join(err1, err2); err != nil {
			b.Fatalf("PostgreSQL backend %d: /proc stat: %v", pid, err)
		}
		out[int(pid)] = time.Duration(utime+stime) * 10 * time.Millisecond
	}
	return out
}

// sinkProcessEnv makes the test binary run TestSinkProcess as the sink of
// BenchmarkDeliver.
const sinkProcessEnv = "NOTIFICATION_BENCH_SINK"

// TestSinkProcess is not a test: it is BenchmarkDeliver's SMTP sink, run
// in a process of its own. It prints the sink's address, then serves
// until its standard input closes, forgetting what it received every
// second.
func TestSinkProcess(t *testing.T) {
	if os.Getenv(sinkProcessEnv) != "1" {
		t.Skip("the SMTP sink of BenchmarkDeliver, run by it in a process of its own")
	}
	s, err := smtpsink.Start(context.Background(), "127.0.0.1:0")
	if err != nil {
		t.Fatalf("start smtp sink: %v", err)
	}
	defer s.Close()
	fmt.Println(s.Addr())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = io.Copy(io.Discard, os.Stdin)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
			s.Reset()
		}
	}
}

// startSinkProcess runs TestSinkProcess in a child process and returns the
// sink's address. The child stops when the benchmark ends.
func startSinkProcess(b *testing.B) string {
	b.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestSinkProcess$")
	cmd.Env = append(os.Environ(), sinkProcessEnv+"=1")
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatalf("sink process: %v", err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatalf("sink process: %v", err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatalf("start sink process: %v", err)
	}
	b.Cleanup(func() {
		_ = stdin.Close()
		_ = cmd.Wait()
	})
	addr, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		b.Fatalf("read the sink's address: %v", err)
	}
	// The rest of its output (PASS) is not needed.
	go func() { _, _ = io.Copy(io.Discard, stdout) }()
	return strings.TrimSpace(addr)
}
