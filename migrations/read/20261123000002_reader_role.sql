-- The query API reads through a role that can only read: it cannot change a query table even if
-- it tried. Login roles are granted this one (see `migrate --reader-login`).
do $$
begin
    create role delivery_reader nologin;
exception when duplicate_object then null;
end
$$;

grant usage on schema public to delivery_reader;
grant select on all tables in schema public to delivery_reader;
-- Tables created later by the same owner (new projections, rebuilt versions) are readable too.
alter default privileges in schema public grant select on tables to delivery_reader;
