-- The `deliveries` projection: each delivery's current state, and the bookkeeping the
-- projector keeps beside it (events parked ahead of a gap, undecodable messages).
-- Run with search_path set to the schema being built; names are unqualified on purpose.
-- The read paths' indexes are in deliveries.indexes.sql.
create table deliveries (
    delivery_id uuid primary key,
    status text not null,
    order_ref text not null,
    customer_id text not null,
    pickup jsonb not null,
    dropoff jsonb not null,
    rider_id text,
    cancel_reason text,
    created_at timestamptz not null,
    assigned_at timestamptz,
    picked_up_at timestamptz,
    completed_at timestamptz,
    cancelled_at timestamptz,
    version bigint not null,
    updated_at timestamptz not null
);

create table parked_events (
    delivery_id uuid not null,
    version bigint not null,
    applied_version bigint not null,
    envelope jsonb not null,
    kafka_partition int not null,
    kafka_offset bigint not null,
    parked_at timestamptz not null default now(),
    primary key (delivery_id, version)
);

create table poison_messages (
    topic text not null,
    kafka_partition int not null,
    kafka_offset bigint not null,
    message_key text,
    payload bytea,
    error text not null,
    received_at timestamptz not null default now(),
    message_key_bytes bytea,
    delivery_id uuid,
    version bigint,
    primary key (topic, kafka_partition, kafka_offset)
);
