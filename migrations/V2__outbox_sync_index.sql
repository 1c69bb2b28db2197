-- outbox.sync_id references syncs with ON DELETE CASCADE: without an index,
-- deleting a repository with a long sync history scans the outbox once per
-- sync (measured: 5,000 syncs took 4.3 s, 86 ms with the index).
CREATE INDEX outbox_sync ON outbox (sync_id);
