package faults

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// binding is one routing key bound from the events exchange to a queue.
type binding struct{ queue, key string }

// tap is a queue bound to every routing key of the platform's exchange. It
// counts each event id the platform published (copies: a relay that
// republishes after a lost confirm publishes an event twice). As a router
// it also takes over delivery: the services' queues are unbound from the
// exchange and the tap publishes every event twice to each queue that was
// bound to its key, in shuffled batches, so events arrive duplicated and
// out of order.
type tap struct {
	url, exchange, queue string
	// route, when set, maps a routing key to the queues to copy it to.
	route map[string][]string

	mu     sync.Mutex
	copies map[string]int    // by event id
	keys   map[string]string // event id → routing key
	routed int               // copies the router published
	// returned counts the router's copies the broker returned as
	// unroutable (their queue was missing): copies no service got.
	returned int
	errs     []string

	done chan struct{}
}

// startTap declares the tap queue, binds it to "#" and consumes until ctx
// ends, reconnecting across broker faults; call wait after ending ctx.
func startTap(ctx context.Context, url, prefix string, route map[string][]string) (*tap, error) {
	cfg := eventbus.Config{Prefix: prefix}
	tp := &tap{url: url, exchange: cfg.ExchangeName(), queue: prefix + "faults.tap", route: route,
		copies: map[string]int{}, keys: map[string]string{}, done: make(chan struct{})}
	// Declared and bound before it returns, so no event is missed.
	conn, _, err := tp.dial()
	if err != nil {
		return nil, err
	}
	_ = conn.Close()
	go func() {
		defer close(tp.done)
		for ctx.Err() == nil {
			if err := tp.session(ctx); err != nil && ctx.Err() == nil {
				tp.mu.Lock()
				if len(tp.errs) < 20 {
					tp.errs = append(tp.errs, err.Error())
				}
				tp.mu.Unlock()
				select {
				case <-ctx.Done():
				case <-time.After(200 * time.Millisecond):
				}
			}
		}
	}()
	return tp, nil
}

func (tp *tap) dial() (*amqp.Connection, *amqp.Channel, error) {
	conn, err := amqp.DialConfig(tp.url, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second), Heartbeat: 2 * time.Second,
		Properties: amqp.Table{"connection_name": "faults.tap"}})
	if err != nil {
		return nil, nil, fmt.Errorf("dial tap: %w", err)
	}
	ch, err := conn.Channel()
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("tap channel: %w", err)
	}
	if _, err := ch.QueueDeclare(tp.queue, true, false, false, false, nil); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("declare tap: %w", err)
	}
	if err := ch.QueueBind(tp.queue, "#", tp.exchange, false, nil); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("bind tap: %w", err)
	}
	return conn, ch, nil
}

// session consumes on one connection until it fails or ctx ends.
func (tp *tap) session(ctx context.Context) error {
	conn, ch, err := tp.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := ch.Qos(500, 0, false); err != nil {
		return fmt.Errorf("tap qos: %w", err)
	}
	var pub *amqp.Channel
	var returns chan amqp.Return
	if tp.route != nil {
		if pub, err = conn.Channel(); err != nil {
			return fmt.Errorf("router channel: %w", err)
		}
		if err := pub.Confirm(false); err != nil {
			return fmt.Errorf("router confirms: %w", err)
		}
		// The broker sends a copy's return before its confirm, so once a
		// batch is confirmed its returns are here; the buffer holds more
		// than a batch's copies, so the client never blocks on it.
		returns = pub.NotifyReturn(make(chan amqp.Return, 4096))
	}
	deliveries, err := ch.Consume(tp.queue, "", false, false, false, false, nil)
	if err != nil {
		return fmt.Errorf("consume tap: %w", err)
	}
	closed := conn.NotifyClose(make(chan *amqp.Error, 1))
	var batch []amqp.Delivery
	flushAt := time.Now()
	for {
		var timer <-chan time.Time
		if len(batch) > 0 {
			timer = time.After(time.Until(flushAt))
		}
		select {
		case <-ctx.Done():
			return nil
		case e := <-closed:
			return fmt.Errorf("tap connection closed: %v", e)
		case d, ok := <-deliveries:
			if !ok {
				return fmt.Errorf("tap deliveries ended")
			}
			tp.count(d)
			if tp.route == nil {
				if err := d.Ack(false); err != nil {
					return fmt.Errorf("tap ack: %w", err)
				}
				continue
			}
			if len(batch) == 0 {
				// Batches of 20–200 ms: events close in time, such as an
				// order's created and reserved, trade places.
				flushAt = time.Now().Add(time.Duration(20+rand.IntN(180)) * time.Millisecond)
			}
			batch = append(batch, d)
		case <-timer:
			if err := tp.forward(ctx, pub, batch); err != nil {
				return err
			}
			tp.countReturns(returns)
			batch = batch[:0]
		}
	}
}

