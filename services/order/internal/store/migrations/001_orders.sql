-- Orders and their progress through the order saga.
CREATE TABLE orders (
    -- seq orders listings (newest first) and makes page tokens stable.
    seq               bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    id                uuid        PRIMARY KEY,
    request_id        uuid        NOT NULL UNIQUE,
    customer_email    text        NOT NULL,
    -- [{product_id, quantity, currency_code, units, nanos}]
    items             jsonb       NOT NULL,
    total_currency    text        NOT NULL,
    total_units       bigint      NOT NULL,
    total_nanos       integer     NOT NULL,
    payment_token     text        NOT NULL,
    status            text        NOT NULL
        CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED', 'CANCELLED')),
    status_reason     text        NOT NULL DEFAULT '',
    stock_reserved    boolean     NOT NULL DEFAULT false,
    payment_succeeded boolean     NOT NULL DEFAULT false,
    payment_id        text        NOT NULL DEFAULT '',
    create_time       timestamptz NOT NULL,
    update_time       timestamptz NOT NULL
);

CREATE INDEX orders_customer_seq ON orders (customer_email, seq DESC);
CREATE INDEX orders_status_seq ON orders (status, seq DESC);

-- Tell watchers (WatchOrder, in any instance of the service) which order
-- changed. PostgreSQL delivers the notification only when the transaction
-- commits. The channel names the schema so services sharing a database do
-- not see each other's orders.
CREATE FUNCTION orders_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('orders.' || TG_TABLE_SCHEMA, NEW.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER orders_notify
    AFTER UPDATE ON orders
    FOR EACH ROW
    EXECUTE FUNCTION orders_notify();
