package faults

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/platformtest"
	"github.com/ordermesh/ordermesh/internal/platformtest/privateinfra"
)

// counts is what a scenario observed, for its report.
type counts struct {
	placed, accepted, acceptedDespiteError int
	errorCodes                             map[codes.Code]int
	// cancelCodes counts CancelOrder's failures, by code.
	cancelCodes    map[codes.Code]int
	byStatus       map[string]int
	events, copies int
	// routed copies per service queue, inbox rows per service.
	routed, inbox map[string]int
	emails        int
	emailResent   int
	deadLetters   int
	settled       time.Duration
	tapErrors     int
	routerCopies  int
	restarts      map[string]int
}

func (c counts) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "orders placed=%d accepted=%d (plus %d committed although CreateOrder failed) errors=%v; cancel errors=%v; final %v; ",
		c.placed, c.accepted, c.acceptedDespiteError, c.errorCodes, c.cancelCodes, c.byStatus)
	fmt.Fprintf(&b, "events=%d published copies=%d (relay republished %d); ", c.events, c.copies, c.copies-c.events)
	for _, svc := range platformtest.Services {
		q := c.routed[svc]
		fmt.Fprintf(&b, "%s: %d copies routed, %d in inbox, ≥%d duplicates absorbed; ", svc, q, c.inbox[svc], max(q-c.inbox[svc], 0))
	}
	if c.routerCopies > 0 {
		fmt.Fprintf(&b, "router published %d copies; ", c.routerCopies)
	}
	fmt.Fprintf(&b, "emails=%d (resent in the documented window: %d); dead letters=%d; restarts=%v; tap errors=%d",
		c.emails, c.emailResent, c.deadLetters, c.restarts, c.tapErrors)
	return b.String()
}

// dbOrder is an order row.
type dbOrder struct {
	id, requestID, status, reason, email string
	quantity                             int64
}

