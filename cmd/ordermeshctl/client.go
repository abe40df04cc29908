package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	inventoryv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/inventory/v1"
	moneyv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/money/v1"
	orderv1 "github.com/ordermesh/ordermesh/gen/go/ordermesh/order/v1"
)

type client struct {
	opts      options
	out       io.Writer
	errOut    io.Writer // where a subcommand's -h and flag errors go
	orderConn *grpc.ClientConn
	invConn   *grpc.ClientConn
	orders    orderv1.OrderServiceClient
	inventory inventoryv1.InventoryServiceClient
}

// flags returns a subcommand's flag set, writing its help and errors to
// the client's error output.
func (c *client) flags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(c.errOut)
	return fs
}

// parseAnywhere parses args with fs, flags before, between or after the
// other arguments ("cancel --reason R ID" as "cancel ID --reason R"), and
// returns the other arguments in order. After "--" every argument is one
// of the others, those that start with '-' too (a SKU may).
func parseAnywhere(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for rest := args; ; rest = fs.Args()[1:] {
		if err := fs.Parse(rest); err != nil {
			return nil, err
		}
		if fs.NArg() == 0 {
			return positional, nil
		}
		if taken := len(rest) - fs.NArg(); taken > 0 && rest[taken-1] == "--" {
			return append(positional, fs.Args()...), nil
		}
		positional = append(positional, fs.Arg(0))
	}
}

func newClient(opts options, out, errOut io.Writer) (*client, error) {
	creds := grpc.WithTransportCredentials(insecure.NewCredentials())
	oc, err := grpc.NewClient(opts.addr, creds)
	if err != nil {
		return nil, fmt.Errorf("order service address %q: %w", opts.addr, err)
	}
	ic, err := grpc.NewClient(opts.inventoryAddr, creds)
	if err != nil {
		_ = oc.Close()
		return nil, fmt.Errorf("inventory service address %q: %w", opts.inventoryAddr, err)
	}
	return &client{
		opts: opts, out: out, errOut: errOut,
		orderConn: oc, invConn: ic,
		orders:    orderv1.NewOrderServiceClient(oc),
		inventory: inventoryv1.NewInventoryServiceClient(ic),
	}, nil
}

func (c *client) close() {
	_ = c.orderConn.Close()
	_ = c.invConn.Close()
}

func (c *client) call(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opts.timeout)
}

var jsonOut = protojson.MarshalOptions{UseProtoNames: true}

// emit prints a message as one JSON line (--json) or as text.
func (c *client) emit(m proto.Message, text func() string) {
	if c.opts.json {
		b, err := jsonOut.Marshal(m)
		if err != nil {
			fmt.Fprintf(c.out, "{\"error\": %q}\n", err.Error())
			return
		}
		fmt.Fprintln(c.out, string(b))
		return
	}
	fmt.Fprintln(c.out, text())
}

