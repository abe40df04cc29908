-- The emails this service has sent: at most one per order and kind. A row
-- is inserted, in the inbox runner's transaction, before the email is
-- handed to the SMTP server, and commits with the inbox row; a concurrent
-- delivery for the same order and kind waits on the primary key until that
-- transaction ends, then either finds the row (and sends nothing) or, if
-- the send failed and rolled back, sends the email itself.
CREATE TABLE notifications (
    order_id   text        NOT NULL,
    kind       text        NOT NULL
        CHECK (kind IN ('received', 'confirmed', 'rejected', 'cancelled')),
    recipient  text        NOT NULL,
    -- The Message-ID header of the email, derived from order and kind.
    message_id text        NOT NULL,
    -- The event that caused the email.
    event_id   text        NOT NULL,
    sent_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (order_id, kind)
);
