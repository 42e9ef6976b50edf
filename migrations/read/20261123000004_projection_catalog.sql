-- The projections the live projector keeps current. `projector rebuild` builds a projection's
-- tables anew from the first event in a schema of their own and, once they reach the live
-- position, swaps them in and records it here. A projection not listed (one added to the code
-- later) is not written by the live projector until a rebuild has built it from the first event.
create table projections (
    name text primary key,
    live_since timestamptz not null default now(),
    rebuilt_at timestamptz
);
insert into projections (name) values ('deliveries'), ('history'), ('counts');
