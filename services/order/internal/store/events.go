package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Event is one entry of an order's event timeline.
type Event struct {
	OrderID    string
	EventID    string
	RoutingKey string
	Type       string
	Source     string
	Time       time.Time
	Summary    string
}

// RecordEvents adds events to their orders' timelines, in one statement;
// an event already recorded is kept as it is.
func RecordEvents(ctx context.Context, q Querier, events ...Event) error {
	if len(events) == 0 {
		return nil
	}
	sql, args := recordEvents(events)
	if _, err := q.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("record %d events: %w", len(events), err)
	}
	return nil
}

// QueueRecordEvents queues RecordEvents' statement on b, to be sent with
// other statements in one round trip.
func QueueRecordEvents(b *pgx.Batch, events ...Event) {
	if len(events) == 0 {
		return
	}
	sql, args := recordEvents(events)
	b.Queue(sql, args...)
}

func recordEvents(events []Event) (string, []any) {
	var c struct {
		orderID, eventID, key, typ, source, summary []string
		at                                          []time.Time
	}
	for _, e := range events {
		c.orderID = append(c.orderID, e.OrderID)
		c.eventID = append(c.eventID, e.EventID)
		c.key = append(c.key, e.RoutingKey)
		c.typ = append(c.typ, e.Type)
		c.source = append(c.source, e.Source)
		c.at = append(c.at, e.Time)
		c.summary = append(c.summary, e.Summary)
	}
	return `
		INSERT INTO order_events (order_id, event_id, routing_key, type, source, event_time, summary)
		SELECT order_id, event_id, routing_key, type, source, event_time, summary
		FROM unnest($1::text[]::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[], $7::text[])
			AS e(order_id, event_id, routing_key, type, source, event_time, summary)
		ON CONFLICT (order_id, event_id) DO NOTHING`,
		[]any{c.orderID, c.eventID, c.key, c.typ, c.source, c.at, c.summary}
}

// ListEvents returns order id's timeline in the order the events were
// recorded.
func ListEvents(ctx context.Context, q Querier, orderID string) ([]Event, error) {
	rows, err := q.Query(ctx, `
		SELECT order_id, event_id, routing_key, type, source, event_time, summary
		FROM order_events WHERE order_id = $1 ORDER BY recorded_at, event_time, event_id`, orderID)
	if err != nil {
		return nil, fmt.Errorf("list events of order %s: %w", orderID, err)
	}
	events, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (Event, error) {
		var e Event
		err := row.Scan(&e.OrderID, &e.EventID, &e.RoutingKey, &e.Type, &e.Source, &e.Time, &e.Summary)
		e.Time = e.Time.UTC()
		return e, err
	})
	if err != nil {
		return nil, fmt.Errorf("list events of order %s: %w", orderID, err)
	}
	return events, nil
}