// check verifies every invariant, waiting for the platform to settle
// where the invariant is about an end state, and returns the counts.
func (s *scenario) check(ctx context.Context, sp spec, last time.Time) counts {
	t := s.t
	c := counts{errorCodes: map[codes.Code]int{}, cancelCodes: map[codes.Code]int{}, byStatus: map[string]int{}, inbox: map[string]int{}, restarts: map[string]int{}}
	placed := s.load.placed()
	c.placed = len(placed)
	byRequest := map[string]*order{}
	for _, o := range placed {
		byRequest[o.requestID] = o
		if o.code == codes.OK {
			c.accepted++
			// A cancel right after the create finds the order PENDING
			// or CONFIRMED: it succeeds, or fails as the fault allows.
			if o.kind == kindCancel && o.cancelCode != codes.OK {
				c.cancelCodes[o.cancelCode]++
				if !slices.Contains(sp.allowed, o.cancelCode) {
					t.Errorf("order %d: CancelOrder = %v, want OK or one of %v", o.n, o.cancelCode, sp.allowed)
				}
			}
			continue
		}
		c.errorCodes[o.code]++
		if !slices.Contains(sp.allowed, o.code) {
			t.Errorf("order %d: CreateOrder = %v (%s), want OK or one of %v", o.n, o.code, o.msg, sp.allowed)
		}
	}

	// No process died on its own.
	for name, p := range s.pf.Procs {
		c.restarts[name] = p.Starts() - 1
		if exited, err := p.Exited(); exited {
			t.Errorf("%s exited during the scenario: %v", name, err)
		}
	}

	// Every accepted order is durable and terminal within a minute of the
	// last fault.
	deadline := last.Add(terminalWithin)
	var orders map[string]dbOrder
	err := until(ctx, deadline, func() error {
		var err error
		if orders, err = s.orders(ctx); err != nil {
			return err
		}
		pending := 0
		for _, o := range orders {
			if o.status == "PENDING" {
				pending++
			}
		}
		if pending > 0 {
			return fmt.Errorf("%d of %d orders still PENDING", pending, len(orders))
		}
		return nil
	})
	c.settled = time.Since(last)
	if err != nil {
		t.Errorf("orders not terminal within %v of the last fault: %v", terminalWithin, err)
		s.explainPending(ctx, orders)
	}
	want := map[string]string{}
	for _, o := range placed {
		if o.code != codes.OK {
			continue
		}
		got, ok := orders[o.id]
		switch {
		case !ok:
			t.Errorf("LOST: order %d (%s) was accepted but is not in the database", o.n, o.id)
			continue
		case got.requestID != o.requestID:
			t.Errorf("order %d (%s): request id %s, want %s", o.n, o.id, got.requestID, o.requestID)
		}
		want[o.id] = o.wantStatus()
	}
	for id, o := range orders {
		c.byStatus[o.status]++
		lo := byRequest[o.requestID]
		switch {
		case lo == nil:
			t.Errorf("order %s exists but no request of the load made it", id)
		case lo.code != codes.OK:
			// CreateOrder failed but its commit went through (the reply
			// was lost): a client retrying with the same request id gets
			// this order. It must reach a consistent end all the same.
			c.acceptedDespiteError++
			lo.id = id
			want[id] = lo.wantStatus()
			if lo.kind == kindCancel {
				// Never cancelled: it runs its course.
				want[id] = "CONFIRMED"
			}
		}
		if w := want[id]; w != "" && o.status != w {
			t.Errorf("order %s (%v, n=%d): %s (%s), want %s", id, lo.kind, lo.n, o.status, o.reason, w)
		}
	}

	// Nothing is left in flight: no service, retry or tap queue holds a
	// message, ready or unacknowledged, and every outbox is empty, in
	// every poll for longer than the broker's counts may lag. An event
	// that changes no order's status (a refund, a release, a
	// notification.sent) may still be climbing the retry ladder when
	// every order is terminal; only once all is quiet are the end states
	// below final, the dead-letter queues included.
	var quietSince time.Time
	s.checkUntil(ctx, time.Now().Add(quietWithin), "queues and outboxes drained", func() error {
		err := s.quiet(ctx)
		if err != nil {
			quietSince = time.Time{}
			return err
		}
		if quietSince.IsZero() {
			quietSince = time.Now()
		}
		if d := time.Since(quietSince); d <= privateinfra.QuorumStatsLag+time.Second {
			return fmt.Errorf("quiet for %s", d.Round(time.Millisecond))
		}
		return nil
	})

	// Payments, stock, mail and DLQs, once quiet.
	settle := time.Now().Add(10 * time.Second)
	s.checkUntil(ctx, settle, "payments reconcile", func() error { return s.checkPayments(ctx, orders, byRequest) })
	s.checkUntil(ctx, settle, "stock reconciles", func() error { return s.checkStock(ctx, orders) })
	s.checkUntil(ctx, settle, "emails", func() error {
		var err error
		c.emails, c.emailResent, err = s.checkEmails(ctx, orders, sp.mailWindow)
		return err
	})
	s.checkUntil(ctx, settle, "dead-letter queues hold exactly the injected poison", func() error {
		var err error
		c.deadLetters, err = s.checkDLQs(ctx)
		return err
	})

	// No process died on its own, while the platform settled either.
	for name, p := range s.pf.Procs {
		if exited, err := p.Exited(); exited {
			t.Errorf("%s exited while the platform settled: %v", name, err)
		}
	}

	for _, svc := range platformtest.Services {
		var n int
		if err := s.queryRow(ctx, "SELECT count(*) FROM "+pgx.Identifier{svc, "inbox"}.Sanitize(), &n); err != nil {
			t.Errorf("count %s inbox: %v", svc, err)
		}
		c.inbox[svc] = n
	}
	var perQueue, distinct map[string]int
	var tapErrs []string
	c.events, c.copies, perQueue, distinct, tapErrs = s.tap.stats(s.bindings)
	c.routed = map[string]int{}
	for _, svc := range platformtest.Services {
		c.routed[svc] = perQueue[s.pf.Prefix+svc]
		// Each event routed to a service's queue, however often, was
		// processed once: its inbox holds one row for it.
		if want := distinct[s.pf.Prefix+svc]; c.inbox[svc] != want {
			t.Errorf("%s inbox holds %d events, want the %d distinct events routed to its queue", svc, c.inbox[svc], want)
		}
	}
	if sp.router {
		// The tap routed each copy twice instead of the exchange.
		want := 0
		for k := range c.routed {
			c.routed[k] *= 2
			want += c.routed[k]
		}
		if c.routerCopies = s.tap.routedCopies(); c.routerCopies < want {
			t.Errorf("the router published %d copies, want at least %d (two of each event to each queue bound to its key)", c.routerCopies, want)
		}
		if n := s.tap.returnedCopies(); n != 0 {
			t.Errorf("the broker returned %d of the router's copies as unroutable, want none", n)
		}
	}
	c.tapErrors = len(tapErrs)
	return c
}

