-- The `history` projection: every event of every delivery, for audits and `?as_of=` reads.
-- Run with search_path set to the schema being built. Its keys are in history.indexes.sql.
create table delivery_history (
    delivery_id uuid not null,
    version bigint not null,
    event_id uuid not null,
    event_type text not null,
    schema_version int not null,
    actor_role text not null,
    actor_id text not null,
    occurred_at timestamptz not null,
    recorded_at timestamptz not null,
    correlation_id uuid not null,
    causation_id uuid not null,
    data jsonb not null,
    kafka_partition int not null,
    kafka_offset bigint not null,
    hash text
);
