package eventbus

import (
	"bytes"
	"errors"
	"net"
	"sync"
	"testing"
	"time"
)

// recordingConn is the socket under a batchConn: it records each write.
type recordingConn struct {
	net.Conn // nil: only Write and Close are used

	mu     sync.Mutex
	writes [][]byte
	fail   error
	closed bool
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func (c *recordingConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.closed = true
	return nil
}

func (c *recordingConn) got() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.writes...)
}

func mustWrite(t *testing.T, c net.Conn, s string) {
	t.Helper()
	n, err := c.Write([]byte(s))
	if err != nil || n != len(s) {
		t.Fatalf("Write(%q) = %d, %v; want %d, nil", s, n, err, len(s))
	}
}

func TestBatchConnWritesAtOnceWhenNotHolding(t *testing.T) {
	rc := &recordingConn{}
	c := &batchConn{Conn: rc}
	mustWrite(t, c, "a")
	mustWrite(t, c, "b")
	if got := rc.got(); len(got) != 2 || string(got[0]) != "a" || string(got[1]) != "b" {
		t.Fatalf("writes = %q, want [a b]", got)
	}
	if err := c.release(); err != nil || len(rc.got()) != 2 {
		t.Fatalf("release without hold: %v, %d writes; want nil and nothing written", err, len(rc.got()))
	}
}

func TestBatchConnSendsHeldWritesTogether(t *testing.T) {
	rc := &recordingConn{}
	c := &batchConn{Conn: rc}
	mustWrite(t, c, "before ")
	c.hold()
	for _, s := range []string{"one ", "two ", "three"} {
		mustWrite(t, c, s)
	}
	if got := rc.got(); len(got) != 1 {
		t.Fatalf("held writes reached the socket before release: %q", got)
	}
	if err := c.release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	mustWrite(t, c, " after")
	got := rc.got()
	want := []string{"before ", "one two three", " after"}
	if len(got) != len(want) {
		t.Fatalf("writes = %q, want %q", got, want)
	}
	for i := range want {
		if string(got[i]) != want[i] {
			t.Fatalf("write %d = %q, want %q", i, got[i], want[i])
		}
	}
}

func TestBatchConnWritesEarlyPastItsBound(t *testing.T) {
	rc := &recordingConn{}
	c := &batchConn{Conn: rc}
	chunk := bytes.Repeat([]byte("x"), batchConnMax/3+1)
	c.hold()
	var want []byte
	for i := range 5 {
		p := append([]byte{byte('0' + i)}, chunk...)
		want = append(want, p...)
		if _, err := c.Write(p); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
	if err := c.release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	var sent []byte
	for _, w := range rc.got() {
		if len(w) > batchConnMax {
			t.Fatalf("one write of %d bytes; a held batch should go out at %d at most", len(w), batchConnMax)
		}
		sent = append(sent, w...)
	}
	if !bytes.Equal(sent, want) {
		t.Fatalf("the socket got %d bytes out of order or incomplete; want %d in the order written", len(sent), len(want))
	}
	if n := len(rc.got()); n < 3 || n > 5 {
		t.Fatalf("%d writes for 5 held writes of a third of the bound each; want them grouped into 3 to 5", n)
	}
}

func TestBatchConnClosesWhenReleaseFails(t *testing.T) {
	boom := errors.New("connection reset")
	rc := &recordingConn{}
	c := &batchConn{Conn: rc}
	c.hold()
	mustWrite(t, c, "held")
	rc.fail = boom
	if err := c.release(); !errors.Is(err, boom) {
		t.Fatalf("release = %v, want %v", err, boom)
	}
	if !rc.closed {
		t.Fatal("the socket is still open after a held batch failed to go out")
	}
}

func TestBatchConnHoldsOtherGoroutinesWritesInOrder(t *testing.T) {
	rc := &recordingConn{}
	c := &batchConn{Conn: rc}
	c.hold()
	mustWrite(t, c, "publish ")
	done := make(chan struct{})
	go func() { // amqp091-go's heartbeater, say
		defer close(done)
		if _, err := c.Write([]byte("heartbeat ")); err != nil {
			t.Errorf("heartbeat write: %v", err)
		}
	}()
	<-done
	mustWrite(t, c, "publish")
	if n := len(rc.got()); n != 0 {
		t.Fatalf("%d writes reached the socket while holding", n)
	}
	if err := c.release(); err != nil {
		t.Fatalf("release: %v", err)
	}
	if got := rc.got(); len(got) != 1 || string(got[0]) != "publish heartbeat publish" {
		t.Fatalf("writes = %q, want one in the order made", got)
	}
}

func TestBatchConnCloseUnblocksAStalledRelease(t *testing.T) {
	client, server := net.Pipe() // Nobody reads server: a write stalls.
	defer server.Close()
	c := &batchConn{Conn: client}
	c.hold()
	mustWrite(t, c, "held")
	released := make(chan error, 1)
	go func() { released <- c.release() }()
	select {
	case err := <-released:
		t.Fatalf("release returned %v before anyone read", err)
	case <-time.After(50 * time.Millisecond):
	}
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-released:
		if err == nil {
			t.Fatal("release of a batch that never left returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("release still blocked after Close")
	}
}
