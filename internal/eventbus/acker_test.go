package eventbus

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

// brokerChannel models how RabbitMQ settles a channel's deliveries: an ack
// or nack must name an outstanding delivery (else the broker closes the
// channel: "unknown delivery tag"), and multiple settles every outstanding
// delivery up to it.
type brokerChannel struct {
	mu          sync.Mutex
	outstanding map[uint64]bool
	settledAs   map[uint64]string // "ack", "nack", "requeue"
	acks, nacks int               // frames sent
	multiples   int               // ack frames with multiple set
	err         error             // first protocol error
}

func newBrokerChannel(n int) *brokerChannel {
	b := &brokerChannel{outstanding: map[uint64]bool{}, settledAs: map[uint64]string{}}
	for t := 1; t <= n; t++ {
		b.outstanding[uint64(t)] = true
	}
	return b
}

func (b *brokerChannel) settle(tag uint64, multiple bool, as string) error {
	if !b.outstanding[tag] {
		err := fmt.Errorf("unknown delivery tag %d (%s, multiple %v)", tag, as, multiple)
		if b.err == nil {
			b.err = err
		}
		return err
	}
	for t := range b.outstanding {
		if t == tag || (multiple && t < tag) {
			delete(b.outstanding, t)
			b.settledAs[t] = as
		}
	}
	return nil
}

func (b *brokerChannel) Ack(tag uint64, multiple bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.acks++
	if multiple {
		b.multiples++
	}
	return b.settle(tag, multiple, "ack")
}

func (b *brokerChannel) Nack(tag uint64, multiple, requeue bool) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.nacks++
	as := "nack"
	if requeue {
		as = "requeue"
	}
	return b.settle(tag, multiple, as)
}

func (b *brokerChannel) isOutstanding(tag uint64) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.outstanding[tag]
}

func (b *brokerChannel) counts() (acks, multiples int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.acks, b.multiples
}

// takenAcker returns an acker over a model broker that delivered n
// messages, every one taken from the stream. The test fails if the acker
// sends what the broker would reject.
func takenAcker(t *testing.T, n int, delay time.Duration, maxBatch int) (*acker, *brokerChannel) {
	b := newBrokerChannel(n)
	a := newAcker(b, delay, maxBatch, func(err error) { t.Errorf("send acks: %v", err) })
	for tag := uint64(1); tag <= uint64(n); tag++ {
		a.take(tag)
	}
	t.Cleanup(func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.err != nil {
			t.Errorf("broker would close the channel: %v", b.err)
		}
	})
	return a, b
}

// Concurrent handlers finishing in random order, some deliveries requeued:
// every delivery is settled exactly as its handler said, with no tag the
// broker would reject, in fewer ack frames than deliveries.
func TestAckerSettlesEveryDeliveryAsHandled(t *testing.T) {
	const n, workers = 5000, 32
	b := newBrokerChannel(n)
	a := newAcker(b, 2*time.Millisecond, 50, func(err error) { t.Errorf("send acks: %v", err) })
	tags := make(chan uint64)
	want := map[uint64]string{}
	for tag := uint64(1); tag <= n; tag++ {
		want[tag] = "ack"
		if rand.IntN(50) == 0 {
			want[tag] = "requeue"
		}
	}
	var wg sync.WaitGroup
	for range workers {
		wg.Go(func() {
			for tag := range tags {
				a.take(tag)
				if rand.IntN(4) == 0 {
					time.Sleep(time.Duration(rand.IntN(300)) * time.Microsecond)
				}
				var err error
				if want[tag] == "requeue" {
					err = a.nack(tag, true)
				} else {
					err = a.ack(tag)
				}
				if err != nil {
					t.Errorf("settle %d: %v", tag, err)
				}
			}
		})
	}
	for tag := uint64(1); tag <= n; tag++ {
		tags <- tag
	}
	close(tags)
	wg.Wait()
	if err := a.close(true); err != nil {
		t.Fatalf("close: %v", err)
	}
	if b.err != nil {
		t.Fatalf("broker would close the channel: %v", b.err)
	}
	if len(b.outstanding) != 0 {
		t.Fatalf("%d deliveries never settled", len(b.outstanding))
	}
	for tag, as := range want {
		if b.settledAs[tag] != as {
			t.Fatalf("delivery %d settled as %q, handled as %q", tag, b.settledAs[tag], as)
		}
	}
	if a.waiting != 0 || len(a.done) != 0 || a.settled != n {
		t.Errorf("after close: %d acks waiting, %d tags recorded, settled up to %d; want 0, 0, %d", a.waiting, len(a.done), a.settled, n)
	}
	t.Logf("%d deliveries: %d ack frames (%d with multiple), %d nacks", n, b.acks, b.multiples, b.nacks)
	if b.acks >= n/2 {
		t.Errorf("%d ack frames for %d deliveries: acks were not grouped", b.acks, n)
	}
}

