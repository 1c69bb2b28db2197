-- The "is an identical sync still queued?" check of every POST …/syncs
-- (crates/store/src/syncs.rs `enqueue`) filters on these columns and takes
-- the oldest. Without an index that covers them, Postgres combined the
-- repo's index with `syncs_queued`, reading every queued row's index entry
-- (and every dead one since the last vacuum): with a backlog of queued
-- syncs, each POST paid for the whole backlog (measured: 145,000 index
-- entries and 4 ms per check, 16 ms p50 under load).
-- `syncs_one_fresh_queued` does not serve: it covers attempt = 0 only.
-- IF NOT EXISTS: a large deployment builds it first with CONCURRENTLY
-- (docs/operations.md), and this then leaves it be.
CREATE INDEX IF NOT EXISTS syncs_queued_identity
    ON syncs (repo_id, direction, branches_glob, tags_glob, seq)
    WHERE status = 'queued';
