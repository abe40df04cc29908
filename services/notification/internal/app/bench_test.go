//go:build unix

package app_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/uuid"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
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
// lines, and confirmed), the service's steady load. It reports the
// process's CPU time per email too.
//
//	go test -run '^$' -bench BenchmarkRender ./services/notification/internal/app/
func BenchmarkRender(b *testing.B) {
	r, err := app.NewRenderer()
	if err != nil {
		b.Fatalf("new renderer: %v", err)
	}
	orderID := uuid.NewString()
	notices := []app.Notice{
		{Kind: app.KindReceived, OrderID: orderID, Recipient: "ada@example.com", Total: "EUR 20.00",
			Items: []app.Item{{ProductID: "SKU-1", Quantity: 2, UnitPrice: "EUR 9.50"}, {ProductID: "SKU-2", Quantity: 1, UnitPrice: "EUR 1.00"}}},
		{Kind: app.KindConfirmed, OrderID: orderID, Recipient: "ada@example.com", Total: "EUR 20.00"},
	}
	b.ReportAllocs()
	cpu := cpuTime(b)
	for i := 0; b.Loop(); i++ {
		if _, err := r.Render(notices[i%2]); err != nil {
			b.Fatalf("render: %v", err)
		}
	}
	// The machine may be busy with other work: CPU time is steadier than
	// the time per email.
	b.ReportMetric(float64((cpuTime(b)-cpu).Nanoseconds())/float64(b.N), "cpu-ns/email")
}

// BenchmarkDeliver processes order.created and order.confirmed, one after
// the other as the service gets them, each through the inbox runner in its
// own transaction: inbox row, rendering, the notifications claim, the
// outbox row, the email over a pooled SMTP session, commit. The SMTP sink
// runs in a process of its own (TestSinkProcess), as it does in the
// end-to-end benchmark, so the figures are the service's alone; so does
// PostgreSQL. The service's JSON logger writes to /dev/null, so each line
// it logs costs the write system call it costs the service. It reports
// allocations and the process's CPU time per email (user and system).
//
//	go test -run '^$' -bench BenchmarkDeliver -benchtime 2000x ./services/notification/internal/app/
func BenchmarkDeliver(b *testing.B) {
	ctx := context.Background()
	pool, _ := postgrestest.NewSchema(b, store.Migrations, inbox.Migrations, outbox.Migrations)
	sinkAddr := startSinkProcess(b)
	devNull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		b.Fatalf("open %s: %v", os.DevNull, err)
	}
	b.Cleanup(func() { _ = devNull.Close() })
	log := telemetry.NewLogger(devNull, app.Source, slog.LevelInfo)

	m, err := mailer.New(mailer.Config{
		Addr: sinkAddr, TLS: mailer.TLSNone, From: mailer.DefaultFrom, Timeout: 10 * time.Second,
	}, log)
	if err != nil {
		b.Fatalf("new mailer: %v", err)
	}
	b.Cleanup(m.Close)
	a, err := app.New(m, log)
	if err != nil {
		b.Fatalf("new app: %v", err)
	}
	runner := inbox.NewRunner(pool, app.Source, inbox.Metrics{})
	created := inbox.Wrap(runner, a.OrderCreated)
	confirmed := inbox.Wrap(runner, a.OrderConfirmed)

	// Event ids and orders are made before the clock starts.
	type order struct{ id, createdID, confirmedID string }
	orders := make([]order, 0, 1024)
	newOrder := func() order {
		return order{id: uuid.NewString(), createdID: uuid.Must(uuid.NewV7()).String(), confirmedID: uuid.Must(uuid.NewV7()).String()}
	}
	for range cap(orders) {
		orders = append(orders, newOrder())
	}
	meta := func(id, typ, orderID string) eventbus.Meta {
		return eventbus.Meta{
			ID: id, Type: typ, Source: "order", CorrelationID: orderID, Attempt: 1,
			TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		}
	}
	total := &moneyv1.Money{CurrencyCode: "EUR", Units: 20}
	deliver := func(i int) error {
		o := orders[(i/2)%len(orders)]
		if i%2 == 0 {
			return created(ctx, &orderv1.OrderCreated{
				OrderId: o.id, CustomerEmail: "ada@example.com", Total: total,
				Items: []*orderv1.LineItem{
					{ProductId: "SKU-1", Quantity: 2, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 9, Nanos: 500000000}},
					{ProductId: "SKU-2", Quantity: 1, UnitPrice: &moneyv1.Money{CurrencyCode: "EUR", Units: 1}},
				},
			}, meta(o.createdID, "ordermesh.order.v1.OrderCreated", o.id))
		}
		return confirmed(ctx, &orderv1.OrderConfirmed{OrderId: o.id, CustomerEmail: "ada@example.com", Total: total},
			meta(o.confirmedID, "ordermesh.order.v1.OrderConfirmed", o.id))
	}
	// Warm up: the pool's connections, prepared statements and the SMTP
	// session.
	for i := range 20 {
		if err := deliver(i); err != nil {
			b.Fatalf("deliver: %v", err)
		}
	}

	cpu := cpuTime(b)
	b.ReportAllocs()
	for i := 20; b.Loop(); i++ {
		if i/2%len(orders) == 0 && i%2 == 0 && i > 20 {
			// Every order has been used: the next round needs new ones.
			b.StopTimer()
			for k := range orders {
				orders[k] = newOrder()
			}
			b.StartTimer()
		}
		if err := deliver(i); err != nil {
			b.Fatalf("deliver %d: %v", i, err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64((cpuTime(b)-cpu).Microseconds())/float64(b.N), "cpu-µs/email")
	if c := runner.Counts(); c.Failed != 0 || c.Duplicates != 0 {
		b.Fatalf("runner counts %+v: want every delivery processed", c)
	}
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

// cpuTime returns the CPU time the process has used so far.
func cpuTime(b *testing.B) time.Duration {
	b.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
