-- pgbench: the raw Postgres equivalent of one command, one event insert plus one outbox insert
-- per transaction (scripts/bench.sh, scripts/bench-all.sh).
begin;
insert into events (event_id, delivery_id, version, event_type, schema_version, payload, metadata, occurred_at)
values (gen_random_uuid(), gen_random_uuid(), 1, 'delivery.created', 1,
        '{"order_ref":"bench","customer_id":"c","pickup":{"line":"a","lat":1,"lon":2},"dropoff":{"line":"b","lat":1,"lon":2}}',
        '{"actor":{"role":"dispatcher","id":"desk-1"},"correlation_id":"00000000-0000-0000-0000-000000000000","causation_id":"00000000-0000-0000-0000-000000000000"}',
        now());
insert into outbox (id, aggregatetype, aggregateid, type, payload, headers)
values (gen_random_uuid(), 'delivery', 'bench', 'delivery.created', '{"version":1}', '{}');
commit;