// With nothing else in a handler, an ack goes out at once.
func TestAckerIdleAcksAtOnce(t *testing.T) {
	b := newBrokerChannel(2)
	a := newAcker(b, time.Hour, 50, nil)
	for tag := uint64(1); tag <= 2; tag++ {
		a.take(tag)
		if err := a.ack(tag); err != nil {
			t.Fatal(err)
		}
		if b.isOutstanding(tag) {
			t.Fatalf("delivery %d handled with nothing else in flight but not acked", tag)
		}
	}
	// Settled on the wire and forgotten: settling again is refused.
	if err := a.ack(1); err == nil {
		t.Error("second ack of a delivery acked on the wire accepted")
	}
	if b.err != nil {
		t.Fatal(b.err)
	}
}

// A full group goes out at once, while other deliveries are still in
// their handlers.
func TestAckerSendsFullGroupAtOnce(t *testing.T) {
	const batch = 10
	a, b := takenAcker(t, 100, time.Hour, batch)
	for tag := uint64(1); tag < batch; tag++ {
		if err := a.ack(tag); err != nil {
			t.Fatal(err)
		}
	}
	if acks, _ := b.counts(); acks != 0 {
		t.Fatalf("%d ack frames before the group was full", acks)
	}
	if err := a.ack(batch); err != nil {
		t.Fatal(err)
	}
	acks, multiples := b.counts()
	if acks != 1 || multiples != 1 {
		t.Fatalf("ack frames %d (multiple %d), want one group", acks, multiples)
	}
	for tag := uint64(1); tag <= 100; tag++ {
		if got := b.isOutstanding(tag); got != (tag > batch) {
			t.Fatalf("delivery %d outstanding %v", tag, got)
		}
	}
}

// A delivery slow in its handler holds back the acks after it for about
// the delay only; it stays unsettled until its handler finishes.
func TestAckerSlowHandlerDoesNotHoldBackOthers(t *testing.T) {
	const delay = 20 * time.Millisecond
	a, b := takenAcker(t, 10, delay, 50)
	for tag := uint64(2); tag <= 10; tag++ {
		if err := a.ack(tag); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for tag := uint64(2); tag <= 10; tag++ {
		for b.isOutstanding(tag) {
			if time.Now().After(deadline) {
				t.Fatalf("delivery %d, behind a slow delivery, never acked", tag)
			}
			time.Sleep(delay / 4)
		}
	}
	if !b.isOutstanding(1) {
		t.Fatal("the slow delivery was acked before its handler finished")
	}
	if err := a.ack(1); err != nil {
		t.Fatal(err)
	}
	if b.isOutstanding(1) {
		t.Fatal("the slow delivery's ack waits with nothing else in flight")
	}
}

func TestAckerRefusesDoubleAndLateSettlements(t *testing.T) {
	a, b := takenAcker(t, 3, time.Hour, 50)
	if err := a.ack(2); err != nil {
		t.Fatal(err)
	}
	if err := a.ack(2); err == nil {
		t.Error("second ack of a waiting delivery accepted")
	}
	if err := a.ack(1); err != nil {
		t.Fatal(err)
	}
	if err := a.nack(1, true); err == nil {
		t.Error("nack of a delivery acked before accepted")
	}
	if err := a.close(true); err != nil {
		t.Fatal(err)
	}
	if b.isOutstanding(1) || b.isOutstanding(2) {
		t.Error("close did not send the waiting acks")
	}
	if err := a.nack(1, true); err == nil {
		t.Error("nack of a settled delivery accepted")
	}
	if err := a.ack(3); !errors.Is(err, errAckerClosed) {
		t.Errorf("ack after close: %v, want errAckerClosed", err)
	}
}

// Closed without flushing (a lost channel), the acker sends nothing more.
func TestAckerCloseWithoutFlush(t *testing.T) {
	a, b := takenAcker(t, 3, time.Hour, 50)
	if err := a.ack(2); err != nil {
		t.Fatal(err)
	}
	if err := a.close(false); err != nil {
		t.Fatal(err)
	}
	if acks, _ := b.counts(); acks != 0 {
		t.Fatalf("%d ack frames after closing without flush", acks)
	}
}

// A negative delay sends every ack on its own at once.
func TestAckerNoDelay(t *testing.T) {
	a, b := takenAcker(t, 5, -1, 50)
	for _, tag := range []uint64{3, 1, 5, 2, 4} {
		if err := a.ack(tag); err != nil {
			t.Fatal(err)
		}
		if b.isOutstanding(tag) {
			t.Fatalf("delivery %d not acked at once", tag)
		}
	}
	if acks, multiples := b.counts(); acks != 5 || multiples != 0 {
		t.Fatalf("%d ack frames, %d with multiple; want 5 alone", acks, multiples)
	}
}

// A delivery in its handler holds back the acks after it: they are not
// sent while it runs (the delay here never expires), and go out, in one
// group, as soon as it is settled, also when it is settled alone (nacked,
// or acked at once after moving its message).
func TestAckerHeadSettledSendsTheRun(t *testing.T) {
	settleHead := map[string]func(a *acker) error{
		"ack":    func(a *acker) error { return a.ack(1) },
		"ackNow": func(a *acker) error { return a.ackNow(1) },
		"nack":   func(a *acker) error { return a.nack(1, true) },
	}
	for name, settle := range settleHead {
		t.Run(name, func(t *testing.T) {
			a, b := takenAcker(t, 4, time.Hour, 50)
			for tag := uint64(2); tag <= 4; tag++ {
				if err := a.ack(tag); err != nil {
					t.Fatal(err)
				}
			}
			if acks, _ := b.counts(); acks != 0 {
				t.Fatalf("%d ack frames while delivery 1 is in its handler", acks)
			}
			if err := settle(a); err != nil {
				t.Fatal(err)
			}
			for tag := uint64(1); tag <= 4; tag++ {
				if b.isOutstanding(tag) {
					t.Errorf("delivery %d outstanding after the head was settled with nothing in flight", tag)
				}
			}
			if a.waiting != 0 || len(a.done) != 0 {
				t.Errorf("%d acks waiting, %d tags recorded; want none", a.waiting, len(a.done))
			}
		})
	}
}

// Acks held behind a slow delivery at different times each go out about
// the delay after they were made: the first fire of the timer sends only
// the earlier one, and the timer is armed again for the later one. It runs
// on synctest's fake clock, so the checks between the fires do not depend
// on how loaded the machine is.
func TestAckerTimerRearmsForLaterAcks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const delay = 20 * time.Millisecond
		a, b := takenAcker(t, 3, delay, 50)
		start := time.Now()
		// until waits until d after start, and until the acker's timer has
		// done what fell due by then.
		until := func(d time.Duration) {
			time.Sleep(time.Until(start.Add(d)))
			synctest.Wait()
		}
		// state reports which of the held acks are still outstanding.
		state := func() string {
			return fmt.Sprintf("2 outstanding %v, 3 outstanding %v", b.isOutstanding(2), b.isOutstanding(3))
		}
		if err := a.ack(2); err != nil {
			t.Fatal(err)
		}
		until(delay / 2)
		if err := a.ack(3); err != nil {
			t.Fatal(err)
		}

		until(delay - time.Millisecond)
		if !b.isOutstanding(2) || !b.isOutstanding(3) {
			t.Fatalf("just before the first ack's delay: %s; want both held", state())
		}
		until(delay + time.Millisecond)
		if b.isOutstanding(2) || !b.isOutstanding(3) {
			t.Fatalf("after the timer's first fire: %s; want 2 acked and 3, made %s later, still held", state(), delay/2)
		}
		until(delay/2 + delay - time.Millisecond)
		if !b.isOutstanding(3) {
			t.Fatalf("just before the second ack's delay: %s; want 3 held", state())
		}
		until(delay/2 + delay + time.Millisecond)
		if b.isOutstanding(3) {
			t.Fatalf("after the second ack's delay: %s; want 3 acked (the timer armed again for it)", state())
		}
		if !b.isOutstanding(1) {
			t.Fatal("the delivery still in its handler was acked")
		}
		if acks, multiples := b.counts(); acks != 2 || multiples != 0 {
			t.Errorf("%d ack frames, %d with multiple; want 2 alone (the head is in its handler)", acks, multiples)
		}
	})
}

