package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"

	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// dlq lists, replays and discards the messages parked in a service's
// dead-letter queue. It talks to RabbitMQ directly (--amqp-url), not to a
// service, each broker call bounded by --timeout. Its flags may come
// anywhere after "dlq": before, between or after the action, SERVICE and
// ID.
func (c *client) dlq(ctx context.Context, args []string) error {
	fs := c.flags("dlq")
	amqpURL := &secretURL{url: c.opts.amqpURL}
	fs.Var(amqpURL, "amqp-url", "RabbitMQ `URL` (env ORDERMESH_AMQP_URL)")
	prefix := fs.String("prefix", c.opts.prefix, "topology prefix (env ORDERMESH_TOPOLOGY_PREFIX)")
	all := fs.Bool("all", false, "replay or discard every message")
	yes := fs.Bool("yes", false, "confirm discard --all, which cannot be undone")
	limit := fs.Int("limit", 100, "most messages to list (0: all)")
	reason := fs.String("reason", "", "with --all: only the messages dead-lettered for this `REASON` (as list shows it)")
	// Flags may come anywhere: "dlq replay --all inventory" is
	// "dlq replay inventory --all", not a service named "--all".
	positional, err := parseAnywhere(fs, args)
	if err != nil {
		return usagef("dlq: %v", err)
	}
	if len(positional) < 2 {
		return usagef("dlq: use 'dlq list SERVICE [--limit N]', 'dlq replay SERVICE (ID|--all)' or 'dlq discard SERVICE (ID|--all --yes)'")
	}
	verb, svc, ids := positional[0], positional[1], positional[2:]
	if verb != "list" && verb != "replay" && verb != "discard" {
		return usagef("dlq: unknown action %q (list, replay or discard)", verb)
	}
	switch {
	case verb == "list" && (len(ids) > 0 || *all):
		return usagef("dlq list: takes no message id and no --all (--limit N lists more)")
	case len(ids) > 1:
		return usagef("dlq %s: one message id at most, got %d", verb, len(ids))
	case verb != "list" && (len(ids) == 1) == *all:
		return usagef("dlq %s: give a message id or --all", verb)
	case verb == "discard" && *all && !*yes:
		return usagef("dlq discard --all drops every message in %s's dead-letter queue for good: add --yes to confirm ('dlq list %s' shows them)", svc, svc)
	case *limit < 0:
		return usagef("dlq list: --limit must be 0 (no limit) or more, got %d", *limit)
	case *reason != "" && !*all:
		return usagef("dlq: --reason goes with replay --all or discard --all")
	case *reason != "" && !slices.Contains(eventbus.Reasons, *reason):
		return usagef("dlq: unknown --reason %q (one of %s)", *reason, strings.Join(eventbus.Reasons, ", "))
	}
	cfg := eventbus.Config{
		URL: amqpURL.url, Prefix: *prefix, Service: svc,
		// --timeout is the timeout of each call: the dial (TCP and AMQP
		// handshake), each broker call, and each replay's confirm.
		DialTimeout: c.opts.timeout, CallTimeout: c.opts.timeout, ConfirmTimeout: c.opts.timeout,
	}
	q, err := eventbus.NewDLQ(cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	var id string
	if len(ids) == 1 {
		id = ids[0]
	}
	switch verb {
	case "list":
		return c.dlqList(ctx, q, svc, *limit)
	case "replay":
		if *all {
			n, err := q.ReplayAll(ctx, *reason)
			return c.dlqSwept(ctx, q, "replayed", svc, n, err)
		}
		if err := q.Replay(ctx, id); err != nil {
			return err
		}
		c.dlqDone("replayed", svc, id, fmt.Sprintf("replayed %s to %s's queue", id, svc))
		return nil
	case "discard":
		if *all {
			n, err := q.DiscardAll(ctx, *reason)
			return c.dlqSwept(ctx, q, "discarded", svc, n, err)
		}
		if err := q.Discard(ctx, id); err != nil {
			return err
		}
		c.dlqDone("discarded", svc, id, fmt.Sprintf("discarded %s from %s's dead-letter queue", id, svc))
		return nil
	default: // unreachable: checked above
		return usagef("dlq: unknown action %q", verb)
	}
}

// dlqList prints up to limit of svc's dead letters, then how many the
// queue holds: on stdout in text, on stderr with --json (so stdout stays
// one dead letter per line), and there only when the listing left some
// out or a consumer may hold some.
func (c *client) dlqList(ctx context.Context, q *eventbus.DLQ, svc string, limit int) error {
	dead, st, err := q.ListStat(ctx, limit)
	if err != nil {
		return err
	}
	for _, d := range dead {
		c.emitDeadLetter(d)
	}
	held := ""
	if st.Consumers > 0 {
		held = fmt.Sprintf("; its %d consumer(s) may hold more, unacknowledged, which no listing shows", st.Consumers)
	}
	truncated := limit > 0 && len(dead) == limit && st.Ready > len(dead)
	if c.opts.json {
		if truncated {
			fmt.Fprintf(c.errOut, "ordermeshctl: %d more message(s) in %s's dead-letter queue not shown: the first %d of %d listed (--limit 0 lists all)%s\n", st.Ready-len(dead), svc, len(dead), st.Ready, held)
		} else if held != "" {
			fmt.Fprintf(c.errOut, "ordermeshctl: %d message(s) in %s's dead-letter queue%s\n", len(dead), svc, held)
		}
		return nil
	}
	if truncated {
		fmt.Fprintf(c.out, "%d message(s) in %s's dead-letter queue; the first %d shown (--limit 0 lists all)%s\n", st.Ready, svc, len(dead), held)
	} else {
		fmt.Fprintf(c.out, "%d message(s) in %s's dead-letter queue%s\n", len(dead), svc, held)
	}
	return nil
}

// dlqDone confirms the replay or discard of one message: text, or with
// --json an object {"action", "service", "id"}.
func (c *client) dlqDone(action, svc, id, text string) {
	c.emitJSONOr(map[string]any{"action": action, "service": svc, "id": id}, text)
}

// dlqSwept reports a replay or discard --all that moved n messages and
// ended with err, then, if it succeeded, what is still parked: messages
// ready now (parked, or let go by another session, meanwhile) and the
// queue's consumers, which may hold more. With --json it prints one
// object {"action", "service", "count"} plus "still_parked" and
// "consumers" after a success.
func (c *client) dlqSwept(ctx context.Context, q *eventbus.DLQ, action, svc string, n int, err error) error {
	if err != nil {
		c.emitJSONOr(map[string]any{"action": action, "service": svc, "count": n}, fmt.Sprintf("%s %d message(s)", action, n))
		return err
	}
	st, statErr := q.Stat(ctx)
	if statErr != nil {
		c.emitJSONOr(map[string]any{"action": action, "service": svc, "count": n}, fmt.Sprintf("%s %d message(s)", action, n))
		return fmt.Errorf("%s %d message(s), then could not count those left: %w", action, n, statErr)
	}
	text := fmt.Sprintf("%s %d message(s)", action, n)
	if st.Ready > 0 {
		text += fmt.Sprintf("; %d still parked in %s's dead-letter queue, parked or let go by another session meanwhile ('dlq list %s' shows them)", st.Ready, svc, svc)
	}
	if st.Consumers > 0 {
		text += fmt.Sprintf("; its %d consumer(s) may hold more, unacknowledged and out of reach", st.Consumers)
	}
	c.emitJSONOr(map[string]any{"action": action, "service": svc, "count": n, "still_parked": st.Ready, "consumers": st.Consumers}, text)
	return nil
}

// emitJSONOr prints v as one JSON line (--json) or text.
func (c *client) emitJSONOr(v map[string]any, text string) {
	if !c.opts.json {
		fmt.Fprintln(c.out, text)
		return
	}
	b, err := json.Marshal(v)
	if err != nil {
		fmt.Fprintf(c.out, "{\"error\": %q}\n", err.Error())
		return
	}
	fmt.Fprintln(c.out, string(b))
}

// emitDeadLetter prints one dead letter: a JSON line (--json) or text.
func (c *client) emitDeadLetter(d eventbus.DeadLetter) {
	if c.opts.json {
		b, err := json.Marshal(map[string]any{
			"id": d.ID, "type": d.Type, "routing_key": d.RoutingKey, "correlation_id": d.CorrelationID,
			"reason": d.Reason, "error": d.Error, "attempts": d.Attempts, "dead_lettered_at": d.DeadLetteredAt,
		})
		if err == nil {
			fmt.Fprintln(c.out, string(b))
		}
		return
	}
	fmt.Fprintf(c.out, "%s  %-24s %-18s attempts %d  %s\n", d.ID, d.RoutingKey, d.Reason, d.Attempts, d.Error)
}

// secretURL is a flag holding a URL that may carry a password: its value
// (and so the default -h prints) shows the password as xxxxx.
type secretURL struct{ url string }

// String is the URL with its password as xxxxx.
func (s *secretURL) String() string {
	if s == nil || s.url == "" {
		return ""
	}
	u, err := url.Parse(s.url)
	if err != nil {
		return "(not a URL)"
	}
	return u.Redacted()
}

// Set takes the URL as given.
func (s *secretURL) Set(v string) error {
	s.url = v
	return nil
}
