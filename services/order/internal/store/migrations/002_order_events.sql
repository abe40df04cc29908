-- The saga's events per order, as the order service saw them: those it
-- published and those it consumed. ListOrderEvents reads them.
CREATE TABLE order_events (
    order_id    uuid        NOT NULL,
    event_id    text        NOT NULL,
    routing_key text        NOT NULL,
    type        text        NOT NULL,
    source      text        NOT NULL,
    event_time  timestamptz NOT NULL,
    summary     text        NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (order_id, event_id)
);
