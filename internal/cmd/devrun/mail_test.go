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
	// The port still taken says the sink listens, without a connection
	// that the stop below would race with.
	if l, err := net.Listen("tcp", addr); err == nil {
		l.Close()
		t.Fatal("sink gone once the context ended")
	}
	stop()
	l2, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatalf("sink still listening after stop: %v", err)
	}
	l2.Close()
}