func (c *client) place(ctx context.Context, args []string) error {
	fs := c.flags("place")
	email := fs.String("email", "", "customer email (required)")
	token := fs.String("token", "tok_visa", "payment token (tok_decline declines, tok_unavailable fails twice first)")
	requestID := fs.String("request-id", "", "idempotency key (a UUID; default: a new one)")
	args, err := parseAnywhere(fs, args)
	if err != nil {
		return usagef("place: %v", err)
	}
	if *email == "" || len(args) == 0 {
		return usagef("place: need --email and at least one SKU:QTY:PRICE item")
	}
	items := make([]*orderv1.LineItem, 0, len(args))
	for _, arg := range args {
		it, err := parseItem(arg)
		if err != nil {
			return usagef("place: %v", err)
		}
		items = append(items, it)
	}
	if *requestID == "" {
		*requestID = uuid.NewString()
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.orders.CreateOrder(ctx, &orderv1.CreateOrderRequest{
		RequestId: *requestID, CustomerEmail: *email, Items: items, PaymentToken: *token,
	})
	if err != nil {
		return err
	}
	c.emit(resp.GetOrder(), func() string { return formatOrder(resp.GetOrder()) })
	return nil
}

func (c *client) get(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usagef("get: need exactly one ORDER_ID")
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.orders.GetOrder(ctx, &orderv1.GetOrderRequest{OrderId: args[0]})
	if err != nil {
		return err
	}
	c.emit(resp.GetOrder(), func() string { return formatOrder(resp.GetOrder()) })
	return nil
}

func (c *client) list(ctx context.Context, args []string) error {
	fs := c.flags("list")
	st := fs.String("status", "", "only orders with this status: pending, confirmed, rejected, cancelled")
	email := fs.String("email", "", "only orders of this customer")
	limit := fs.Int("limit", 20, "most orders to show (0 = all)")
	rest, err := parseAnywhere(fs, args)
	switch {
	case err != nil:
		return usagef("list: %v", err)
	case len(rest) > 0:
		return usagef("list: takes no arguments, got %q (--status and --email filter)", rest)
	case *limit < 0:
		return usagef("list: --limit must be 0 (all) or more, got %d", *limit)
	}
	req := &orderv1.ListOrdersRequest{CustomerEmail: *email}
	if *st != "" {
		v, ok := orderv1.OrderStatus_value["ORDER_STATUS_"+strings.ToUpper(*st)]
		if !ok {
			return usagef("list: unknown status %q", *st)
		}
		req.Status = orderv1.OrderStatus(v)
	}
	shown := 0
	for {
		req.PageSize = 100
		if *limit > 0 {
			req.PageSize = int32(min(100, *limit-shown))
		}
		callCtx, cancel := c.call(ctx)
		resp, err := c.orders.ListOrders(callCtx, req)
		cancel()
		if err != nil {
			return err
		}
		for _, o := range resp.GetOrders() {
			c.emit(o, func() string { return formatOrderLine(o) })
			shown++
		}
		if resp.GetNextPageToken() == "" || (*limit > 0 && shown >= *limit) {
			return nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

func (c *client) cancel(ctx context.Context, args []string) error {
	fs := c.flags("cancel")
	reason := fs.String("reason", "", "why the order is cancelled")
	ids, err := parseAnywhere(fs, args)
	if err != nil {
		return usagef("cancel: %v", err)
	}
	if len(ids) != 1 {
		return usagef("cancel: need exactly one ORDER_ID, got %d", len(ids))
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.orders.CancelOrder(ctx, &orderv1.CancelOrderRequest{OrderId: ids[0], Reason: *reason})
	if err != nil {
		return err
	}
	c.emit(resp.GetOrder(), func() string { return formatOrder(resp.GetOrder()) })
	return nil
}

func (c *client) events(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usagef("events: need exactly one ORDER_ID")
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	resp, err := c.orders.ListOrderEvents(ctx, &orderv1.ListOrderEventsRequest{OrderId: args[0]})
	if err != nil {
		return err
	}
	for _, e := range resp.GetEvents() {
		c.emit(e, func() string {
			return fmt.Sprintf("%s  %-24s %-12s %s", e.GetTime().AsTime().Format("15:04:05.000"), e.GetRoutingKey(), e.GetSource(), e.GetSummary())
		})
	}
	return nil
}

func (c *client) watch(ctx context.Context, args []string) error {
	if len(args) != 1 {
		return usagef("watch: need exactly one ORDER_ID")
	}
	return c.watchOrder(ctx, args[0], func(o *orderv1.Order) {
		c.emit(o, func() string { return formatOrderLine(o) })
	})
}

// watchOrder streams order id to fn until the stream ends, or ctx is
// cancelled (Ctrl-C: the way to stop watching, no failure; a deadline is
// one).
func (c *client) watchOrder(ctx context.Context, id string, fn func(*orderv1.Order)) error {
	stopped := func() bool { return errors.Is(ctx.Err(), context.Canceled) }
	stream, err := c.orders.WatchOrder(ctx, &orderv1.WatchOrderRequest{OrderId: id})
	if err != nil {
		if stopped() {
			return nil
		}
		return err
	}
	for {
		resp, err := stream.Recv()
		if errors.Is(err, io.EOF) || (err != nil && stopped()) {
			return nil
		}
		if err != nil {
			return err
		}
		fn(resp.GetOrder())
	}
}

func (c *client) stock(ctx context.Context, args []string) error {
	if len(args) == 0 {
		return usagef("stock: need set or get")
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	var s *inventoryv1.Stock
	switch {
	case args[0] == "set" && len(args) >= 3:
		fs := flag.NewFlagSet("stock set", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		ifAvailable := fs.Int64("if-available", 0, "set only if the product still has this many units available")
		if err := fs.Parse(args[3:]); err != nil || fs.NArg() > 0 {
			return usagef("stock set: use 'stock set SKU AVAILABLE [--if-available N]'")
		}
		n, err := strconv.ParseInt(args[2], 10, 64)
		if err != nil {
			return usagef("stock set: AVAILABLE must be a whole number, got %q", args[2])
		}
		req := &inventoryv1.SetStockRequest{ProductId: args[1], Available: n}
		fs.Visit(func(f *flag.Flag) {
			if f.Name == "if-available" {
				// As given: the service refuses a negative one.
				req.ExpectedAvailable = ifAvailable
			}
		})
		resp, err := c.inventory.SetStock(ctx, req)
		if err != nil {
			return err
		}
		s = resp.GetStock()
	case args[0] == "get" && len(args) == 2:
		resp, err := c.inventory.GetStock(ctx, &inventoryv1.GetStockRequest{ProductId: args[1]})
		if err != nil {
			return err
		}
		s = resp.GetStock()
	default:
		return usagef("stock: use 'stock set SKU AVAILABLE [--if-available N]' or 'stock get SKU'")
	}
	c.emit(s, func() string {
		return fmt.Sprintf("%s  available %d  reserved %d", s.GetProductId(), s.GetAvailable(), s.GetReserved())
	})
	return nil
}

func (c *client) health(ctx context.Context, args []string) error {
	fs := c.flags("health")
	service := fs.String("service", "", "health service name (default: the server overall)")
	httpURL := fs.String("http", "", "check this HTTP URL (e.g. the gateway's /healthz) instead of gRPC health")
	if rest, err := parseAnywhere(fs, args); err != nil {
		return usagef("health: %v", err)
	} else if len(rest) > 0 {
		return usagef("health: takes no arguments, got %q (--service names a service)", rest)
	}
	ctx, cancel := c.call(ctx)
	defer cancel()
	if *httpURL != "" {
		return c.httpHealth(ctx, *httpURL)
	}
	resp, err := healthpb.NewHealthClient(c.orderConn).Check(ctx, &healthpb.HealthCheckRequest{Service: *service})
	if err != nil {
		return err
	}
	c.emit(resp, func() string { return resp.GetStatus().String() })
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("%s: %w", c.opts.addr, errNotServing)
	}
	return nil
}

// httpHealth checks that url answers 200.
func (c *client) httpHealth(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return usagef("health: %v", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return status.Error(codes.Unavailable, err.Error())
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	fmt.Fprintln(c.out, strings.TrimSpace(string(body)))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s answered %s: %w", url, resp.Status, errNotServing)
	}
	return nil
}

// parseItem reads SKU:QTY:PRICE, PRICE being e.g. 19.99EUR.
func parseItem(s string) (*orderv1.LineItem, error) {
	parts := strings.Split(s, ":")
	if len(parts) != 3 {
		return nil, fmt.Errorf("item %q: want SKU:QTY:PRICE, e.g. SKU-1:2:19.99EUR", s)
	}
	qty, err := strconv.ParseInt(parts[1], 10, 32)
	if err != nil {
		return nil, fmt.Errorf("item %q: quantity %q is not a whole number", s, parts[1])
	}
	price, err := parseMoney(parts[2])
	if err != nil {
		return nil, fmt.Errorf("item %q: %w", s, err)
	}
	return &orderv1.LineItem{ProductId: parts[0], Quantity: int32(qty), UnitPrice: price}, nil
}

// parseMoney reads an amount with up to nine decimals and a three-letter
// currency code, e.g. 19.99EUR, exactly (no floating point).
func parseMoney(s string) (*moneyv1.Money, error) {
	m := moneyPattern.FindStringSubmatch(s)
	if m == nil {
		return nil, fmt.Errorf("price %q: want a non-negative amount with up to 9 decimals and a currency, e.g. 19.99EUR", s)
	}
	units, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return nil, fmt.Errorf("price %q: amount too large", s)
	}
	var nanos int64
	if frac := m[2]; frac != "" {
		// Nine digits at most: within int32.
		nanos, _ = strconv.ParseInt(frac+strings.Repeat("0", 9-len(frac)), 10, 32)
	}
	return &moneyv1.Money{CurrencyCode: strings.ToUpper(m[3]), Units: units, Nanos: int32(nanos)}, nil
}

// moneyPattern is an amount, digits with up to nine decimals, and a
// three-letter currency code.
var moneyPattern = regexp.MustCompile(`^([0-9]+)(?:\.([0-9]{1,9}))?([A-Za-z]{3})$`)

func formatMoney(m *moneyv1.Money) string {
	frac := strings.TrimRight(fmt.Sprintf("%09d", m.GetNanos()), "0")
	if len(frac) < 2 {
		frac += strings.Repeat("0", 2-len(frac))
	}
	return fmt.Sprintf("%d.%s %s", m.GetUnits(), frac, m.GetCurrencyCode())
}

func statusName(s orderv1.OrderStatus) string {
	return strings.TrimPrefix(s.String(), "ORDER_STATUS_")
}

func formatOrderLine(o *orderv1.Order) string {
	line := fmt.Sprintf("%s  %-9s  %12s  %s", o.GetId(), statusName(o.GetStatus()), formatMoney(o.GetTotal()), o.GetCustomerEmail())
	if o.GetStatusReason() != "" {
		line += "  (" + o.GetStatusReason() + ")"
	}
	return line
}

func formatOrder(o *orderv1.Order) string {
	var b strings.Builder
	fmt.Fprintf(&b, "order    %s\nstatus   %s", o.GetId(), statusName(o.GetStatus()))
	if o.GetStatusReason() != "" {
		fmt.Fprintf(&b, " (%s)", o.GetStatusReason())
	}
	fmt.Fprintf(&b, "\ncustomer %s\ntotal    %s\ncreated  %s\nupdated  %s\nitems\n",
		o.GetCustomerEmail(), formatMoney(o.GetTotal()),
		o.GetCreateTime().AsTime().Format(time.RFC3339), o.GetUpdateTime().AsTime().Format(time.RFC3339))
	for _, it := range o.GetItems() {
		fmt.Fprintf(&b, "  %-20s x%-5d %s\n", it.GetProductId(), it.GetQuantity(), formatMoney(it.GetUnitPrice()))
	}
	return strings.TrimRight(b.String(), "\n")
}

// fieldViolations lists a status's google.rpc.BadRequest violations.
func fieldViolations(st *status.Status) []string {
	var out []string
	for _, d := range st.Details() {
		if br, ok := d.(*errdetails.BadRequest); ok {
			for _, v := range br.GetFieldViolations() {
				out = append(out, v.GetField()+": "+v.GetDescription())
			}
		}
	}
	return out
}