// wantStatus is the end state an order of kind o.kind reaches.
func (o *order) wantStatus() string {
	switch o.kind {
	case kindOutOfStock, kindDecline:
		return "REJECTED"
	case kindCancel:
		if o.cancelCode == codes.OK {
			return "CANCELLED"
		}
		return "" // the cancel failed: it may have gone either way
	default:
		return "CONFIRMED"
	}
}

// until retries f every 250 ms until it passes or deadline passes, and
// returns its last error.
func until(ctx context.Context, deadline time.Time, f func() error) error {
	for {
		err := f()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return err
		}
		time.Sleep(250 * time.Millisecond)
	}
}

func (s *scenario) checkUntil(ctx context.Context, deadline time.Time, what string, f func() error) {
	if err := until(ctx, deadline, f); err != nil {
		s.t.Errorf("%s: %v", what, err)
	}
}

func (s *scenario) conn(ctx context.Context) (*pgx.Conn, error) {
	return pgx.Connect(ctx, s.pf.DatabaseURL)
}

func (s *scenario) queryRow(ctx context.Context, sql string, dest ...any) error {
	conn, err := s.conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close(ctx)
	return conn.QueryRow(ctx, sql).Scan(dest...)
}

func (s *scenario) orders(ctx context.Context) (map[string]dbOrder, error) {
	out := map[string]dbOrder{}
	err := s.pf.EachRow(ctx, `SELECT id::text, request_id::text, status, status_reason, customer_email,
		(SELECT coalesce(sum((i->>'quantity')::bigint), 0) FROM jsonb_array_elements(items) i)
		FROM "order".orders`, func(r pgx.Rows) error {
		var o dbOrder
		if err := r.Scan(&o.id, &o.requestID, &o.status, &o.reason, &o.email, &o.quantity); err != nil {
			return err
		}
		out[o.id] = o
		return nil
	})
	return out, err
}

// eventCounts counts each order's distinct events by routing key, as the
// order service recorded them.
func (s *scenario) eventCounts(ctx context.Context) (map[string]map[string]int, error) {
	out := map[string]map[string]int{}
	err := s.pf.EachRow(ctx, `SELECT order_id::text, routing_key, count(*) FROM "order".order_events GROUP BY 1, 2`, func(r pgx.Rows) error {
		var id, key string
		var n int
		if err := r.Scan(&id, &key, &n); err != nil {
			return err
		}
		if out[id] == nil {
			out[id] = map[string]int{}
		}
		out[id][key] = n
		return nil
	})
	return out, err
}

// checkPayments: at most one charge per order, a refund for each
// compensated charge, a standing charge exactly for confirmed orders.
func (s *scenario) checkPayments(ctx context.Context, orders map[string]dbOrder, byRequest map[string]*order) error {
	type payment struct{ status, charge, refund string }
	pays := map[string]payment{}
	if err := s.pf.EachRow(ctx, `SELECT order_id::text, status, charge_id, refund_id FROM payment.payments`, func(r pgx.Rows) error {
		var id string
		var p payment
		if err := r.Scan(&id, &p.status, &p.charge, &p.refund); err != nil {
			return err
		}
		pays[id] = p
		return nil
	}); err != nil {
		return err
	}
	events, err := s.eventCounts(ctx)
	if err != nil {
		return err
	}
	var problems []string
	for id, o := range orders {
		p, ev := pays[id], events[id]
		if ev["payment.succeeded"] > 1 {
			problems = append(problems, fmt.Sprintf("order %s charged %d times", id, ev["payment.succeeded"]))
		}
		if ev["payment.refunded"] > 1 {
			problems = append(problems, fmt.Sprintf("order %s refunded %d times", id, ev["payment.refunded"]))
		}
		switch o.status {
		case "CONFIRMED":
			if p.status != "CHARGED" || ev["payment.succeeded"] != 1 || ev["payment.refunded"] != 0 {
				problems = append(problems, fmt.Sprintf("confirmed order %s: payment %q, %d charge and %d refund events, want CHARGED, 1, 0",
					id, p.status, ev["payment.succeeded"], ev["payment.refunded"]))
			}
		default:
			charged := ev["payment.succeeded"] == 1 || p.charge != ""
			switch {
			case p.status == "" || p.status == "CHARGED":
				problems = append(problems, fmt.Sprintf("%s order %s: payment %q, want no standing charge", o.status, id, p.status))
			case charged && (p.status != "REFUNDED" || ev["payment.refunded"] != 1):
				problems = append(problems, fmt.Sprintf("%s order %s was charged: payment %q with %d refund events, want REFUNDED once",
					o.status, id, p.status, ev["payment.refunded"]))
			case byRequest[o.requestID] != nil && byRequest[o.requestID].kind == kindDecline && p.status != "FAILED":
				problems = append(problems, fmt.Sprintf("declined order %s: payment %q, want FAILED", id, p.status))
			}
		}
	}
	return joinFirst(problems)
}

