-- The indexes of the query API's list and stats reads. A rebuild creates them once its replay
-- is done (its own writes only look deliveries up by id).
create index deliveries_by_created on deliveries (created_at, delivery_id);
create index deliveries_by_status on deliveries (status, created_at, delivery_id);
create index deliveries_by_rider on deliveries (rider_id, created_at, delivery_id)
    where rider_id is not null;
create index deliveries_by_completed on deliveries (completed_at) where completed_at is not null;
