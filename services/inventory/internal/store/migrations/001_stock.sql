-- Stock levels, one row per product ever stocked. Reserving moves units
-- from available to reserved; the CHECKs are the last line of defence
-- against overselling.
CREATE TABLE stock (
    product_id  text        PRIMARY KEY,
    available   bigint      NOT NULL CHECK (available >= 0),
    reserved    bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    update_time timestamptz NOT NULL DEFAULT now()
);

-- What the service did for each order it heard of, so redeliveries and
-- out-of-order events (rejected or cancelled before created) are handled
-- once and consistently.
CREATE TABLE reservations (
    order_id    uuid        PRIMARY KEY,
    status      text        NOT NULL
        CHECK (status IN ('RESERVED', 'COMMITTED', 'RELEASED', 'FAILED', 'BLOCKED')),
    reason      text        NOT NULL DEFAULT '',
    create_time timestamptz NOT NULL DEFAULT now(),
    update_time timestamptz NOT NULL DEFAULT now()
);

-- The merged lines of a reservation: held (or, for a failed one, asked
-- for), one per product.
CREATE TABLE reservation_lines (
    order_id   uuid   NOT NULL REFERENCES reservations ON DELETE CASCADE,
    product_id text   NOT NULL,
    quantity   bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, product_id)
);