// checkStock: what confirmed orders took is gone, nothing stays reserved,
// and each order's reservation matches its end.
func (s *scenario) checkStock(ctx context.Context, orders map[string]dbOrder) error {
	var consumed int64
	for _, o := range orders {
		if o.status == "CONFIRMED" {
			consumed += o.quantity
		}
	}
	var problems []string
	seen := false
	if err := s.pf.EachRow(ctx, `SELECT product_id, available, reserved FROM inventory.stock`, func(r pgx.Rows) error {
		var sku string
		var available, reserved int64
		if err := r.Scan(&sku, &available, &reserved); err != nil {
			return err
		}
		seen = seen || sku == skuStocked
		want := int64(0)
		if sku == skuStocked {
			want = initialStock - consumed
		}
		if available != want || reserved != 0 {
			problems = append(problems, fmt.Sprintf("%s: available %d reserved %d, want available %d and none reserved (%d units confirmed)",
				sku, available, reserved, want, consumed))
		}
		return nil
	}); err != nil {
		return err
	}
	if !seen {
		problems = append(problems, skuStocked+": no stock row")
	}
	if err := s.pf.EachRow(ctx, `SELECT order_id::text, status FROM inventory.reservations`, func(r pgx.Rows) error {
		var id, st string
		if err := r.Scan(&id, &st); err != nil {
			return err
		}
		o, ok := orders[id]
		switch {
		case !ok:
			problems = append(problems, fmt.Sprintf("reservation %s for an unknown order", id))
		case o.status == "CONFIRMED" && st != "COMMITTED":
			problems = append(problems, fmt.Sprintf("confirmed order %s: reservation %s, want COMMITTED", id, st))
		case o.status != "CONFIRMED" && (st == "COMMITTED" || st == "RESERVED"):
			problems = append(problems, fmt.Sprintf("%s order %s: reservation %s still holds stock", o.status, id, st))
		}
		return nil
	}); err != nil {
		return err
	}
	return joinFirst(problems)
}

// handlerTimeout is the services' ORDERMESH_HANDLER_TIMEOUT (its default):
// the longest an email can have gone out before the commit that failed.
const handlerTimeout = 15 * time.Second

// mailResendsPerFault bounds the emails one fault may have sent again:
// the notification service sends a batch's emails before its commit and
// handles at most ORDERMESH_CONCURRENCY (32) deliveries at once, so a
// fault catches at most one batch between send and commit, and perhaps the
// one that followed it before the fault was seen.
const mailResendsPerFault = 2 * 32

