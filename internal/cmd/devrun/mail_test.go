package main

import (
	"context"
	"io"
	"net"
	"testing"
	"time"
)

// TestMailSinkOutlivesTheSignal: the sink started for the run keeps
// accepting mail after the run's context ends (Ctrl-C), while the
// services drain, and stops only when its stop function is called.
func TestMailSinkOutlivesTheSignal(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	_, stop, err := startMail(ctx, addr, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	time.Sleep(100 * time.Millisecond) // what a shutdown on ctx would take
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		t.Fatalf("sink gone once the context ended: %v", err)
	}
	c.Close()
	stop()
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("sink still accepting after stop")
	}
}