// failingChannel is a consume channel that has gone away: every settlement
// fails.
type failingChannel struct{}

func (failingChannel) Ack(uint64, bool) error        { return errors.New("channel closed") }
func (failingChannel) Nack(uint64, bool, bool) error { return errors.New("channel closed") }

// On a channel that fails, settlements return its error, and the timer
// reports a failed send once and stops: the session is ending, and the
// broker requeues what was not settled.
func TestAckerFailingChannel(t *testing.T) {
	const delay = 5 * time.Millisecond
	var mu sync.Mutex
	var reported int
	a := newAcker(failingChannel{}, delay, 50, func(error) { mu.Lock(); reported++; mu.Unlock() })
	for tag := uint64(1); tag <= 3; tag++ {
		a.take(tag)
	}
	if err := a.nack(1, true); err == nil {
		t.Error("nack on a failing channel returned no error")
	}
	if err := a.ack(3); err != nil {
		t.Fatalf("ack held behind delivery 2: %v, want it held without sending", err)
	}
	reports := func() int {
		mu.Lock()
		defer mu.Unlock()
		return reported
	}
	for deadline := time.Now().Add(30 * time.Second); reports() == 0; time.Sleep(delay) {
		if time.Now().After(deadline) {
			t.Fatal("the failed send of the held ack was never reported")
		}
	}
	// The report is made by the timer under the acker's lock: once it is
	// seen, the timer has decided whether to fire again.
	a.mu.Lock()
	armed := a.armed
	a.mu.Unlock()
	if armed {
		t.Error("the timer was armed again after a failed send, want it stopped")
	}
	// And it does not fire again over many more delays.
	time.Sleep(20 * delay)
	if n := reports(); n != 1 {
		t.Errorf("failed sends reported %d times, want once (the timer stops)", n)
	}
	if err := a.ackNow(2); err == nil {
		t.Error("ackNow on a failing channel returned no error")
	}
}
