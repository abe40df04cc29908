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

// RecordEvents adds events to their orders' timelines; an event already
// recorded is kept as it is.
func RecordEvents(ctx context.Context, q Querier, events ...Event) error {
	for _, e := range events {
		_, err := q.Exec(ctx, `
			INSERT INTO order_events (order_id, event_id, routing_key, type, source, event_time, summary)
			VALUES ($1, $2, $3, $4, $5, $6, $7)
			ON CONFLICT (order_id, event_id) DO NOTHING`,
			e.OrderID, e.EventID, e.RoutingKey, e.Type, e.Source, e.Time, e.Summary)
		if err != nil {
			return fmt.Errorf("record event %s of order %s: %w", e.EventID, e.OrderID, err)
		}
	}
	return nil
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
