-- The relay is no longer woken from inside each command's transaction. A transaction that
-- notifies takes a cluster-wide lock while it commits, so every command's commit waited on
-- every other's: with this trigger, pgbench's event + outbox insert ran at 2,245 tx/s on
-- 16 clients, without it at 5,048. The command API now sends `NOTIFY outbox` itself, from one
-- task per process and after the commit, folding the commits of one round trip into one
-- notification (command-api/src/wake.rs, ADR 0013). The relay's poll catches any row whose
-- notification was lost.
drop trigger outbox_notify on outbox;
drop function notify_outbox();
