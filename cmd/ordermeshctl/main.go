// Command ordermeshctl talks to ordermesh over gRPC: place, read, list,
// cancel and watch orders, set and read stock, check health, and run a demo
// that drives an order to each of the saga's outcomes.
//
// Exit codes: 0 success; 1 failure; 2 usage error; 3 not found; 4 request
// refused (invalid, conflicting or not allowed in the order's state);
// 5 service unavailable or timed out.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ordermesh/ordermesh/internal/eventbus"
	"github.com/ordermesh/ordermesh/internal/shutdown"
)

const usage = `usage: ordermeshctl [flags] <command> [args]

Orders (OrderService at --addr):
  place  --email E --token T SKU:QTY:PRICE [SKU:QTY:PRICE...]   place an order (PRICE like 19.99EUR)
  get    ORDER_ID                     show an order
  list   [--status S] [--email E] [--limit N]   list orders, newest first
  cancel ORDER_ID [--reason R]        cancel a pending or confirmed order
  watch  ORDER_ID                     stream an order's changes until it is final
  events ORDER_ID                     show the events of an order's saga

Stock (InventoryService at --inventory-addr):
  stock set SKU AVAILABLE [--if-available N]   set a product's available units
                                      (only if it still has N available: read, then add)
  stock get SKU                       show a product's stock

Other:
  health [--service NAME] [--http URL]  check gRPC health of --addr, or an HTTP URL (exit 0 when healthy)
  demo                                stock products and drive orders to every outcome
  dlq list SERVICE [--limit N]        list a service's dead-lettered messages with their reasons:
                                      the first N (default 100, 0 all), then how many are left
                                      (with --json on stderr, stdout keeps one message per line)
  dlq replay SERVICE (ID|--all)       send them back to the service's queue
  dlq discard SERVICE (ID|--all --yes)  drop them for good
                                      (--all --reason R: only those dead-lettered for R)
                                      (dlq talks to RabbitMQ: --amqp-url, --prefix; its flags go
                                      anywhere after "dlq". It sees only ready messages, not those
                                      a consumer or another session holds unacknowledged)

Flags (before the command):
`

// Exit codes.
const (
	exitOK          = 0
	exitFailure     = 1
	exitUsage       = 2
	exitNotFound    = 3
	exitRefused     = 4
	exitUnavailable = 5
	// exitInterrupted is a command stopped by a signal (Ctrl-C) before it
	// was done, as shells report a process SIGINT ended; a watch stopped
	// so ends 0, the way to stop it.
	exitInterrupted = 130
)

func main() {
	ctx, stop := shutdown.OnSignal()
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the global flags.
type options struct {
	addr          string
	inventoryAddr string
	amqpURL       string
	prefix        string
	json          bool
	timeout       time.Duration
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	envOr := func(key, def string) string {
		if v := getenv(key); v != "" {
			return v
		}
		return def
	}
	var opts options
	fs := flag.NewFlagSet("ordermeshctl", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&opts.addr, "addr", envOr("ORDERMESH_ADDR", "127.0.0.1:50051"), "order service gRPC address (env ORDERMESH_ADDR)")
	fs.StringVar(&opts.inventoryAddr, "inventory-addr", envOr("ORDERMESH_INVENTORY_ADDR", "127.0.0.1:50052"), "inventory service gRPC address (env ORDERMESH_INVENTORY_ADDR)")
	opts.amqpURL = envOr("ORDERMESH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
	opts.prefix = getenv("ORDERMESH_TOPOLOGY_PREFIX")
	fs.BoolVar(&opts.json, "json", false, "print JSON (one object per line) instead of text")
	fs.DurationVar(&opts.timeout, "timeout", 10*time.Second, "timeout of each call (watch and demo wait longer)")
	fs.Usage = func() {
		fmt.Fprint(stderr, usage)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK
		}
		return exitUsage
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return exitUsage
	}
	if opts.timeout <= 0 {
		fmt.Fprintf(stderr, "ordermeshctl: --timeout must be positive, got %v\n", opts.timeout)
		return exitUsage
	}
	cli, err := newClient(opts, stdout, stderr)
	if err != nil {
		fmt.Fprintln(stderr, "ordermeshctl:", err)
		return exitFailure
	}
	defer cli.close()

	cmd, rest := fs.Arg(0), fs.Args()[1:]
	commands := map[string]func(context.Context, []string) error{
		"place":  cli.place,
		"get":    cli.get,
		"list":   cli.list,
		"cancel": cli.cancel,
		"watch":  cli.watch,
		"events": cli.events,
		"stock":  cli.stock,
		"health": cli.health,
		"demo":   cli.demo,
		"dlq":    cli.dlq,
	}
	f, ok := commands[cmd]
	if !ok {
		fmt.Fprintf(stderr, "ordermeshctl: unknown command %q\n\n", cmd)
		fs.Usage()
		return exitUsage
	}
	if err := f(ctx, rest); err != nil {
		if ctx.Err() != nil {
			fmt.Fprintln(stderr, "ordermeshctl: interrupted")
			return exitInterrupted
		}
		fmt.Fprintln(stderr, "ordermeshctl:", describe(err))
		return exitCode(err)
	}
	return exitOK
}

// usageError is a mistake in the command line.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// errNotServing is returned by health when the service is not SERVING.
var errNotServing = errors.New("not serving")

func exitCode(err error) int {
	var ue usageError
	switch {
	case errors.As(err, &ue):
		return exitUsage
	case errors.Is(err, errNotServing):
		return exitUnavailable
	case errors.Is(err, eventbus.ErrNotFound):
		return exitNotFound // dlq replay or discard of an id the queue does not hold
	}
	if ae, ok := errors.AsType[*amqp.Error](err); ok {
		switch {
		case ae.Code == amqp.NotFound:
			return exitNotFound // dlq of a service with no dead-letter queue
		case brokerLost(ae):
			return exitUnavailable // dlq lost the broker mid-operation
		}
	}
	if _, ok := errors.AsType[net.Error](err); ok {
		return exitUnavailable // the broker (dlq) could not be reached
	}
	switch status.Code(err) {
	case codes.NotFound:
		return exitNotFound
	case codes.InvalidArgument, codes.AlreadyExists, codes.FailedPrecondition, codes.OutOfRange:
		return exitRefused
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted:
		return exitUnavailable // try again later
	}
	return exitFailure
}

// brokerLost reports whether an AMQP error says the connection is gone or
// the broker cannot serve it now, which trying later may cure: the broker
// closed it (320 CONNECTION_FORCED: shut down or closed by an operator),
// the link broke (amqp091-go reports the read or write error as 501
// FRAME_ERROR, and calls on the dead connection or channel as ErrClosed,
// 504 CHANNEL_ERROR), or the broker failed (506 RESOURCE_ERROR, 541
// INTERNAL_ERROR). Channel-level errors (404 NOT_FOUND, 403
// ACCESS_REFUSED, 406 PRECONDITION_FAILED, ...) and protocol errors (502,
// 503, 505, 540: a client or broker bug) are not.
func brokerLost(ae *amqp.Error) bool {
	switch ae.Code {
	case amqp.ConnectionForced, amqp.FrameError, amqp.ChannelError, amqp.ResourceError, amqp.InternalError:
		return true
	}
	return false
}

// describe renders an error for people: a gRPC status as its code and
// message plus any field violations.
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	msg := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, v := range fieldViolations(st) {
		msg += "\n  " + v
	}
	return msg
}
