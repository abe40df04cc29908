package app

import (
	"context"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/proto"

	"github.com/ordermesh/ordermesh/internal/postgres"
	"github.com/ordermesh/ordermesh/services/order/internal/order"
	"github.com/ordermesh/ordermesh/services/order/internal/store"
)

// Group commit: concurrent CreateOrder calls share transactions. A call
// joins a queue; when no commit is in flight it leads, committing every
// queued call (up to maxBatch) in one transaction, and then hands the lead
// to the first call that queued meanwhile. Under load a commit therefore
// carries the orders that arrived while the previous one was flushing, and
// the database does one WAL flush for all of them; alone, a call commits at
// once. No goroutine runs in the background: leaders are callers.
const (
	maxBatch = 128
	// batchTimeout bounds one shared commit. It does not follow any one
	// caller's context, because the batch belongs to all of them.
	batchTimeout = 15 * time.Second
)

type createCall struct {
	o   order.Order
	req order.Request
	// res and err are set before done is closed.
	res  order.Order
	err  error
	done chan struct{}
	// lead is closed when this call is to commit the next batch.
	lead chan struct{}
}

type committer struct {
	mu      sync.Mutex
	queue   []*createCall
	leading bool
	commit  func(calls []*createCall)
	// batches counts the commits made, for tests and metrics.
	batches atomic.Int64
}

// submit returns once call is committed (or failed). It does not give up
// when the caller's context ends: the call may already be in a batch, and
// the batch is bounded by batchTimeout.
func (c *committer) submit(call *createCall) {
	call.done = make(chan struct{})
	call.lead = make(chan struct{})
	c.mu.Lock()
	c.queue = append(c.queue, call)
	if c.leading {
		c.mu.Unlock()
		select {
		case <-call.done:
			return
		case <-call.lead:
		}
		c.mu.Lock()
	}
	c.leading = true
	n := min(len(c.queue), maxBatch)
	batch := c.queue[:n:n]
	c.queue = c.queue[n:]
	c.mu.Unlock()

	c.commit(batch)
	c.batches.Add(1)

	c.mu.Lock()
	if len(c.queue) > 0 {
		close(c.queue[0].lead)
	} else {
		c.leading = false
	}
	c.mu.Unlock()
}

// commitCreates inserts the orders of calls in one transaction, with an
// order.created event for each new one; a call whose request id exists
// gets the existing order, or ErrRequestConflict when its payload differs.
// A database failure fails every call.
func (a *App) commitCreates(calls []*createCall) {
	defer func() {
		for _, c := range calls {
			close(c.done)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), batchTimeout)
	defer cancel()
	err := postgres.WithTx(ctx, a.pool, func(tx pgx.Tx) error {
		orders := make([]order.Order, len(calls))
		for i, c := range calls {
			orders[i] = c.o
		}
		inserted, err := store.InsertAll(ctx, tx, orders)
		if err != nil {
			return err
		}
		var events []orderEvent
		for i, c := range calls {
			c.res, c.err = c.o, nil
			if inserted[i] {
				events = append(events, orderEvent{c.o.ID, orderCreated(c.o)})
				continue
			}
			prev, err := store.GetByRequestID(ctx, tx, c.req.RequestID)
			if err != nil {
				return err
			}
			c.res, c.err = prev, prev.CheckRepeat(c.req)
		}
		return publish(ctx, tx, events...)
	})
	if err != nil {
		for _, c := range calls {
			c.res, c.err = order.Order{}, err
		}
	}
}

// orderEvent is an event the order service publishes about an order.
type orderEvent struct {
	orderID string
	event   proto.Message
}