func (tp *tap) count(d amqp.Delivery) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	// A delivery comes back redelivered after the tap's connection was
	// lost: counted already if the tap had read it, else (dropped from the
	// client's buffer) it is counted now.
	tp.keys[d.MessageId] = d.RoutingKey
	if !d.Redelivered || tp.copies[d.MessageId] == 0 {
		tp.copies[d.MessageId]++
	}
}

// forward publishes two copies of each delivery of batch to each queue
// its key was bound to, all in random order, waits for the confirms and
// acks the batch.
func (tp *tap) forward(ctx context.Context, pub *amqp.Channel, batch []amqp.Delivery) error {
	type copyOf struct {
		d     amqp.Delivery
		queue string
	}
	var out []copyOf
	for _, d := range batch {
		for _, q := range tp.route[d.RoutingKey] {
			out = append(out, copyOf{d, q}, copyOf{d, q})
		}
	}
	rand.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	var confirms []*amqp.DeferredConfirmation
	for _, c := range out {
		h := amqp.Table{}
		for k, v := range c.d.Headers {
			h[k] = v
		}
		h[eventbus.HeaderRoutingKey] = c.d.RoutingKey
		dc, err := pub.PublishWithDeferredConfirmWithContext(ctx, "", c.queue, true, false, amqp.Publishing{
			Headers: h, ContentType: c.d.ContentType, DeliveryMode: amqp.Persistent,
			CorrelationId: c.d.CorrelationId, MessageId: c.d.MessageId, Timestamp: c.d.Timestamp,
			Type: c.d.Type, AppId: c.d.AppId, Body: c.d.Body,
		})
		if err != nil {
			return fmt.Errorf("route %s to %s: %w", c.d.MessageId, c.queue, err)
		}
		confirms = append(confirms, dc)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, dc := range confirms {
		ok, err := dc.WaitContext(wctx)
		if err != nil || !ok {
			return fmt.Errorf("route confirm: ok=%v err=%v", ok, err)
		}
	}
	tp.mu.Lock()
	tp.routed += len(out)
	tp.mu.Unlock()
	return batch[len(batch)-1].Ack(true)
}

// countReturns counts the copies the broker returned so far.
func (tp *tap) countReturns(returns <-chan amqp.Return) {
	for {
		select {
		case r := <-returns:
			tp.mu.Lock()
			tp.returned++
			if len(tp.errs) < 20 {
				tp.errs = append(tp.errs, fmt.Sprintf("router copy of %s returned by the broker: %d %s", r.MessageId, r.ReplyCode, r.ReplyText))
			}
			tp.mu.Unlock()
		default:
			return
		}
	}
}

// returnedCopies returns how many of the router's copies the broker
// returned as unroutable.
func (tp *tap) returnedCopies() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.returned
}

// routedCopies returns how many copies the router published.
func (tp *tap) routedCopies() int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.routed
}

// wait returns once the tap stopped (after ctx ended).
func (tp *tap) wait() { <-tp.done }

// remove deletes the tap's queue; call it after wait.
func (tp *tap) remove() error {
	conn, ch, err := tp.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	if _, err := ch.QueueDelete(tp.queue, false, false, false); err != nil {
		return fmt.Errorf("delete tap queue: %w", err)
	}
	return nil
}

// stats returns the number of distinct events, of copies published, of
// copies and of distinct events routed to each queue of the given
// bindings, and the tap's errors.
func (tp *tap) stats(bindings []binding) (events, copies int, perQueue, distinct map[string]int, errs []string) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	perQueue, distinct = map[string]int{}, map[string]int{}
	for id, key := range tp.keys {
		n := tp.copies[id]
		events++
		copies += n
		for _, b := range bindings {
			if b.key == key {
				perQueue[b.queue] += n
				distinct[b.queue]++
			}
		}
	}
	return events, copies, perQueue, distinct, append([]string(nil), tp.errs...)
}

// listBindings returns the bindings from the platform's exchange to its
// service queues, read with rabbitmqctl.
func listBindings(ctx context.Context, prefix string) ([]binding, error) {
	out, err := infra.rabbit.Ctl(ctx, "list_bindings", "-q", "--no-table-headers", "source_name", "destination_name", "routing_key")
	if err != nil {
		return nil, err
	}
	exchange := eventbus.Config{Prefix: prefix}.ExchangeName()
	var bs []binding
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 || f[0] != exchange || strings.HasSuffix(f[1], "faults.tap") {
			continue
		}
		bs = append(bs, binding{queue: f[1], key: f[2]})
	}
	return bs, nil
}
