package main

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/url"

	"github.com/ordermesh/ordermesh/internal/eventbus"
)

// dlq lists, replays and discards the messages parked in a service's
// dead-letter queue. It talks to RabbitMQ directly (--amqp-url), not to a
// service.
func (c *client) dlq(ctx context.Context, args []string) error {
	fs := c.flags("dlq")
	amqpURL := &secretURL{url: c.opts.amqpURL}
	fs.Var(amqpURL, "amqp-url", "RabbitMQ `URL` (env ORDERMESH_AMQP_URL)")
	prefix := fs.String("prefix", c.opts.prefix, "topology prefix (env ORDERMESH_TOPOLOGY_PREFIX)")
	all := fs.Bool("all", false, "replay or discard every message")
	yes := fs.Bool("yes", false, "confirm discard --all, which cannot be undone")
	limit := fs.Int("limit", 100, "most messages to list (0: all)")
	if len(args) < 2 {
		return usagef("dlq: use 'dlq list SERVICE', 'dlq replay SERVICE (ID|--all)' or 'dlq discard SERVICE (ID|--all --yes)'")
	}
	verb, svc := args[0], args[1]
	if verb != "list" && verb != "replay" && verb != "discard" {
		return usagef("dlq: unknown action %q (list, replay or discard)", verb)
	}
	// Flags may come before or after the message id.
	var positional []string
	for rest := args[2:]; ; rest = fs.Args()[1:] {
		if err := fs.Parse(rest); err != nil {
			return usagef("dlq: %v", err)
		}
		if fs.NArg() == 0 {
			break
		}
		positional = append(positional, fs.Arg(0))
	}
	switch {
	case verb == "list" && (len(positional) > 0 || *all):
		return usagef("dlq list: takes no message id and no --all (--limit N lists more)")
	case len(positional) > 1:
		return usagef("dlq %s: one message id at most, got %d", verb, len(positional))
	case verb != "list" && (len(positional) == 1) == *all:
		return usagef("dlq %s: give a message id or --all", verb)
	case verb == "discard" && *all && !*yes:
		return usagef("dlq discard --all drops every message in %s's dead-letter queue for good: add --yes to confirm ('dlq list %s' shows them)", svc, svc)
	case *limit < 0:
		return usagef("dlq list: --limit must be 0 (no limit) or more, got %d", *limit)
	}
	q, err := eventbus.NewDLQ(eventbus.Config{URL: amqpURL.url, Prefix: *prefix, Service: svc}, slog.New(slog.DiscardHandler))
	if err != nil {
		return err
	}
	var id string
	if len(positional) == 1 {
		id = positional[0]
	}
	switch verb {
	case "list":
		dead, err := q.List(ctx, *limit)
		if err != nil {
			return err
		}
		for _, d := range dead {
			c.emitDeadLetter(d)
		}
		if c.opts.json {
			return nil
		}
		total := len(dead)
		if *limit > 0 && len(dead) == *limit {
			// The queue may hold more than the listing shows.
			if total, err = q.Len(ctx); err != nil {
				return err
			}
		}
		if total > len(dead) {
			fmt.Fprintf(c.out, "%d message(s) in %s's dead-letter queue; the first %d shown (--limit 0 lists all)\n", total, svc, len(dead))
		} else {
			fmt.Fprintf(c.out, "%d message(s) in %s's dead-letter queue\n", len(dead), svc)
		}
		return nil
	case "replay":
		if *all {
			n, err := q.ReplayAll(ctx)
			c.say("replayed %d message(s)", n)
			return err
		}
		return q.Replay(ctx, id)
	case "discard":
		if *all {
			n, err := q.DiscardAll(ctx)
			c.say("discarded %d message(s)", n)
			return err
		}
		return q.Discard(ctx, id)
	default: // unreachable: checked above
		return usagef("dlq: unknown action %q", verb)
	}
}

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

func (s *secretURL) Set(v string) error {
	s.url = v
	return nil
}
