-- Poison records that cannot fail. A key that is not valid UTF-8 or holds a NUL is kept in
-- `message_key` in a readable escaped form and whole, as bytes, in `message_key_bytes`.
-- `delivery_id` and `version` say whose events wait behind a poison message (from its envelope
-- when it decoded, else from a key that is a delivery id), for `projector dlq`.
alter table poison_messages
    add column message_key_bytes bytea,
    add column delivery_id uuid,
    add column version bigint;

-- What operators did about stuck events (`projector dlq retry | skip`): who, when, why, and
-- what it touched. Not part of any projection: a rebuild keeps it, and honours its skips.
create table dlq_actions (
    id bigint generated always as identity primary key,
    action text not null check (action in ('retry', 'skip')),
    actor text not null,
    reason text not null check (reason <> ''),
    acted_at timestamptz not null default now(),
    topic text not null,
    delivery_id uuid,
    -- For a skip: the version the delivery moves past without applying it.
    version bigint,
    -- For a skip of a poison message: where it was read from.
    kafka_partition int,
    kafka_offset bigint,
    -- What the action found and did, readable, and the stuck records it removed.
    outcome text not null,
    detail jsonb not null default '{}'
);
-- The projector reads the skips of each batch's deliveries.
create index dlq_skips on dlq_actions (delivery_id) where action = 'skip';
