-- A row the broker refused (e.g. unroutable: no queue bound yet) waits
-- before its next attempt, with a backoff that grows with its attempts,
-- so it never holds up the rows behind it.
ALTER TABLE outbox
    ADD COLUMN attempts        integer     NOT NULL DEFAULT 0,
    ADD COLUMN next_attempt_at timestamptz NOT NULL DEFAULT '-infinity';
