-- The `counts` projection: live counts of deliveries per status and each rider's workload.
-- Run with search_path set to the schema being built.
create table riders (
    rider_id text primary key,
    active_deliveries int not null default 0 check (active_deliveries >= 0),
    completed_deliveries int not null default 0,
    last_event_at timestamptz not null
);

create table status_counts (
    status text primary key,
    deliveries bigint not null default 0 check (deliveries >= 0)
);
insert into status_counts (status)
values ('created'), ('rider_assigned'), ('picked_up'), ('completed'), ('cancelled');
