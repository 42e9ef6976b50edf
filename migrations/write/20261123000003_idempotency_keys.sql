-- Responses to commands sent with an Idempotency-Key, so a retried request gets the original
-- answer and appends nothing. Written in the same transaction as the events.
create table idempotency_keys (
    -- Keys are scoped to the caller: two clients may pick the same key.
    actor text not null,
    key text not null,
    -- SHA-256 of method, path and body: the same key with another request is refused.
    request_hash text not null,
    response_status smallint not null,
    response_body jsonb not null,
    created_at timestamptz not null default now(),
    primary key (actor, key)
);
