-- The failure of the latest attempt that was retried, kept while the sync
-- waits out its backoff and runs again: `error` must stay null on a sync
-- that is not `failed` (Mesa's models require it), so a retrying sync
-- otherwise looked idle. Shown as the extension field `last_attempt_error`
-- (docs/sync-semantics.md); `next_attempt_at` is the existing `not_before`.
-- A nullable column without default: adding it rewrites nothing.
ALTER TABLE syncs ADD COLUMN IF NOT EXISTS last_attempt_error text;
