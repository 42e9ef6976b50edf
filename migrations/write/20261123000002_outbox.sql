-- The transactional outbox, written in the same transaction as the events it announces.
-- Columns follow Debezium's outbox event router contract (id, aggregatetype, aggregateid, type,
-- payload), so a CDC relay could replace ours without a schema change.
create table outbox (
    -- Publication order. A delivery's next event can only be decided after its previous one
    -- committed, so within one delivery this order is also version order.
    position bigint generated always as identity primary key,
    -- The event id.
    id uuid not null unique,
    aggregatetype text not null,
    -- The delivery id: the Kafka message key, so one delivery's events share a partition.
    aggregateid text not null,
    type text not null,
    -- The whole event envelope, exactly as published.
    payload jsonb not null,
    -- Kafka headers as a JSON object of strings.
    headers jsonb not null,
    created_at timestamptz not null default now(),
    -- Set only after the broker acknowledged the message.
    published_at timestamptz
);

-- The relay reads only what is left to publish, in order.
create index outbox_unpublished on outbox (position) where published_at is null;

-- Wakes the relay as soon as a transaction adds rows; Postgres folds repeats within one transaction.
create function notify_outbox() returns trigger language plpgsql as $$
begin
    perform pg_notify('outbox', '');
    return null;
end
$$;

create trigger outbox_notify
    after insert on outbox
    for each statement execute function notify_outbox();
