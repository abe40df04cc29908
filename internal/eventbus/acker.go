package eventbus

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// ackChannel is what an acker settles deliveries through: the consume
// channel.
type ackChannel interface {
	Ack(tag uint64, multiple bool) error
	Nack(tag uint64, multiple, requeue bool) error
}

// errAckerClosed is returned for settlements after the acker closed: its
// channel is being closed, and the broker requeues what was not settled.
var errAckerClosed = errors.New("consume channel closing")

// acker settles the deliveries of one consume channel, sending acks in
// groups: one basic.ack with multiple set settles every delivery up to its
// tag and costs the broker little more than the ack of one delivery.
//
// Handlers finish out of order, so a group covers the run of handled
// deliveries that starts at the oldest delivery not yet settled. It is sent
// when maxBatch acks wait in it, when no delivery taken from the stream is
// still in its handler, or when the oldest waiting ack has waited delay.
// An ack held back behind a delivery that is still in its handler is sent
// on its own once it has waited delay, so a slow handler never holds the
// others' acks for longer. Nacks are sent at once.
//
// Delivery tags are the channel's: they start at 1 and grow by one with
// each delivery, and every delivery must be settled through the acker (or
// the channel closed). It is safe for concurrent use.
type acker struct {
	ch       ackChannel
	delay    time.Duration
	maxBatch int
	onError  func(error) // reports a failed send of waiting acks

	taken atomic.Uint64 // highest tag taken from the delivery stream

	mu sync.Mutex
	// Every tag up to settled is settled on the wire.
	settled uint64
	// Tags above settled that were handled: waiting acks (the time the
	// handler finished) or, with a zero time, settled on the wire alone.
	done map[uint64]time.Time
	// The run: settled+1 to runEnd are all in done; runAcks of them wait,
	// the highest being runLast.
	runEnd, runLast uint64
	runAcks         int
	waiting         int // waiting acks in done
	timer           *time.Timer
	armed, closed   bool
}

func newAcker(ch ackChannel, delay time.Duration, maxBatch int, onError func(error)) *acker {
	a := &acker{ch: ch, delay: delay, maxBatch: max(maxBatch, 1), onError: onError, done: map[uint64]time.Time{}}
	a.timer = time.AfterFunc(time.Hour, a.expire)
	a.timer.Stop()
	return a
}

// take records that the delivery tagged tag was taken from the stream.
func (a *acker) take(tag uint64) {
	for {
		cur := a.taken.Load()
		if tag <= cur || a.taken.CompareAndSwap(cur, tag) {
			return
		}
	}
}

// ack acks the delivery tagged tag, now or with others (see acker).
func (a *acker) ack(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(tag); err != nil {
		return err
	}
	if a.delay <= 0 {
		return a.settleAlone(tag, a.ch.Ack(tag, false))
	}
	a.done[tag] = time.Now()
	a.waiting++
	a.extendRun()
	return a.sendDue()
}

// sendDue sends the waiting acks that should not wait longer: all of them
// when no delivery is in a handler (nothing else will join them soon), the
// run when it is full; otherwise it makes sure the timer will send them.
func (a *acker) sendDue() error {
	switch {
	case a.waiting == 0:
		return nil
	case a.taken.Load()-a.settled == uint64(len(a.done)):
		return a.flush(time.Time{})
	case a.runAcks >= a.maxBatch:
		if err := a.sendRun(); err != nil {
			return err
		}
	}
	if a.waiting > 0 && !a.armed {
		a.armed = true
		a.timer.Reset(a.delay)
	}
	return nil
}

// ackNow acks the delivery tagged tag at once, on its own.
func (a *acker) ackNow(tag uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(tag); err != nil {
		return err
	}
	return a.settleAlone(tag, a.ch.Ack(tag, false))
}

// nack rejects the delivery tagged tag at once, requeueing it if requeue.
func (a *acker) nack(tag uint64, requeue bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := a.check(tag); err != nil {
		return err
	}
	return a.settleAlone(tag, a.ch.Nack(tag, false, requeue))
}

// sendWaiting sends every waiting ack now, unless the acker is closed.
func (a *acker) sendWaiting() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	return a.flush(time.Time{})
}

// close refuses later settlements, after sending every waiting ack if
// flush (a graceful stop, once the handlers are done); without flush (a
// lost channel) the broker requeues them.
func (a *acker) close(flush bool) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil
	}
	var err error
	if flush {
		err = a.flush(time.Time{})
	}
	a.closed = true
	a.timer.Stop()
	return err
}

func (a *acker) check(tag uint64) error {
	if a.closed {
		return errAckerClosed
	}
	if _, ok := a.done[tag]; ok || tag <= a.settled {
		return fmt.Errorf("delivery tag %d settled twice", tag)
	}
	return nil
}

// settleAlone records that tag was settled on the wire by itself (err is
// that send's outcome).
func (a *acker) settleAlone(tag uint64, err error) error {
	if err != nil {
		return err
	}
	a.done[tag] = time.Time{}
	a.extendRun()
	if a.runAcks == 0 {
		a.dropRun()
	}
	// Settling the head of the run may have completed it.
	return a.sendDue()
}

// extendRun extends the run over the tags in done that follow it.
func (a *acker) extendRun() {
	a.runEnd = max(a.runEnd, a.settled)
	for {
		at, ok := a.done[a.runEnd+1]
		if !ok {
			return
		}
		a.runEnd++
		if !at.IsZero() {
			a.runAcks++
			a.runLast = a.runEnd
		}
	}
}

// sendRun acks the run's waiting acks in one group.
func (a *acker) sendRun() error {
	if a.runAcks > 0 {
		if err := a.ch.Ack(a.runLast, true); err != nil {
			return err
		}
	}
	a.waiting -= a.runAcks
	a.dropRun()
	return nil
}

// dropRun forgets the run, which is settled on the wire.
func (a *acker) dropRun() {
	for t := a.settled + 1; t <= a.runEnd; t++ {
		delete(a.done, t)
	}
	a.settled, a.runAcks = a.runEnd, 0
}

// flush sends the run and, on its own, every waiting ack handled before
// cutoff (all of them for a zero cutoff).
func (a *acker) flush(cutoff time.Time) error {
	if err := a.sendRun(); err != nil {
		return err
	}
	for t, at := range a.done {
		if at.IsZero() || (!cutoff.IsZero() && at.After(cutoff)) {
			continue
		}
		if err := a.ch.Ack(t, false); err != nil {
			return err
		}
		a.done[t] = time.Time{}
		a.waiting--
	}
	return nil
}

// expire sends the acks that have waited delay, and arms the timer for
// the next.
func (a *acker) expire() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.armed = false
	if a.closed || a.waiting == 0 {
		return
	}
	now := time.Now()
	if err := a.flush(now.Add(-a.delay)); err != nil {
		// The channel is failing: the session ends, and the broker
		// requeues what was not settled.
		if a.onError != nil {
			a.onError(err)
		}
		return
	}
	if a.waiting == 0 {
		return
	}
	oldest := now
	for _, at := range a.done {
		if !at.IsZero() && at.Before(oldest) {
			oldest = at
		}
	}
	a.armed = true
	a.timer.Reset(max(oldest.Add(a.delay).Sub(now), time.Millisecond))
}
