-- Query tables, built only by the projector from the event topic. They can be thrown away and
-- rebuilt by replaying the topic from the first offset.

-- The current state of each delivery.
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
    -- The last applied event version: the idempotency guard and the read-your-writes mark.
    version bigint not null,
    -- occurred_at of the last applied event.
    updated_at timestamptz not null
);

-- Keyset pagination: (created_at, delivery_id) is the cursor, optionally within a status or rider.
create index deliveries_by_created on deliveries (created_at, delivery_id);
create index deliveries_by_status on deliveries (status, created_at, delivery_id);
create index deliveries_by_rider on deliveries (rider_id, created_at, delivery_id)
    where rider_id is not null;
-- Today's completion times for the live stats.
create index deliveries_by_completed on deliveries (completed_at) where completed_at is not null;

-- Every event of every delivery: the audit trail.
create table delivery_history (
    delivery_id uuid not null,
    version bigint not null,
    event_id uuid not null unique,
    event_type text not null,
    schema_version int not null,
    actor_role text not null,
    actor_id text not null,
    occurred_at timestamptz not null,
    recorded_at timestamptz not null,
    correlation_id uuid not null,
    causation_id uuid not null,
    data jsonb not null,
    -- Where the event was read from, for audits against the topic.
    kafka_partition int not null,
    kafka_offset bigint not null,
    primary key (delivery_id, version)
);

-- Each rider's workload.
create table riders (
    rider_id text primary key,
    -- Deliveries assigned to the rider and not yet completed or cancelled.
    active_deliveries int not null default 0 check (active_deliveries >= 0),
    completed_deliveries int not null default 0,
    last_event_at timestamptz not null
);
create index riders_active on riders (rider_id) where active_deliveries > 0;

-- Deliveries in each status, kept exact by the projector (one row per status).
create table status_counts (
    status text primary key,
    deliveries bigint not null default 0 check (deliveries >= 0)
);
insert into status_counts (status)
values ('created'), ('rider_assigned'), ('picked_up'), ('completed'), ('cancelled');

-- The next offset to read per partition, committed in the same transaction as the writes the
-- earlier offsets caused. This, not the broker's committed offset, is where a projector resumes.
create table consumer_offsets (
    consumer_group text not null,
    topic text not null,
    kafka_partition int not null,
    next_offset bigint not null,
    updated_at timestamptz not null default now(),
    primary key (consumer_group, topic, kafka_partition)
);

-- Events that arrived ahead of a missing version of their delivery. Kept and reported, and
-- applied as soon as the missing version arrives: a gap is never silently skipped.
create table parked_events (
    delivery_id uuid not null,
    version bigint not null,
    -- The version the read model had when this one arrived.
    applied_version bigint not null,
    envelope jsonb not null,
    kafka_partition int not null,
    kafka_offset bigint not null,
    parked_at timestamptz not null default now(),
    primary key (delivery_id, version)
);

-- Messages that cannot be decoded (not JSON, unknown type or schema version). Kept for a person
-- to look at; they never stop the partition behind them.
create table poison_messages (
    topic text not null,
    kafka_partition int not null,
    kafka_offset bigint not null,
    message_key text,
    payload bytea,
    error text not null,
    received_at timestamptz not null default now(),
    primary key (topic, kafka_partition, kafka_offset)
);
