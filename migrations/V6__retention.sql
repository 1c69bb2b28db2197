-- Retention of sync history and housekeeping of hosted repositories
-- (crates/store/src/syncs.rs `delete_expired`, crates/store/src/housekeeping.rs).

-- The retention pass looks for the oldest terminal syncs first; without this
-- index it would read the whole history on every tick.
CREATE INDEX IF NOT EXISTS syncs_terminal_finished
    ON syncs (finished_at) WHERE status IN ('completed', 'failed');

-- The housekeeping lease: while `housekeeping_until` is in the future, one
-- worker is housekeeping the repository's git data and no sync of it is
-- claimed (the same one-run-per-repository rule as for syncs).
-- `housekeeping_token` fences a holder whose lease ran out.
ALTER TABLE repos ADD COLUMN IF NOT EXISTS housekeeping_until timestamptz;
ALTER TABLE repos ADD COLUMN IF NOT EXISTS housekeeping_token text;
-- Last time the maintenance task looked at the repository's git data.
ALTER TABLE repos ADD COLUMN IF NOT EXISTS housekept_at timestamptz;
CREATE INDEX IF NOT EXISTS repos_housekept ON repos (housekept_at NULLS FIRST);
