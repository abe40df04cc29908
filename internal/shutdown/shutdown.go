// Package shutdown gives a binary's main the context its run function
// drains by: the first SIGINT or SIGTERM ends the context, and a second one
// ends the process at once, for when an operator will not wait for the
// drain.
package shutdown

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

// OnSignal returns a context that ends on the first SIGINT or SIGTERM.
// By the time it has ended, the signals are no longer caught: a second one
// terminates the process as if OnSignal had never been called. stop ends
// the context and releases the signals too; call it before main returns.
func OnSignal() (ctx context.Context, stop context.CancelFunc) {
	// Unlike signal.NotifyContext followed by context.AfterFunc(ctx, stop),
	// the context ends only after the signals are released, so that a
	// second signal sent as soon as the drain began is not swallowed.
	ctx, cancel := context.WithCancel(context.Background())
	caught := make(chan os.Signal, 1)
	signal.Notify(caught, os.Interrupt, syscall.SIGTERM)
	released := make(chan struct{})
	go func() {
		select {
		case <-caught:
		case <-ctx.Done():
		}
		signal.Stop(caught)
		close(released)
		cancel()
	}()
	return ctx, func() {
		cancel()
		<-released
	}
}