// checkEmails: each customer got received, confirmed (if the order ever
// was; for a cancelled order, possibly not), and rejected or cancelled,
// each once. With allowResends, a repeat is
// allowed when a fault explains it: the copy before it was sent before
// the fault ended and the repeat after it began; no fault explains more
// than mailResendsPerFault repeats. It returns the emails received and
// the repeats.
func (s *scenario) checkEmails(ctx context.Context, orders map[string]dbOrder, allowResends bool) (int, int, error) {
	events, err := s.eventCounts(ctx)
	if err != nil {
		return 0, 0, err
	}
	// The emails the notification service recorded as sent, by order.
	recorded, err := s.pf.RecordedEmails(ctx)
	if err != nil {
		return 0, 0, err
	}
	// Copies of each email, by recipient and subject, in the order the
	// sink received them.
	got := map[string]map[string][]time.Time{}
	msgs := s.pf.Sink.Messages()
	for _, m := range msgs {
		for _, to := range m.To {
			if got[to] == nil {
				got[to] = map[string][]time.Time{}
			}
			got[to][m.Subject] = append(got[to][m.Subject], m.Received)
		}
	}
	s.mu.Lock()
	windows := slices.Clone(s.windows)
	s.mu.Unlock()
	perFault := make([]int, len(windows))
	var problems []string
	var customers []string
	for _, o := range orders {
		customers = append(customers, o.email)
	}
	for _, to := range s.pf.Strangers(customers) {
		problems = append(problems, fmt.Sprintf("%s, the customer of no order, got %d emails", to, len(got[to])))
	}
	resent := 0
	for id, o := range orders {
		want := []string{"Order " + id + " received"}
		confirmed, cancelled := "Order "+id+" confirmed", "Order "+id+" cancelled"
		if events[id]["order.confirmed"] > 0 {
			want = append(want, confirmed)
		}
		switch o.status {
		case "REJECTED":
			want = append(want, "Order "+id+" rejected")
		case "CANCELLED":
			want = append(want, cancelled)
			// A confirmation handled after the order's cancellation was
			// emailed is not sent, nor recorded: either is right, as long
			// as the record and the mail agree.
			if !slices.Contains(recorded[id], confirmed) {
				want = slices.DeleteFunc(want, func(s string) bool { return s == confirmed })
			}
		}
		// Every email recorded as sent is the one wanted, and announced
		// once (the order service keeps each notification.sent).
		rec := slices.Sorted(slices.Values(recorded[id]))
		if sort.Strings(want); !slices.Equal(rec, want) {
			problems = append(problems, fmt.Sprintf("order %s: notifications recorded %q, want %q", id, rec, want))
		}
		if n := events[id]["notification.sent"]; n != len(recorded[id]) {
			problems = append(problems, fmt.Sprintf("order %s: %d notification.sent for %d notifications recorded", id, n, len(recorded[id])))
		}
		// A confirmation whose transaction a fault undid after it went
		// out is not sent again, but not recorded either, once the
		// process that handles it again finds the cancellation recorded:
		// a copy the sink received during a fault is such a one.
		if c, ok := got[o.email][confirmed]; ok && o.status == "CANCELLED" && !slices.Contains(want, confirmed) && allowResends {
			sent := slices.MinFunc(c, time.Time.Compare)
			for _, w := range windows {
				if !sent.After(w.end) && !sent.Before(w.begin.Add(-handlerTimeout)) {
					want = append(want, confirmed)
					sort.Strings(want)
					break
				}
			}
		}
		var have []string
		for subject, copies := range got[o.email] {
			have = append(have, subject)
			if len(copies) == 1 {
				continue
			}
			if !allowResends {
				problems = append(problems, fmt.Sprintf("%s got %q %d times", o.email, subject, len(copies)))
				continue
			}
			slices.SortFunc(copies, func(a, b time.Time) int { return a.Compare(b) })
			for i := 1; i < len(copies); i++ {
				// The fault that explains a repeat: it ended after the copy
				// before it went out, which was no longer than a handler may
				// run (the send to the failed commit) before the fault
				// began, and it began before the repeat. Of several, the
				// latest.
				f := -1
				for j, w := range windows {
					if !copies[i-1].After(w.end) && !copies[i].Before(w.begin) && !copies[i-1].Before(w.begin.Add(-handlerTimeout)) {
						f = j
					}
				}
				if f < 0 {
					problems = append(problems, fmt.Sprintf("%s got %q again at %s (before at %s) with no fault between",
						o.email, subject, copies[i].Format(time.StampMilli), copies[i-1].Format(time.StampMilli)))
					continue
				}
				perFault[f]++
				resent++
			}
		}
		sort.Strings(have)
		sort.Strings(want)
		if !slices.Equal(have, want) {
			problems = append(problems, fmt.Sprintf("%s got %q, want %q", o.email, have, want))
		}
	}
	for i, n := range perFault {
		if n > mailResendsPerFault {
			problems = append(problems, fmt.Sprintf("%d emails sent again across fault %q, want at most %d", n, windows[i].what, mailResendsPerFault))
		}
	}
	return len(msgs), resent, joinFirst(problems)
}

