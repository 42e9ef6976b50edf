-- Tamper evidence: each event stores a hash chained to the previous event of its delivery
-- (hex SHA-256 of a canonical form of the event plus the previous version's hash; the form is
-- defined once, in domain/src/chain.rs). The command API computes it when appending, so changing
-- or removing a stored event breaks the chain at that version.
--
-- Nullable: events appended before this migration have no hash (an audit reports them as
-- unhashed), and they cannot be given one afterwards: events refuse UPDATE.
alter table events add column hash text;

comment on column events.hash is
    'Hash chain link (hex SHA-256, see domain/src/chain.rs). Null for events appended before 20261123000004.';
