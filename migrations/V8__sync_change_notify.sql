-- Push sync changes to the gateways that hold `Prefer: wait` requests
-- (crates/gateway sync_watch.rs): a NOTIFY on `depot_syncs` with payload
-- '<repo_id> <sync_id>', sent by the same transaction as the write, so it is
-- delivered exactly when the change commits (and never for a rolled-back
-- one). Only changes to what the API shows of a sync notify: a heartbeat
-- (lease_until, updated_at) or a relay's published_at does not. A deleted
-- sync (retention, a deleted repository) changes its repository's list.
-- Inserts do not notify: a NOTIFY serialises commits on a global lock, and
-- the POST is the hot path; a gateway wakes its own list waiters on a POST,
-- and other replicas see the new sync at the claim's status change.
CREATE OR REPLACE FUNCTION depot_sync_changed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('depot_syncs', OLD.repo_id || ' ' || OLD.id);
    ELSE
        PERFORM pg_notify('depot_syncs', NEW.repo_id || ' ' || NEW.id);
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS syncs_changed ON syncs;
CREATE TRIGGER syncs_changed AFTER UPDATE ON syncs FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
       OR OLD.attempt IS DISTINCT FROM NEW.attempt
       OR OLD.stats IS DISTINCT FROM NEW.stats
       OR OLD.error IS DISTINCT FROM NEW.error
       OR OLD.started_at IS DISTINCT FROM NEW.started_at
       OR OLD.finished_at IS DISTINCT FROM NEW.finished_at
       OR OLD.last_attempt_error IS DISTINCT FROM NEW.last_attempt_error
       OR OLD.not_before IS DISTINCT FROM NEW.not_before)
    EXECUTE FUNCTION depot_sync_changed();

DROP TRIGGER IF EXISTS syncs_deleted ON syncs;
CREATE TRIGGER syncs_deleted AFTER DELETE ON syncs FOR EACH ROW
    EXECUTE FUNCTION depot_sync_changed();
