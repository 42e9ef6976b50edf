-- Each history row keeps the hash chain link its event was published with, so an audit can
-- compare the read model's copy of the chain with the event store's.
-- Null for events published before the event store had hashes.
alter table delivery_history add column hash text;
