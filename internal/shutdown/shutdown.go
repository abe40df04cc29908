// Package shutdown gives a binary's main the context its run function
// drains by: the first SIGINT or SIGTERM ends the context, and a second one
// ends the process at once, for when an operator will not wait for the
// drain.
package shutdown

import (
	"context"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"
)

// OnSignal returns a context that ends on the first SIGINT or SIGTERM. A
// second one, once the first was taken, ends the process as the signal's
// default action does. From the first on, SIGPIPE is ignored, so that the
// drain outlives a reader of its output that has gone. stop ends the context and releases the signals;
// call it before main returns.
func OnSignal() (ctx context.Context, stop context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	caught := make(chan os.Signal, 1)
	signal.Notify(caught, os.Interrupt, syscall.SIGTERM)
	stopped, released := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(released)
		defer signal.Stop(caught)
		select {
		case <-caught:
			// Whoever read the process's output may be gone too (a
			// supervisor stopped with it): a log line written to a pipe
			// nobody reads would then end the process by SIGPIPE mid-drain.
			// Writes to it fail instead.
			signal.Ignore(syscall.SIGPIPE)
			cancel()
		case <-stopped:
			return
		}
		// The signals stay caught while the drain runs, so that a second
		// one is not lost however soon it comes after the first.
		select {
		case sig := <-caught:
			die(sig)
		case <-stopped:
		}
	}()
	var once sync.Once
	return ctx, func() {
		once.Do(func() {
			cancel()
			close(stopped)
			<-released
		})
	}
}

// die ends the process with sig's default action: the signal is released
// and sent again. Should the process outlive it (as PID 1, which a
// signal's default action does not end), it exits with status 128+sig.
func die(sig os.Signal) {
	s, ok := sig.(syscall.Signal)
	if !ok {
		os.Exit(1)
	}
	signal.Reset(s)
	_ = syscall.Kill(os.Getpid(), s)
	time.Sleep(time.Second)
	os.Exit(128 + int(s))
}
