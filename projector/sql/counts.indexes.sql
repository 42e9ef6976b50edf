-- The counts projection's read index; tiny (one row per rider).
create index riders_active on riders (rider_id) where active_deliveries > 0;
