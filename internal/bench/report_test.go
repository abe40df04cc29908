package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/ordermesh/ordermesh/internal/cputime"
	"github.com/ordermesh/ordermesh/internal/loadgen"
)

func sampleResult() *Result {
	start := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	return &Result{
		Started: start, Finished: start.Add(6 * time.Minute), Rounds: 2,
		Create: map[int]*CreateTrials{
			8: {Raw: []float64{2000, 2500}, GRPC: []float64{1000, 900},
				RawCPU: CPUUse{Machine: 1800 * time.Millisecond, Elapsed: time.Second, CPUs: 2, Ops: 4500,
					ByKind: map[string]time.Duration{"PostgreSQL": 1000 * time.Millisecond, "load generator": 600 * time.Millisecond}},
				GRPCCPU: CPUUse{Machine: 1900 * time.Millisecond, Elapsed: time.Second, CPUs: 2, Ops: 1900,
					ByKind: map[string]time.Duration{"PostgreSQL": 500 * time.Millisecond, "RabbitMQ": 300 * time.Millisecond,
						"order": 700 * time.Millisecond, "gateway": 19 * time.Millisecond, "load generator": 190 * time.Millisecond}}},
			50: {Raw: []float64{4000, 3000}, GRPC: []float64{1000, 1200},
				RawCPU:  CPUUse{Machine: time.Second, Elapsed: time.Second, CPUs: 2, Ops: 4000},
				GRPCCPU: CPUUse{Machine: time.Second, Elapsed: time.Second, CPUs: 2, Ops: 2000}},
		},
		REST: []float64{600, 840},
		RESTCPU: CPUUse{Machine: 2 * time.Second, Elapsed: time.Second, CPUs: 2, Ops: 1000,
			ByKind: map[string]time.Duration{"order": 300 * time.Millisecond, "gateway": 500 * time.Millisecond, "load generator": 400 * time.Millisecond}},
		BusRaw: []float64{10000, 12000, 11000}, Bus: []float64{9000, 10800, 8000},
		E2E:         loadgen.Summary{Protocol: "grpc", Concurrency: 50, Created: 6000, ConfirmedPerSec: 321.6, TerminalSeconds: 18.7, Tracking: "t"},
		HalfRate:    loadgen.Summary{Protocol: "grpc", TargetRate: 160.8, Created: 4800, Tracking: "t", TerminalLatency: loadgen.Latency{P99: 87.25}},
		CPU:         map[string]time.Duration{"order": 6 * time.Second, "inventory": 3 * time.Second},
		MachineBusy: 0.9, MachineCPU: 30 * time.Second,
		OtherCPU:      map[string]time.Duration{"PostgreSQL": 10 * time.Second, "RabbitMQ": 6 * time.Second, "load generator": 3 * time.Second, "sshd": time.Second},
		RSS:           map[string]int64{"order": 50 << 20, "inventory": 30 << 20, "notification": 45 << 20, "create/order": 40 << 20},
		Profiles:      map[string]string{"order": "flat flat%"},
		HalfRateDrain: 4200 * time.Millisecond,
		EmailOrders:   6200, Emails: 12400,
		Relay: &RelayLag{
			Duration: 10 * time.Second, Rounds: 5, PollInterval: 500 * time.Millisecond,
			Relay: LagRun{Target: 1000, Rate: 998.6, Lag: loadgen.Latency{P50: 4.25, P95: 9.5, P99: 18.04, Max: 40},
				ToPublish: loadgen.Latency{P50: 1.5, P99: 6}, Commit: loadgen.Latency{P99: 2.5},
				Batches: 2000, MeanBatch: 5, MaxBatch: 31, Publish: loadgen.Latency{P50: 2, P99: 7.5}, Between: loadgen.Latency{P50: 1.25, P99: 4}},
			Raw: LagRun{Target: 1000, Rate: 999.1, Lag: loadgen.Latency{P50: 1.5, P95: 3, P99: 5.25, Max: 12}, Commit: loadgen.Latency{P99: 2}},
			Diagnostics: []LagDiagnostic{{Name: "diagnostic: the same relay with 4 workers",
				Run: LagRun{Target: 1000, Rate: 1000, Lag: loadgen.Latency{P50: 3, P95: 6, P99: 9, Max: 20}, ToPublish: loadgen.Latency{P50: 0.5, P99: 2}, Commit: loadgen.Latency{P99: 1}}}},
		},
	}
}

