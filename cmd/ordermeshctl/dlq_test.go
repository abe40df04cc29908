package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/uuid"
	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/protobuf/types/known/timestamppb"

	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/platformtest"
)

// TestDLQCommands parks a message in a service's dead-letter queue through
// the real bus and drives list, replay and discard from the command line.
func TestDLQCommands(t *testing.T) {
	prefix := "test-" + strings.ReplaceAll(uuid.NewString()[:8], "-", "") + "."
	cfg, err := eventbus.Config{
		URL: platformtest.AMQPURL(), Prefix: prefix, Service: "dlqcli",
		RetryDelays: []time.Duration{50 * time.Millisecond}, ReconnectMin: 50 * time.Millisecond, ReconnectMax: time.Second,
	}.WithDefaults()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { platformtest.DeleteTopology(t, cfg.URL, prefix, []string{cfg.Service}, cfg.RetryDelays) })
	log := slog.New(slog.DiscardHandler)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	sub, err := eventbus.NewSubscriber(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	var accept atomic.Bool
	var handled atomic.Int32
	if err := eventbus.Handle(sub, func(context.Context, *orderv1.OrderCreated, eventbus.Meta) error {
		if !accept.Load() {
			return eventbus.Permanent(errors.New("no such product"))
		}
		handled.Add(1)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	subCtx, stopSub := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() { subDone <- sub.Run(subCtx) }()
	t.Cleanup(func() { stopSub(); <-subDone })
	if err := sub.WaitUp(ctx); err != nil {
		t.Fatal(err)
	}
	pub, err := eventbus.NewPublisher(cfg, log)
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	if err := pub.WaitUp(ctx); err != nil {
		t.Fatal(err)
	}
	var ids []string
	for range 2 {
		m, err := eventbus.NewMessage(validOrderCreated(), "order", "")
		if err != nil {
			t.Fatal(err)
		}
		if err := pub.Publish(ctx, m); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, m.ID)
	}

	ctl := func(args ...string) (string, int) {
		var out, errOut bytes.Buffer
		full := append([]string{"--timeout", "10s"}, args...)
		full = append(full, "--amqp-url", cfg.URL, "--prefix", prefix)
		code := run(ctx, full, func(string) string { return "" }, &out, &errOut)
		return out.String() + errOut.String(), code
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, code := ctl("dlq", "list", "dlqcli")
		if code == exitOK && strings.Contains(out, "2 message(s) in dlqcli's dead-letter queue") {
			for _, id := range ids {
				if !strings.Contains(out, id) || !strings.Contains(out, "no such product") {
					t.Errorf("dlq list does not show %s with its reason:\n%s", id, out)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dlq list never showed both messages; last output (exit %d):\n%s", code, out)
		}
		time.Sleep(100 * time.Millisecond)
	}

	// A listing cut short by --limit says how many the queue holds.
	if out, code := ctl("dlq", "list", "dlqcli", "--limit", "1"); code != exitOK || !strings.Contains(out, "2 message(s) in dlqcli's dead-letter queue; the first 1 shown") {
		t.Errorf("dlq list --limit 1 of 2 messages: exit %d, output %q; want it to say 2, the first 1 shown", code, out)
	}

	if out, code := ctl("dlq", "replay", "dlqcli"); code != exitUsage || !strings.Contains(out, "give a message id or --all") {
		t.Errorf("dlq replay without an id: exit %d, output %q; want a usage error", code, out)
	}
	accept.Store(true)
	if out, code := ctl("dlq", "replay", "dlqcli", ids[0]); code != exitOK {
		t.Fatalf("dlq replay %s: exit %d:\n%s", ids[0], code, out)
	}
	for handled.Load() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the replayed message was never handled")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, verb := range []string{"replay", "discard"} {
		if out, code := ctl("dlq", verb, "dlqcli", ids[0]); code != exitNotFound {
			t.Errorf("dlq %s of an id no longer there: exit %d, output %q; want %d (not found)", verb, code, out, exitNotFound)
		}
	}
	if out, code := ctl("dlq", "list", "nosuchservice"); code != exitNotFound {
		t.Errorf("dlq list of a service with no dead-letter queue: exit %d, output %q; want %d (not found)", code, out, exitNotFound)
	}
	var out, errOut bytes.Buffer
	down := []string{"--timeout", "5s", "dlq", "list", "dlqcli", "--amqp-url", "amqp://guest:guest@127.0.0.1:1/", "--prefix", prefix}
	if code := run(ctx, down, func(string) string { return "" }, &out, &errOut); code != exitUnavailable {
		t.Errorf("dlq list with no broker there: exit %d, output %q; want %d (unavailable)", code, out.String()+errOut.String(), exitUnavailable)
	}
	for _, args := range [][]string{
		{"dlq", "discard", "dlqcli", "--all"},                              // not confirmed
		{"dlq", "drop", "dlqcli", "--all", "--yes"},                        // no such action
		{"dlq", "list", "dlqcli", ids[1]},                                  // list takes no id
		{"dlq", "replay", "dlqcli", ids[1], "--reason", "permanent_error"}, // --reason needs --all
		{"dlq", "replay", "dlqcli", "--all", "--reason", "no_such_reason"},
	} {
		if out, code := ctl(args...); code != exitUsage {
			t.Errorf("%v: exit %d, output %q; want a usage error", args, code, out)
		}
	}
	if out, code := ctl("dlq", "discard", "dlqcli", "--all", "--yes"); code != exitOK || !strings.Contains(out, "discarded 1 message(s)") {
		t.Errorf("dlq discard --all: exit %d, output %q; want the one message left discarded", code, out)
	}
	if out, code := ctl("dlq", "list", "dlqcli"); code != exitOK || !strings.Contains(out, "0 message(s)") {
		t.Errorf("dlq list after discard: exit %d, output %q; want an empty queue", code, out)
	}
	if n := handled.Load(); n != 1 {
		t.Errorf("handled %d messages, want only the replayed one", n)
	}
}

func validOrderCreated() *orderv1.OrderCreated {
	eur := func(units int64) *moneyv1.Money { return &moneyv1.Money{CurrencyCode: "EUR", Units: units} }
	return &orderv1.OrderCreated{
		OrderId:       uuid.NewString(),
		CustomerEmail: "ada@example.com",
		Items:         []*orderv1.LineItem{{ProductId: "SKU-1", Quantity: 1, UnitPrice: eur(5)}},
		Total:         eur(5),
		PaymentToken:  "tok_visa",
		CreateTime:    timestamppb.Now(),
	}
}

// dlqFixture is a service's queue and dead-letter queue on the test broker
// under a random prefix, declared without the bus (no subscriber, so
// nothing consumes them) and deleted when the test ends.
type dlqFixture struct {
	t      *testing.T
	ctx    context.Context
	url    string
	prefix string
	svc    string
	ch     *amqp.Channel // in confirm mode
}

func newDLQFixture(t *testing.T, svc string) *dlqFixture {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	f := &dlqFixture{t: t, ctx: ctx, url: platformtest.AMQPURL(), prefix: "test-" + uuid.NewString()[:8] + ".", svc: svc}
	conn, err := amqp.DialConfig(f.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatalf("RabbitMQ is required at %s: %v", platformtest.AMQPURL(), err)
	}
	t.Cleanup(func() { platformtest.DeleteTopology(t, f.url, f.prefix, []string{svc}, nil) })
	t.Cleanup(func() { _ = conn.Close() })
	if f.ch, err = conn.Channel(); err != nil {
		t.Fatal(err)
	}
	names := f.names()
	for _, q := range []struct{ name, kind string }{{names.QueueName(), amqp.QueueTypeQuorum}, {names.DLQName(), amqp.QueueTypeClassic}} {
		if _, err := f.ch.QueueDeclare(q.name, true, false, false, false, amqp.Table{amqp.QueueTypeArg: q.kind}); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.ch.Confirm(false); err != nil {
		t.Fatal(err)
	}
	return f
}

// names is the fixture's config, for its queue names.
func (f *dlqFixture) names() eventbus.Config {
	return eventbus.Config{URL: f.url, Prefix: f.prefix, Service: f.svc}
}

// park puts a dead letter with each of ids in the dead-letter queue.
func (f *dlqFixture) park(ids ...string) {
	f.t.Helper()
	for _, id := range ids {
		letter := amqp.Publishing{MessageId: id, Type: "ordermesh.order.v1.OrderCreated", Headers: amqp.Table{eventbus.HeaderRoutingKey: "order.created"}, Body: []byte{}}
		dc, err := f.ch.PublishWithDeferredConfirm("", f.names().DLQName(), true, false, letter)
		if err != nil {
			f.t.Fatal(err)
		}
		if ok, err := dc.WaitContext(f.ctx); err != nil || !ok {
			f.t.Fatalf("park %s: confirmed %v, %v", id, ok, err)
		}
	}
}

// waitStat waits until the dead-letter queue reports want.
func (f *dlqFixture) waitStat(want eventbus.QueueStat) {
	f.t.Helper()
	q, err := eventbus.NewDLQ(f.names(), slog.New(slog.DiscardHandler))
	if err != nil {
		f.t.Fatal(err)
	}
	var got eventbus.QueueStat
	for deadline := time.Now().Add(10 * time.Second); ; {
		if got, err = q.Stat(f.ctx); err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			f.t.Fatalf("dead-letter queue at %+v (%v), want %+v", got, err, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ctl runs ordermeshctl with args and then --amqp-url url and the
// fixture's --prefix, and returns its stdout, its stderr and exit code.
func (f *dlqFixture) ctl(url string, args ...string) (stdout, stderr string, code int) {
	var out, errOut bytes.Buffer
	full := append(append([]string(nil), args...), "--amqp-url", url, "--prefix", f.prefix)
	code = run(f.ctx, full, func(string) string { return "" }, &out, &errOut)
	return out.String(), errOut.String(), code
}

// TestDLQListJSONSaysWhatLimitLeftOut: with --json, a listing cut short
// by --limit still prints one dead letter per line on stdout, and says on
// stderr how many it left out and how to see them.
func TestDLQListJSONSaysWhatLimitLeftOut(t *testing.T) {
	f := newDLQFixture(t, "dlqjsonlimit")
	f.park("m-1", "m-2", "m-3")
	f.waitStat(eventbus.QueueStat{Ready: 3})

	stdout, stderr, code := f.ctl(f.url, "--json", "dlq", "list", f.svc, "--limit", "2")
	if code != exitOK {
		t.Fatalf("--json dlq list --limit 2: exit %d: %s%s", code, stdout, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	for i, line := range lines {
		var dl struct{ ID string }
		if err := json.Unmarshal([]byte(line), &dl); err != nil || dl.ID != fmt.Sprintf("m-%d", i+1) {
			t.Errorf("stdout line %d %q: %v; want the JSON of m-%d", i+1, line, err, i+1)
		}
	}
	if len(lines) != 2 {
		t.Errorf("stdout has %d lines, want 2:\n%s", len(lines), stdout)
	}
	if !strings.Contains(stderr, "1 more message(s) in dlqjsonlimit's dead-letter queue not shown") || !strings.Contains(stderr, "--limit 0 lists all") {
		t.Errorf("stderr %q does not say 1 more was not shown and how to list all", stderr)
	}

	if stdout, stderr, code := f.ctl(f.url, "--json", "dlq", "list", f.svc); code != exitOK || strings.Count(stdout, "\n") != 3 || stderr != "" {
		t.Errorf("--json dlq list of all 3: exit %d, stdout %q, stderr %q; want 3 lines and nothing on stderr", code, stdout, stderr)
	}

	var out, errOut bytes.Buffer
	if code := run(f.ctx, []string{"-h"}, func(string) string { return "" }, &out, &errOut); code != exitOK || !strings.Contains(errOut.String(), "dlq list SERVICE [--limit N]") {
		t.Errorf("-h: exit %d, does not document dlq list --limit:\n%s", code, errOut.String())
	}
}

// TestDLQSaysWhatIsNotReady: a message a consumer holds unacknowledged is
// not ready, and dlq cannot see it: replay of its id says it was not among
// the ready messages and that the queue's consumer may hold others, and
// replay --all says so too; a message parked while replay --all runs is
// reported still parked.
func TestDLQSaysWhatIsNotReady(t *testing.T) {
	f := newDLQFixture(t, "dlqnotready")
	f.park("m-1", "m-2")
	f.waitStat(eventbus.QueueStat{Ready: 2})
	conn, err := amqp.DialConfig(f.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	holder, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Qos(1, 0, false); err != nil {
		t.Fatal(err)
	}
	deliveries, err := holder.Consume(f.names().DLQName(), "", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case d := <-deliveries:
		if d.MessageId != "m-1" {
			t.Fatalf("the consumer took %s, want m-1", d.MessageId)
		}
	case <-f.ctx.Done():
		t.Fatal("the consumer got nothing")
	}
	f.waitStat(eventbus.QueueStat{Ready: 1, Consumers: 1})

	stdout, stderr, code := f.ctl(f.url, "dlq", "replay", f.svc, "m-1")
	if code != exitNotFound || !strings.Contains(stderr, "not among the 1 ready message(s)") || !strings.Contains(stderr, "1 consumer(s) may hold others") {
		t.Errorf("dlq replay of a held message: exit %d, output %q; want %d, saying 1 ready message was searched and the consumer may hold others", code, stdout+stderr, exitNotFound)
	}
	stdout, stderr, code = f.ctl(f.url, "dlq", "replay", f.svc, "--all")
	if code != exitOK || !strings.Contains(stdout, "replayed 1 message(s)") || !strings.Contains(stdout, "its 1 consumer(s) may hold more") {
		t.Errorf("dlq replay --all with a consumer holding one: exit %d, output %q; want the ready one replayed and the consumer named", code, stdout+stderr)
	}

	if err := holder.Close(); err != nil { // lets m-1 go
		t.Fatal(err)
	}
	f.waitStat(eventbus.QueueStat{Ready: 1})
	// m-3 is parked while replay --all replays the one message ready when
	// it began, m-1.
	p := startAMQPProxy(t, classBasic, methodBasicGet, proxyHold)
	type result struct {
		stdout, stderr string
		code           int
	}
	done := make(chan result, 1)
	go func() {
		stdout, stderr, code := f.ctl(p.url(), "--json", "dlq", "replay", f.svc, "--all")
		done <- result{stdout, stderr, code}
	}()
	p.waitFired(t, 30*time.Second)
	f.park("m-3")
	p.resume()
	r := <-done
	var got map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &got); r.code != exitOK || err != nil ||
		got["action"] != "replayed" || got["count"] != 1.0 || got["still_parked"] != 1.0 || got["consumers"] != 0.0 {
		t.Errorf("--json dlq replay --all while m-3 is parked: exit %d, stdout %q (%v), stderr %q; want count 1, still_parked 1, consumers 0", r.code, r.stdout, err, r.stderr)
	}
	stdout, stderr, code = f.ctl(f.url, "dlq", "list", f.svc)
	if code != exitOK || !strings.Contains(stdout, "m-3") || !strings.Contains(stdout, "1 message(s) in dlqnotready's dead-letter queue\n") {
		t.Errorf("dlq list after: exit %d, output %q; want m-3 alone", code, stdout+stderr)
	}
}

// TestDLQTimeoutBoundsEachCall: --timeout bounds the dial (a broker that
// never answers the handshake) and each broker call (one that never
// answers), which then fail as unavailable, well before the library's
// defaults (5 s dial, 10 s call).
func TestDLQTimeoutBoundsEachCall(t *testing.T) {
	f := newDLQFixture(t, "dlqtimeout")
	start := time.Now()
	stdout, stderr, code := f.ctl(silentBroker(t), "--timeout", "300ms", "dlq", "list", f.svc)
	if took := time.Since(start); code != exitUnavailable || took > 3*time.Second {
		t.Errorf("dlq list --timeout 300ms with a broker that never answers: exit %d after %v, output %q; want %d within 3s", code, took, stdout+stderr, exitUnavailable)
	}

	p := startAMQPProxy(t, classQueue, methodQueueDeclare, proxyStall)
	start = time.Now()
	stdout, stderr, code = f.ctl(p.url(), "--timeout", "500ms", "dlq", "list", f.svc)
	if took := time.Since(start); code != exitUnavailable || took > 5*time.Second || !strings.Contains(stderr, "deadline exceeded") {
		t.Errorf("dlq list --timeout 500ms with a broker that stops answering: exit %d after %v, output %q; want %d (deadline exceeded) within 5s", code, took, stdout+stderr, exitUnavailable)
	}
	select {
	case <-p.fired:
	default:
		t.Error("the stalled queue.declare never went through the proxy")
	}
}

// TestDLQBrokerLostMidOperationIsUnavailable: losing the broker in the
// middle of a dlq command exits 5 (unavailable), whether the link breaks
// or the broker closes the connection (320 CONNECTION_FORCED).
func TestDLQBrokerLostMidOperationIsUnavailable(t *testing.T) {
	f := newDLQFixture(t, "dlqlost")
	f.park("m-1")
	f.waitStat(eventbus.QueueStat{Ready: 1})

	t.Run("link broken", func(t *testing.T) {
		p := startAMQPProxy(t, classBasic, methodBasicGet, proxyCut)
		stdout, stderr, code := f.ctl(p.url(), "dlq", "replay", f.svc, "--all")
		if code != exitUnavailable {
			t.Errorf("dlq replay --all, link cut at the first get: exit %d, output %q; want %d", code, stdout+stderr, exitUnavailable)
		}
	})
	t.Run("closed by the broker", func(t *testing.T) {
		p := startAMQPProxy(t, classBasic, methodBasicGet, proxyHold)
		type result struct {
			out  string
			code int
		}
		done := make(chan result, 1)
		go func() {
			stdout, stderr, code := f.ctl(p.url(), "dlq", "list", f.svc)
			done <- result{stdout + stderr, code}
		}()
		p.waitFired(t, 30*time.Second)
		if n := platformtest.CloseConnections(t, f.prefix); n != 1 {
			t.Errorf("closed %d connections, want the dlq command's one", n)
		}
		r := <-done
		if r.code != exitUnavailable {
			t.Errorf("dlq list, connection closed by the broker mid-listing: exit %d, output %q; want %d", r.code, r.out, exitUnavailable)
		}
	})
	f.waitStat(eventbus.QueueStat{Ready: 1}) // nothing lost
}

// TestDLQFlagsGoAnywhere: dlq's flags may come before SERVICE; they are
// not taken for it.
func TestDLQFlagsGoAnywhere(t *testing.T) {
	f := newDLQFixture(t, "dlqflags")
	f.park("m-1", "m-2")
	f.waitStat(eventbus.QueueStat{Ready: 2})
	if stdout, stderr, code := f.ctl(f.url, "dlq", "list", "--limit", "1", f.svc); code != exitOK || !strings.Contains(stdout, "2 message(s) in dlqflags's dead-letter queue; the first 1 shown") {
		t.Errorf("dlq list --limit 1 SERVICE: exit %d, output %q; want 1 of 2 listed", code, stdout+stderr)
	}
	if stdout, stderr, code := f.ctl(f.url, "dlq", "replay", "--all", f.svc); code != exitOK || !strings.Contains(stdout, "replayed 2 message(s)") {
		t.Errorf("dlq replay --all SERVICE: exit %d, output %q; want both replayed", code, stdout+stderr)
	}
	for _, args := range [][]string{
		{"dlq", "list", "--limit", "1"}, // no service
		{"dlq", "--all", "replay"},      // no service
		{"dlq", "list", "-h"},
	} {
		if stdout, stderr, code := f.ctl(f.url, args...); code != exitUsage {
			t.Errorf("%v: exit %d, output %q; want a usage error", args, code, stdout+stderr)
		}
	}
}

// TestDLQReplayAndDiscardConfirm: replay and discard of one message say
// what they did, in text or as a JSON object.
func TestDLQReplayAndDiscardConfirm(t *testing.T) {
	f := newDLQFixture(t, "dlqconfirm")
	f.park("m-1", "m-2")
	f.waitStat(eventbus.QueueStat{Ready: 2})
	if stdout, stderr, code := f.ctl(f.url, "dlq", "replay", f.svc, "m-1"); code != exitOK || stdout != "replayed m-1 to dlqconfirm's queue\n" {
		t.Errorf("dlq replay m-1: exit %d, stdout %q, stderr %q; want it confirmed", code, stdout, stderr)
	}
	stdout, stderr, code := f.ctl(f.url, "--json", "dlq", "discard", f.svc, "m-2")
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); code != exitOK || err != nil || got["action"] != "discarded" || got["service"] != f.svc || got["id"] != "m-2" {
		t.Errorf("--json dlq discard m-2: exit %d, stdout %q (%v), stderr %q; want {action: discarded, service: %s, id: m-2}", code, stdout, err, stderr, f.svc)
	}
	f.waitStat(eventbus.QueueStat{})
}

// TestDLQReplayByReason: replay --all --reason moves only the messages of
// that reason; the others stay parked.
func TestDLQReplayByReason(t *testing.T) {
	f := newDLQFixture(t, "dlqbyreason")
	f.park("m-1", "m-2") // parked with no reason of ours
	f.waitStat(eventbus.QueueStat{Ready: 2})
	stdout, stderr, code := f.ctl(f.url, "--json", "dlq", "replay", f.svc, "--all", "--reason", "permanent_error")
	var got map[string]any
	if err := json.Unmarshal([]byte(stdout), &got); code != exitOK || err != nil || got["count"] != float64(0) || got["still_parked"] != float64(2) {
		t.Errorf("--json dlq replay --all --reason permanent_error: exit %d, stdout %q (%v), stderr %q; want none replayed, 2 still parked", code, stdout, err, stderr)
	}
}
