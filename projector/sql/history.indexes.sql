-- The keys of `delivery_history`. A rebuild creates them once its replay is done: one sort
-- per index costs far less than keeping them up to date row by row. They also check that the
-- replay wrote each event once.
alter table delivery_history
    add primary key (delivery_id, version),
    add unique (event_id);