// checkDLQs: each service's dead-letter queue holds exactly the poison
// injected into it, each for the expected reason.
func (s *scenario) checkDLQs(ctx context.Context) (int, error) {
	var problems []string
	total := 0
	for _, svc := range platformtest.Services {
		dlq, err := eventbus.NewDLQ(eventbus.Config{URL: infra.rabbit.URL, Prefix: s.pf.Prefix, Service: svc}, silentLog)
		if err != nil {
			return 0, err
		}
		letters, err := dlq.List(ctx, 0)
		if err != nil {
			return 0, err
		}
		total += len(letters)
		want := s.poison[svc]
		seen := map[string]bool{}
		for _, l := range letters {
			tag, _ := l.Headers[poisonHeader].(string)
			reason, ok := want[tag]
			switch {
			case !ok:
				problems = append(problems, fmt.Sprintf("%s DLQ holds a message that was not injected: %s %s (order %s) reason %s: %s",
					svc, l.Meta.Type, l.Meta.ID, l.Meta.CorrelationID, l.Reason, l.Error))
			case seen[tag]:
				problems = append(problems, fmt.Sprintf("%s DLQ holds poison %s twice", svc, tag))
			case l.Reason != reason:
				problems = append(problems, fmt.Sprintf("%s DLQ: poison %s parked for %q, want %q (%s)", svc, tag, l.Reason, reason, l.Error))
			}
			seen[tag] = true
		}
		for tag := range want {
			if !seen[tag] {
				problems = append(problems, fmt.Sprintf("%s DLQ lacks poison %s", svc, tag))
			}
		}
	}
	return total, joinFirst(problems)
}

// quietWithin bounds the wait for every queue and outbox to drain once
// every order is terminal: the retry ladder's 20 s (19 s in the worker
// kill scenario) and then some.
const quietWithin = 60 * time.Second

// quiet returns nil when no queue of the scenario's but the dead-letter
// queues holds a message, ready or unacknowledged, and every outbox is
// empty; else what is left. A service, retry or tap queue missing from
// the broker's list is not taken for an empty one.
func (s *scenario) quiet(ctx context.Context) error {
	qs, err := infra.rabbit.Queues(ctx)
	if err != nil {
		return err
	}
	var left []string
	for _, name := range append(s.pf.QueueNames(), s.tap.queue) {
		if _, ok := qs[name]; !ok {
			left = append(left, name+": not among the broker's queues")
		}
	}
	for _, name := range sortedKeys(qs) {
		if !strings.HasPrefix(name, s.pf.Prefix) || strings.HasSuffix(name, ".dlq") {
			continue
		}
		if n := qs[name]; n[0]+n[1] > 0 {
			left = append(left, fmt.Sprintf("%s: %d ready, %d unacked", name, n[0], n[1]))
		}
	}
	pending, err := s.pf.OutboxPending(ctx)
	if err != nil {
		return err
	}
	for _, svc := range sortedKeys(pending) {
		if n := pending[svc]; n != 0 {
			left = append(left, fmt.Sprintf("%s outbox: %d events", svc, n))
		}
	}
	if len(left) > 0 {
		return errors.New(strings.Join(left, "; "))
	}
	return nil
}

// explainPending logs what the first stuck orders lack.
func (s *scenario) explainPending(ctx context.Context, orders map[string]dbOrder) {
	events, err := s.eventCounts(ctx)
	if err != nil {
		return
	}
	n := 0
	for id, o := range orders {
		if o.status != "PENDING" {
			continue
		}
		if n++; n > 10 {
			break
		}
		s.t.Logf("stuck order %s: events %v", id, events[id])
	}
}

// joinFirst joins the first ten problems into one error.
func joinFirst(problems []string) error {
	if len(problems) == 0 {
		return nil
	}
	sort.Strings(problems)
	more := ""
	if len(problems) > 10 {
		more = fmt.Sprintf(" (and %d more)", len(problems)-10)
		problems = problems[:10]
	}
	return errors.New(strings.Join(problems, "; ") + more)
}
