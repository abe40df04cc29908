-- Ids of the events this service has processed. A row commits in the same
-- transaction as the handler's effects and outgoing outbox rows, so an event
-- redelivered later finds it and is skipped.
CREATE TABLE inbox (
    event_id     text        PRIMARY KEY,
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Pruning deletes the oldest rows first.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
