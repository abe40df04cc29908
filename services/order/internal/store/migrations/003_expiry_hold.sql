-- The order timeout's pause, one row shared by every instance of the
-- service (see the app's expiry sweep): no order times out before
-- held_until; swept_at is when an instance last swept for stale orders,
-- so that a sweep after the service (or its database) was away for a
-- while knows that outcomes may have queued meanwhile. Both start at
-- -infinity: the first sweep after this migration, like one after an
-- absence, pauses the timeout for a timeout.
CREATE TABLE expiry_hold (
    singleton  boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    held_until timestamptz NOT NULL,
    swept_at   timestamptz NOT NULL
);
INSERT INTO expiry_hold (held_until, swept_at) VALUES ('-infinity', '-infinity');
