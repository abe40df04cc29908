// Command loadgen drives CreateOrder load against a running ordermesh
// platform and reports what it measured:
//
//	loadgen --concurrency 50 --duration 30s            # closed loop over gRPC
//	loadgen --rate 500 --count 20000 --protocol rest   # open loop through the gateway
//
// It stocks the products it orders (SetStock) unless --no-stock, shows a
// one-line progress display on stderr, and prints a summary table (or
// JSON with --json) on stdout: orders created and confirmed per second,
// errors by gRPC code, and CreateOrder and create→terminal latency
// percentiles. Terminal states are tracked by polling ListOrders (see
// --poll); --no-track skips that.
//
// Exit codes: 0 ok (even if some requests failed: they are counted), 1
// the run could not be carried out, 2 usage.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
	"github.com/ordermesh/ordermesh/internal/loadgen"
	"github.com/ordermesh/ordermesh/internal/shutdown"
)

func main() {
	ctx, stop := shutdown.OnSignal()
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr, isTerminal(os.Stderr))
	stop()
	switch {
	case errors.Is(err, flag.ErrHelp):
		// -h asked for the help the flag package printed.
	case errors.Is(err, errUsage):
		os.Exit(2)
	case err != nil:
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

type options struct {
	protocol      string
	addr          string
	inventoryAddr string
	httpURL       string
	rate          float64
	concurrency   int
	maxInFlight   int
	duration      time.Duration
	count         int
	products      int
	productPrefix string
	stock         int64
	noStock       bool
	noTrack       bool
	poll          time.Duration
	drain         time.Duration
	timeout       time.Duration
	conns         int
	token         string
	json          bool
}

func parse(args []string, getenv func(string) string, stderr io.Writer) (options, error) {
	envOr := func(name, def string) string {
		if v := getenv(name); v != "" {
			return v
		}
		return def
	}
	var o options
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&o.protocol, "protocol", "grpc", "grpc (OrderService directly) or rest (through the gateway)")
	fs.StringVar(&o.addr, "addr", envOr("ORDERMESH_ADDR", "127.0.0.1:50051"), "order service gRPC address (env ORDERMESH_ADDR)")
	fs.StringVar(&o.inventoryAddr, "inventory-addr", envOr("ORDERMESH_INVENTORY_ADDR", "127.0.0.1:50052"), "inventory service gRPC address, for stocking over gRPC (env ORDERMESH_INVENTORY_ADDR)")
	fs.StringVar(&o.httpURL, "http", envOr("ORDERMESH_HTTP_URL", "http://127.0.0.1:8080"), "gateway base URL (env ORDERMESH_HTTP_URL)")
	fs.Float64Var(&o.rate, "rate", 0, "open loop: orders per second")
	fs.IntVar(&o.concurrency, "concurrency", 0, "closed loop: clients sending one order after another")
	fs.IntVar(&o.maxInFlight, "max-inflight", 1000, "open loop: most requests outstanding at once")
	fs.DurationVar(&o.duration, "duration", 0, "stop sending after this long")
	fs.IntVar(&o.count, "count", 0, "stop after sending this many orders")
	fs.IntVar(&o.products, "products", 16, "how many products to spread the orders over")
	fs.StringVar(&o.productPrefix, "product-prefix", "LOADGEN", "product ids are <prefix>-0, <prefix>-1, …")
	fs.Int64Var(&o.stock, "stock", 1_000_000_000, "available units set on each product before the run")
	fs.BoolVar(&o.noStock, "no-stock", false, "do not set stock before the run")
	fs.BoolVar(&o.noTrack, "no-track", false, "do not follow orders to their terminal state")
	fs.DurationVar(&o.poll, "poll", time.Second, "how often to list pending orders while tracking")
	fs.DurationVar(&o.drain, "drain-timeout", 2*time.Minute, "how long to wait for orders to finish after the load")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Second, "bound on each CreateOrder and each tracking poll")
	fs.IntVar(&o.conns, "conns", 2, "gRPC connections to spread requests over")
	fs.StringVar(&o.token, "token", "tok_visa", "payment token of every order (tok_decline: rejected orders)")
	fs.BoolVar(&o.json, "json", false, "print the summary as one JSON object")
	if err := fs.Parse(args); err != nil {
		// The flag package printed the problem (or the help) already.
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errUsage
	}
	usage := func(msg string) (options, error) {
		fmt.Fprintln(stderr, "loadgen:", msg)
		return o, errUsage
	}
	switch {
	case fs.NArg() > 0:
		return usage("unexpected arguments: " + strings.Join(fs.Args(), " "))
	case o.protocol != "grpc" && o.protocol != "rest":
		return usage("--protocol must be grpc or rest")
	case o.rate < 0 || math.IsNaN(o.rate) || math.IsInf(o.rate, 0):
		return usage("--rate must be a positive number of orders per second")
	case o.concurrency < 0:
		return usage("--concurrency must be positive")
	case o.duration < 0 || o.count < 0:
		return usage("--duration and --count must not be negative")
	case o.maxInFlight <= 0 || o.timeout <= 0 || o.poll <= 0 || o.drain <= 0:
		return usage("--max-inflight, --timeout, --poll and --drain-timeout must be positive")
	case (o.rate > 0) == (o.concurrency > 0):
		return usage("set exactly one of --rate (open loop) and --concurrency (closed loop)")
	case o.duration <= 0 && o.count <= 0:
		return usage("set --duration, --count or both")
	case o.products <= 0 || o.conns <= 0:
		return usage("--products and --conns must be positive")
	}
	return o, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer, tty bool) error {
	o, err := parse(args, getenv, stderr)
	if err != nil {
		return err
	}

	// Clients.
	var conns []*grpc.ClientConn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	dial := func(addr string) (*grpc.ClientConn, error) {
		c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", addr, err)
		}
		conns = append(conns, c)
		return c, nil
	}
	httpClient := &http.Client{Transport: &http.Transport{
		MaxIdleConns: 0, MaxIdleConnsPerHost: max(o.concurrency, min(o.maxInFlight, 512)), IdleConnTimeout: time.Minute,
	}}
	defer httpClient.CloseIdleConnections()
	orderConn, err := dial(o.addr)
	if err != nil {
		return err
	}
	cfg := loadgen.Config{
		Protocol: o.protocol, Rate: o.rate, Concurrency: o.concurrency, MaxInFlight: o.maxInFlight,
		Duration: o.duration, Count: o.count, Products: loadgen.Products(o.productPrefix, o.products),
		PaymentToken: o.token, RequestTimeout: o.timeout, PollInterval: o.poll, DrainTimeout: o.drain,
		Progress: stderr, ProgressTTY: tty,
	}
	if !o.noTrack {
		cfg.Orders = orderv1.NewOrderServiceClient(orderConn)
	}
	if o.protocol == "rest" {
		cfg.Creator = loadgen.NewRESTCreator(strings.TrimRight(o.httpURL, "/"), httpClient)
	} else {
		loadConns := []grpc.ClientConnInterface{orderConn}
		for range o.conns - 1 {
			c, err := dial(o.addr)
			if err != nil {
				return err
			}
			loadConns = append(loadConns, c)
		}
		cfg.Creator = loadgen.NewGRPCCreator(loadConns...)
	}

	// Stock.
	if !o.noStock {
		sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if o.protocol == "rest" {
			err = loadgen.StockREST(sctx, httpClient, strings.TrimRight(o.httpURL, "/"), cfg.Products, o.stock)
		} else {
			var inv *grpc.ClientConn
			if inv, err = dial(o.inventoryAddr); err == nil {
				err = loadgen.StockGRPC(sctx, inventoryv1.NewInventoryServiceClient(inv), cfg.Products, o.stock)
			}
		}
		if err != nil {
			return fmt.Errorf("stock products: %w", err)
		}
	}

	// Load.
	sum, runErr := loadgen.Run(ctx, cfg)
	if o.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(sum); err != nil {
			return fmt.Errorf("write summary: %w", err)
		}
	} else if err := sum.WriteTable(stdout); err != nil {
		return err
	}
	return runErr
}

// isTerminal reports whether f is a character device (a terminal).
func isTerminal(f *os.File) bool {
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}
