-- pgbench: the query API's read by id, as one primary-key select over the rows
-- `bench queries --seed-database-url` wrote (the same id formula); `-D rows=N` gives their count.
\set n random(1, :rows)
select * from deliveries where delivery_id = ('b0000000' || lpad(to_hex(:n::bigint), 24, '0'))::uuid;
