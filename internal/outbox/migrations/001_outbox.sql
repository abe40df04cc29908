-- Events written in the same transaction as the state change that caused
-- them, waiting for the relay to publish them. A row is deleted once the
-- broker has confirmed it.
CREATE TABLE outbox (
    seq            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id             text        NOT NULL,
    type           text        NOT NULL,
    routing_key    text        NOT NULL,
    source         text        NOT NULL,
    correlation_id text        NOT NULL DEFAULT '',
    event_time     timestamptz NOT NULL,
    trace_parent   text        NOT NULL DEFAULT '',
    trace_state    text        NOT NULL DEFAULT '',
    body           bytea       NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

-- Wake the relays on commit. One notification per statement is enough (the
-- relay drains whatever it finds), and PostgreSQL delivers it only if the
-- transaction commits. The channel names the schema so services sharing a
-- database do not wake each other.
CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('outbox.' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
    AFTER INSERT ON outbox
    FOR EACH STATEMENT
    EXECUTE FUNCTION outbox_notify();