func TestRatios(t *testing.T) {
	r := sampleResult()
	got := map[string]float64{"create": r.CreateVsRaw(), "bus": r.BusVsRaw(), "rest": r.RESTVsGRPC()}
	// create: min(1000/2500, 1200/4000) = 0.3; bus 10800/12000; rest 840/1200.
	want := map[string]float64{"create": 0.3, "bus": 0.9, "rest": 0.7}
	if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b float64) bool { return a-b < 1e-9 && b-a < 1e-9 })); diff != "" {
		t.Errorf("ratios (-want +got):\n%s", diff)
	}
	if got := (&Result{Create: map[int]*CreateTrials{}}).CreateVsRaw(); got != 0 {
		t.Errorf("CreateVsRaw without trials = %v, want 0", got)
	}
	if got := Ratio(5, 0); got != 0 {
		t.Errorf("Ratio(5, 0) = %v, want 0", got)
	}
}

func TestFinalLine(t *testing.T) {
	got := FinalLine(sampleResult())
	want := "bench: e2e_orders_per_s=322 create_vs_raw_pg=0.30 bus_vs_raw_amqp=0.90 rest_vs_grpc=0.70"
	if got != want {
		t.Errorf("FinalLine =\n%s\nwant\n%s", got, want)
	}
}

func TestMarkdown(t *testing.T) {
	m := Machine{CPUs: 2, CPUModel: "AMD EPYC", MemTotal: "23.5 GiB", Kernel: "Linux 6", GoVersion: "go1.26.8",
		RabbitMQ: "3.10.8", PostgreSQL: "15.20", Commit: "abc123"}
	md := Markdown(sampleResult(), m, "make bench")
	for _, want := range []string{
		"- **date**: 2026-05-01 10:00 UTC (took 6m0s)",
		"- **commit**: abc123",
		"- **machine**: 2 CPUs (AMD EPYC), 23.5 GiB RAM, Linux 6",
		"- **software**: go1.26.8, RabbitMQ 3.10.8, PostgreSQL 15.20",
		"- **command**: `make bench`",
		"- **environment**: no ORDERMESH_* or Go runtime variable set",
		"| CreateOrder over gRPC, 8 clients (orders/s) | 1000 | 2500 (pgx: insert order + outbox row, commit) | 0.40 | ≥ 1.0 **not met** |",
		"| CreateOrder over gRPC, 50 clients (orders/s) | 1200 | 4000 (pgx: insert order + outbox row, commit) | 0.30 | ≥ 1.0 **not met** |",
		"| 10800 (eventbus Publisher + Subscriber) | 12000 (amqp091-go, pipelined confirms, prefetch 200) | 0.90 | ≥ 0.9 met |",
		"| CreateOrder through the REST gateway, 50 clients (orders/s) | 840 | 1200 (gRPC direct) | 0.70 | ≥ 0.7 met |",
		"| end-to-end confirmed orders/s, everything on this machine | 322 | | | ≥ 1000 **not met** |",
		"| create→confirmed p99 at half that rate (161 orders/s open loop) | 87.2 ms | | | |",
		"- create, 8 clients: raw pgx 2000, 2500 tx/s; CreateOrder gRPC 1000, 900 orders/s",
		"| outbox relay lag, commit → consumer, p99 at 1000 events/s (ms) | 18.0 (outbox Relay + eventbus Publisher) | 5.2 (amqp091-go publish right after commit) | | < 20 ms met |",
		"| outbox Relay (1 worker, batches ≤ 100, woken after each commit, poll 500ms) + eventbus Publisher | 1000 / 999 | 4.2 / 9.5 / 18.0 / 40.0 | 1.5 / 6.0 | 2.5 |",
		"| no relay: amqp091-go publish right after commit (confirm mode) | 1000 / 999 | 1.5 / 3.0 / 5.2 / 12.0 | 0.0 / 0.0 | 2.0 |",
		"| diagnostic: the same relay with 4 workers | 1000 / 1000 | 3.0 / 6.0 / 9.0 / 20.0 | 0.5 / 2.0 | 1.0 |",
		"Each kind commits its events for 10s in all, in 5 rounds interleaved with the other kinds' (after a warm-up round of each), one outbox row per transaction from 16 writers",
		"The relay made 2000 Publish calls (5.0 events each on average, at most 31); one call, send to last confirm, took p50 2.0 / p99 7.5 ms, and from the end of one call to the start of the next (DELETE, COMMIT, BEGIN, claim, and any wait for rows) p50 1.2 / p99 4.0 ms.",
		"The half-rate run started once every service queue, retry queue and outbox was empty (3 polls in a row), 4.2 s after the throughput run ended.",
		"After the throughput run the SMTP sink accepted 12400 emails for the 6200 orders of the warm-up and the throughput run: two each,",
		"| order | 50.0 MiB | 40.0 MiB | 6.0 s | 1.00 ms |  |",
		"| inventory | 30.0 MiB | — | 3.0 s | 0.50 ms | RSS < 40 MiB met |",
		"| notification | 45.0 MiB | — | 0.0 s | 0.00 ms | RSS < 40 MiB **not met** |",
		"| PostgreSQL | | | 10.0 s | 1.67 ms | |",
		"| RabbitMQ | | | 6.0 s | 1.00 ms | |",
		"| load generator | | | 3.0 s | 0.50 ms | |",
		"| other work on the machine | | | 2.0 s | 0.33 ms | |",
		"| **whole machine** (90% of 2 CPUs busy) | | | 30.0 s | 5.00 ms | |",
		"<details><summary>order</summary>",
		"| raw pgx, 8 clients | 4500 | 90% | **400** | 222 | 0 | 0 | 0 | 133 | 44 |",
		"| CreateOrder gRPC, 8 clients | 1900 | 95% | **1000** | 263 | 158 | 368 | 10 | 100 | 101 |",
		"CreateOrder cost the machine 2.5× (8 clients) and 2.0× (50 clients) the CPU of a raw transaction",
		"| CreateOrder REST, 50 clients | 1000 | 100% | **2000** | 0 | 0 | 300 | 500 | 400 | 800 |",
		"a CreateOrder through the gateway cost the machine 4.0× the CPU of one over gRPC at 50 clients",
		"Summary line: `bench: e2e_orders_per_s=322 create_vs_raw_pg=0.30 bus_vs_raw_amqp=0.90 rest_vs_grpc=0.70`",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, line := range strings.Split(md, "\n") {
		if strings.HasPrefix(line, "bench:") {
			t.Errorf("report has a line starting with bench: (only the final line may): %q", line)
		}
	}
}

// TestMarkdownNamesTheEnvironment: variables the services inherit that
// change how they run are named in the report, a credential's value
// hidden; the benchmark's own server addresses, and what it sets for every
// process itself, are left out.
func TestMarkdownNamesTheEnvironment(t *testing.T) {
	t.Setenv("ORDERMESH_MEMORY_LIMIT", "off")
	t.Setenv("GOGC", "400")
	t.Setenv("ORDERMESH_SMTP_PASSWORD", "hunter2")
	t.Setenv("ORDERMESH_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
	t.Setenv("ORDERMESH_DATABASE_URL", "postgres://me:pw@db/ordermesh")
	t.Setenv("ORDERMESH_INVENTORY_ADDR", "10.0.0.9:50052") // set for the gateway alone
	m := DescribeMachine(context.Background(), t.TempDir(), "postgres://127.0.0.1:1/none", "amqp://127.0.0.1:1/")
	md := Markdown(sampleResult(), m, "make bench")
	if want := "- **environment** (the services inherit it): `GOGC=400`, `ORDERMESH_MEMORY_LIMIT=off`, `ORDERMESH_SMTP_PASSWORD=(set, not shown)`"; !strings.Contains(md, want) {
		t.Errorf("report lacks %q:\n%s", want, md)
	}
	for _, leak := range []string{"ORDERMESH_TEST_", "hunter2", "ORDERMESH_DATABASE_URL", "ORDERMESH_INVENTORY_ADDR"} {
		if strings.Contains(md, leak) {
			t.Errorf("report names %q: the benchmark's own variables, those it sets itself, or a credential:\n%s", leak, md)
		}
	}
}

func TestMarkdownEmails(t *testing.T) {
	for _, tt := range []struct {
		emails int64
		want   string
	}{
		{emails: 12403, want: "accepted 12403 emails for the 6200 orders of the warm-up and the throughput run: **3 more** than two each"},
		{emails: 12398, want: "accepted 12398 emails for the 6200 orders of the warm-up and the throughput run: **2 fewer** than two each"},
	} {
		r := sampleResult()
		r.Emails = tt.emails
		if md := Markdown(r, Machine{}, "make bench"); !strings.Contains(md, tt.want) {
			t.Errorf("report of %d emails lacks %q:\n%s", tt.emails, tt.want, md)
		}
	}
}

func TestWaitEmails(t *testing.T) {
	counter := func(counts ...int64) func() int64 {
		var mu sync.Mutex
		return func() int64 {
			mu.Lock()
			defer mu.Unlock()
			c := counts[0]
			if len(counts) > 1 {
				counts = counts[1:]
			}
			return c
		}
	}
	tests := []struct {
		name     string
		received func() int64
		want     int64
	}{
		{name: "all at once", received: counter(10), want: 10},
		{name: "arriving", received: counter(4, 8, 10, 10), want: 10},
		{name: "more than two an order", received: counter(12), want: 12},
		{name: "fewer, after the timeout", received: counter(4, 6, 9), want: 9},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := waitEmails(t.Context(), tt.received, 10, 500*time.Millisecond)
			if err != nil || got != tt.want {
				t.Errorf("waitEmails = %d, %v; want %d", got, err, tt.want)
			}
		})
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := waitEmails(ctx, counter(3), 10, time.Minute); !errors.Is(err, context.Canceled) {
		t.Errorf("waitEmails with a done context: %v, want context.Canceled", err)
	}
}

func TestMarkdownWithoutOptionalPhases(t *testing.T) {
	r := sampleResult()
	r.Relay, r.HalfRateDrain, r.EmailOrders = nil, 0, 0
	for _, t := range r.Create {
		t.RawCPU, t.GRPCCPU = CPUUse{}, CPUUse{}
	}
	r.RESTCPU = CPUUse{}
	md := Markdown(r, Machine{}, "make bench")
	for _, absent := range []string{"outbox relay lag", "Outbox relay lag", "The half-rate run started", "CPU per operation in the create trials", "emails for the"} {
		if strings.Contains(md, absent) {
			t.Errorf("report without the relay phase, the drain and create CPU figures has %q:\n%s", absent, md)
		}
	}
}

func TestRelayVerdict(t *testing.T) {
	tests := []struct {
		name              string
		target, rate, p99 float64
		want              string
	}{
		{"under the goal at the offered rate", 1000, 990, 19.9, "met"},
		{"at the goal", 1000, 1000, 20, "**not met**"},
		{"over the goal", 1000, 1000, 35, "**not met**"},
		{"offered rate not reached", 1000, 900, 5, "**not met** (only 900 events/s committed)"},
		{"offered less than the goal's rate", 200, 200, 5, "not measured (offered 200 events/s)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := &RelayLag{Relay: LagRun{Target: tt.target, Rate: tt.rate, Lag: loadgen.Latency{P99: tt.p99}}}
			if got := l.Verdict(); got != tt.want {
				t.Errorf("Verdict() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestReplaceGenerated(t *testing.T) {
	tests := []struct {
		name, doc, want string
	}{
		{
			"replaces between the markers, keeps the rest",
			"# B\n\nintro\n\n" + beginMarker + "\nold\n" + endMarker + "\n\n## Analysis\nkept\n",
			"# B\n\nintro\n\n" + beginMarker + "\nnew\n" + endMarker + "\n\n## Analysis\nkept\n",
		},
		{
			"appends markers when missing",
			"# B\n\nintro\n",
			"# B\n\nintro\n\n" + beginMarker + "\nnew\n" + endMarker + "\n",
		},
		{
			"markers in the wrong order are treated as missing",
			endMarker + "\n" + beginMarker + "\n",
			endMarker + "\n" + beginMarker + "\n\n" + beginMarker + "\nnew\n" + endMarker + "\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, ReplaceGenerated(tt.doc, "new\n\n")); diff != "" {
				t.Errorf("ReplaceGenerated (-want +got):\n%s", diff)
			}
		})
	}
}

func TestWriteDoc(t *testing.T) {
	path := filepath.Join(t.TempDir(), "benchmarks.md")
	if err := WriteDoc(path, "first"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(strings.Replace(mustRead(t, path), "# Benchmarks\n", "# Benchmarks\n\nhand-written\n", 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := WriteDoc(path, "second"); err != nil {
		t.Fatal(err)
	}
	want := "# Benchmarks\n\nhand-written\n\n" + beginMarker + "\nsecond\n" + endMarker + "\n"
	if diff := cmp.Diff(want, mustRead(t, path)); diff != "" {
		t.Errorf("document (-want +got):\n%s", diff)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestProcField(t *testing.T) {
	cpuinfo := "processor\t: 0\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu\n"
	if got := procField(cpuinfo, "model name"); got != "AMD EPYC 7B13" {
		t.Errorf("model name = %q", got)
	}
	if got := procField(cpuinfo, "bogus"); got != "unknown" {
		t.Errorf("missing field = %q, want unknown", got)
	}
}

func TestProcStatusOfSelf(t *testing.T) {
	rss, err := procStatusKB(os.Getpid(), "VmHWM:")
	if err != nil {
		t.Fatal(err)
	}
	if rss < 1<<20 || rss > 64<<30 {
		t.Errorf("own peak RSS = %d bytes, implausible", rss)
	}
	if _, err := procStatusKB(os.Getpid(), "NoSuchField:"); err == nil {
		t.Error("missing field: no error")
	}
}

func TestParseHandlerStats(t *testing.T) {
	text := `# HELP ordermesh_eventbus_handle_seconds Handler duration.
# TYPE ordermesh_eventbus_handle_seconds histogram
ordermesh_eventbus_handle_seconds_bucket{routing_key="stock.reserved",le="0.001"} 2
ordermesh_eventbus_handle_seconds_sum{routing_key="stock.reserved"} 1.5
ordermesh_eventbus_handle_seconds_count{routing_key="stock.reserved"} 30
ordermesh_eventbus_handle_seconds_sum{routing_key="payment.succeeded",service="x"} 2.25
ordermesh_eventbus_handle_seconds_count{routing_key="payment.succeeded",service="x"} 9
ordermesh_eventbus_consumed_total{routing_key="stock.reserved"} 30
ordermesh_eventbus_retried_total{routing_key="stock.reserved"} 4
ordermesh_eventbus_outage_retried_total{routing_key="stock.reserved"} 6
`
	got, err := parseHandlerStats(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]HandlerStat{"stock.reserved": {Count: 30, Seconds: 1.5, Retried: 4, OutageRetried: 6}, "payment.succeeded": {Count: 9, Seconds: 2.25}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseHandlerStats (-want +got):\n%s", diff)
	}
	d := diffStats(map[string]HandlerStat{"stock.reserved": {Count: 10, Seconds: 0.5}}, got)
	wantDiff := map[string]HandlerStat{"stock.reserved": {Count: 20, Seconds: 1, Retried: 4, OutageRetried: 6}, "payment.succeeded": {Count: 9, Seconds: 2.25}}
	if diff := cmp.Diff(wantDiff, d); diff != "" {
		t.Errorf("diffStats (-want +got):\n%s", diff)
	}
}

func TestParseMachineCPU(t *testing.T) {
	before, err := parseMachineCPU("cpu  100 5 50 800 20 3 2 0 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\ncpu1 50 3 25 400 10 2 1 0 0 0\nintr 1\n")
	if err != nil {
		t.Fatal(err)
	}
	if before != (machineCPU{busy: 160, total: 980, cpus: 2}) {
		t.Errorf("before = %+v, want busy 160 of 980 ticks on 2 CPUs", before)
	}
	after, err := parseMachineCPU("cpu  250 5 100 850 20 3 2 0 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if got := after.busySince(before); got != 0.8 {
		t.Errorf("busy share = %v, want 200 busy of 250 ticks = 0.8", got)
	}
	if got := before.busySince(after); got != 0 {
		t.Errorf("busy share going backwards = %v, want 0", got)
	}
	if got := after.busyTimeSince(before); got != 2*time.Second {
		t.Errorf("busy time = %v, want 200 ticks of 10ms = 2s", got)
	}
	// Steal (the eighth field) is time the machine waited, not worked.
	stolen, err := parseMachineCPU("cpu  100 5 50 800 20 3 2 40 0 0\n")
	if err != nil {
		t.Fatal(err)
	}
	if stolen != (machineCPU{busy: 160, total: 1020}) {
		t.Errorf("with steal = %+v, want busy 160 of 1020 ticks", stolen)
	}
	for _, bad := range []string{"", "intr 1 2 3", "cpu 1 2 3", "cpu 1 2 x 4 5 6 7 8"} {
		if _, err := parseMachineCPU(bad); err == nil {
			t.Errorf("parseMachineCPU(%q) succeeded", bad)
		}
	}
}

func TestCPUByCommand(t *testing.T) {
	st, err := parseProcStat("4242 (beam.smp) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 30 0 100 2000000 5000")
	if err != nil {
		t.Fatal(err)
	}
	if st.comm != "beam.smp" || st.cpu != 3*time.Second {
		t.Errorf("parseProcStat = %+v, want beam.smp with 300 ticks = 3s", st)
	}
	if st, err := parseProcStat("7 (a (b) c) R 1 1 1 0 -1 0 0 0 0 0 10 20 0 0 20 0 1 0 1 1 1"); err != nil || st.comm != "a (b) c" || st.cpu != 300*time.Millisecond {
		t.Errorf("command name with parentheses: %+v, %v", st, err)
	}
	if _, err := parseProcStat("9 (x) S 1 2"); err == nil {
		t.Error("parseProcStat of a short line succeeded")
	}

	self := os.Getpid()
	before := map[int]procSample{
		10: {"postgres", time.Second}, 11: {"postgres", 2 * time.Second}, 20: {"beam.smp", 10 * time.Second},
		30: {"order", time.Second}, self: {"bench", time.Second}, 40: {"sshd", time.Second},
		50: {"oldname", 5 * time.Second},
	}
	after := map[int]procSample{
		10: {"postgres", 3 * time.Second}, 12: {"postgres", time.Second}, 20: {"beam.smp", 14 * time.Second},
		30: {"order", 9 * time.Second}, self: {"bench", 2 * time.Second}, 40: {"sshd", time.Second},
		50: {"newname", time.Second}, // a reused pid counts from zero
	}
	got := cpuByCommand(before, after, map[int]bool{30: true})
	want := map[string]time.Duration{"PostgreSQL": 3 * time.Second, "RabbitMQ": 4 * time.Second, "load generator": time.Second, "newname": time.Second}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("cpuByCommand = %v, want %v", got, want)
	}
}

func TestCPUWindowCountsThisProcessAndPools(t *testing.T) {
	var u CPUUse
	var outer time.Duration
	for range 2 {
		t0 := time.Now()
		w := startCPUWindow()
		// Busy until this process has used 120 ms of CPU, however
		// loaded the machine is (other goroutines of the process count
		// too, so this may take less wall time).
		for start := cputime.Self(t); cputime.Self(t)-start < 120*time.Millisecond; {
		}
		w.end(&u, 10)
		outer += time.Since(t0)
	}
	if u.Ops != 20 || u.Elapsed <= 0 || u.Elapsed > outer || u.CPUs < 1 {
		t.Errorf("pooled windows: %d ops over %v (measured from outside: %v) on %d CPUs, want 20 ops", u.Ops, u.Elapsed, outer, u.CPUs)
	}
	// Clock ticks are 10 ms: allow for rounding at both ends.
	if self := u.ByKind["load generator"]; self < 200*time.Millisecond {
		t.Errorf("this process used %v in windows with 240 ms of its CPU, want ≥ 200ms (%v)", self, u.ByKind)
	}
	if u.Machine < u.ByKind["load generator"]/2 {
		t.Errorf("machine busy %v is far below this process's %v", u.Machine, u.ByKind["load generator"])
	}
	if got := u.PerOp(u.Machine); got != u.Machine/20 {
		t.Errorf("PerOp = %v, want %v", got, u.Machine/20)
	}
}
