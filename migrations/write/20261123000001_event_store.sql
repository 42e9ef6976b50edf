-- The event store: every fact about every delivery, in order, never changed once written.
create table events (
    -- A global order over all deliveries, used as a read-your-writes token. Identity values are
    -- handed out at insert, so across deliveries they are not strictly commit order.
    global_position bigint generated always as identity primary key,
    -- UUID v7, unique across the store; consumers may deduplicate on it.
    event_id uuid not null unique,
    delivery_id uuid not null,
    -- 1, 2, 3 ... per delivery.
    version bigint not null check (version > 0),
    -- The stable event type name (delivery.created, ...), never a Rust type name.
    event_type text not null,
    schema_version int not null,
    -- The information part of the event.
    payload jsonb not null,
    -- The actor, correlation id and causation id.
    metadata jsonb not null,
    -- When it happened (the command's time) and when the store accepted it.
    occurred_at timestamptz not null,
    recorded_at timestamptz not null default now(),
    -- The optimistic concurrency guard: two writers that decided from the same version both try
    -- to write version n + 1, and only the first commit wins.
    constraint events_delivery_version_key unique (delivery_id, version)
);

-- History is true once written: the database itself refuses to change or remove it.
create function refuse_event_change() returns trigger language plpgsql as $$
begin
    raise exception 'events are immutable: % on events is refused', tg_op
        using errcode = 'integrity_constraint_violation';
end
$$;

create trigger events_are_immutable
    before update or delete on events
    for each row execute function refuse_event_change();

create trigger events_are_not_truncated
    before truncate on events
    for each statement execute function refuse_event_change();
