-- What the service did about each order it heard of: charged, declined,
-- refunded, or blocked (rejected or cancelled before it was created). A
-- charge is recorded in the same transaction as the inbox row of the
-- order.created that caused it, so an order is charged at most once.
-- Amounts are exact (units + nanos), never floating point.
CREATE TABLE payments (
    order_id      uuid        PRIMARY KEY,
    status        text        NOT NULL
        CHECK (status IN ('CHARGED', 'FAILED', 'REFUNDED', 'BLOCKED')),
    currency_code text        NOT NULL DEFAULT '',
    units         bigint      NOT NULL DEFAULT 0,
    nanos         integer     NOT NULL DEFAULT 0,
    charge_id     text        NOT NULL DEFAULT '',
    refund_id     text        NOT NULL DEFAULT '',
    reason        text        NOT NULL DEFAULT '',
    create_time   timestamptz NOT NULL DEFAULT now(),
    update_time   timestamptz NOT NULL DEFAULT now(),
    CHECK (status NOT IN ('CHARGED', 'REFUNDED') OR charge_id <> ''),
    CHECK (status <> 'REFUNDED' OR refund_id <> '')
);
