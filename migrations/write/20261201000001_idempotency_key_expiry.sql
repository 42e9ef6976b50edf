-- Idempotency keys expire (the command API's COMMAND_API_IDEMPOTENCY_TTL_SECS, 24 hours by
-- default): a request with an expired key is run as new, and a job in `command-api serve`
-- deletes expired rows in small batches, oldest first. This index makes that scan cheap.
create index idempotency_keys_created_at on idempotency_keys (created_at);

comment on column idempotency_keys.created_at is
    'When the key was claimed (the claiming transaction''s start). Expired after the TTL.';
comment on column idempotency_keys.request_hash is
    'SHA-256 of canonical JSON of method, path, If-Match version and body (since 20261201000001).';
comment on column idempotency_keys.response_status is
    'The recorded verdict: a 2xx, or the domain''s 403/404/409. Never a 5xx: failures roll back the key.';
