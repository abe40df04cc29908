-- Rows the broker refused (unroutable: no queue bound yet; nacked) wait
-- here for their next attempt, out of the way of the rows behind them. In
-- the outbox they sat at the head of its primary key, where every claim
-- read past them (behind 50,000 of them, a claim of the rows after read
-- them all, 4 to 11 ms), and once due they came first, ahead of newer rows. A
-- row keeps its seq, and attempts counts the broker's refusals.
CREATE TABLE outbox_deferred (
    seq             bigint      PRIMARY KEY,
    id              text        NOT NULL,
    type            text        NOT NULL,
    routing_key     text        NOT NULL,
    source          text        NOT NULL,
    correlation_id  text        NOT NULL DEFAULT '',
    event_time      timestamptz NOT NULL,
    trace_parent    text        NOT NULL DEFAULT '',
    trace_state     text        NOT NULL DEFAULT '',
    body            bytea       NOT NULL,
    created_at      timestamptz NOT NULL,
    attempts        integer     NOT NULL,
    next_attempt_at timestamptz NOT NULL
);

CREATE INDEX outbox_deferred_due ON outbox_deferred (next_attempt_at);

-- The rows deferred in the outbox itself move. (Its attempts and
-- next_attempt_at columns stay, for relays of the version before this one
-- during a rolling upgrade; this version claims every outbox row.)
WITH moved AS (
    DELETE FROM outbox WHERE attempts > 0
    RETURNING seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state,
        body, created_at, attempts, next_attempt_at
)
INSERT INTO outbox_deferred (seq, id, type, routing_key, source, correlation_id, event_time, trace_parent,
    trace_state, body, created_at, attempts, next_attempt_at)
SELECT seq, id, type, routing_key, source, correlation_id, event_time, trace_parent, trace_state,
    body, created_at, attempts, next_attempt_at
FROM moved;
