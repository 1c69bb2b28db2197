-- Webhook targets, the events they are told about, and one delivery row per
-- (event, target) (docs/api.md "Webhooks", docs/operations.md "Webhook
-- deliveries").
--
-- Events are recorded by triggers on `syncs` and `repos`: a trigger runs in
-- the transaction of the change it reports, whichever statement made it
-- (the gateway's POST, a worker's claim or terminal write, the lease
-- sweeper, a repository's create, update or delete), so an event is never
-- lost and never recorded for a change that rolled back. The trigger also
-- writes the deliveries for the matching targets and one outbox row per
-- delivery (kind `webhook_delivery`), so deliveries travel the same
-- outbox → relay → broker path as sync jobs.

CREATE TABLE IF NOT EXISTS webhook_targets (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name        text,
    url         text NOT NULL,
    events      text[] NOT NULL,
    -- NULL: every repository of the org.
    repo_ids    text[],
    -- AES-256-GCM (crates/secrets), the target id as associated data.
    secret      bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS webhook_targets_org ON webhook_targets (org_id, seq);

-- What happened, as it was when it happened: `subject` is the changed row
-- (`to_jsonb` of the sync or repository), `before` the repository's row
-- before a `repo.updated`. Rendered into Mesa's envelope at delivery.
-- No foreign keys: a `repo.deleted` outlives its repository.
CREATE TABLE IF NOT EXISTS webhook_events (
    id           text PRIMARY KEY,
    seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    type         text NOT NULL,
    org_id       text NOT NULL,
    org_slug     text NOT NULL,
    org_name     text NOT NULL,
    repo_id      text,
    repo_name    text,
    subject      jsonb NOT NULL,
    before       jsonb,
    occurred_at  timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX IF NOT EXISTS webhook_events_age ON webhook_events (occurred_at);

CREATE TABLE IF NOT EXISTS webhook_deliveries (
    id                text PRIMARY KEY,
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    target_id         text NOT NULL REFERENCES webhook_targets (id) ON DELETE CASCADE,
    event_id          text NOT NULL REFERENCES webhook_events (id) ON DELETE CASCADE,
    -- Deliveries with the same target and key are sent one at a time, in
    -- `seq` order: the sync's id for `sync.*`, the repository's for `repo.*`.
    order_key         text NOT NULL,
    status            text NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'succeeded', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    last_status_code  integer,
    last_error        text,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    -- While a worker sends it; a worker that died lets it run out.
    lease_until       timestamptz,
    -- Last time a job message was published for it (relay bookkeeping).
    published_at      timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_target ON webhook_deliveries (target_id, seq DESC);
CREATE INDEX IF NOT EXISTS webhook_deliveries_order
    ON webhook_deliveries (target_id, order_key, seq) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_due
    ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS webhook_deliveries_event ON webhook_deliveries (event_id);

-- The outbox carries more than one kind of job. Existing rows and writers
-- are sync jobs (the default); a delivery's row has no sync.
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'sync';
ALTER TABLE outbox ADD COLUMN IF NOT EXISTS delivery_id text
    REFERENCES webhook_deliveries (id) ON DELETE CASCADE;
ALTER TABLE outbox ALTER COLUMN sync_id DROP NOT NULL;
CREATE INDEX IF NOT EXISTS outbox_delivery ON outbox (delivery_id) WHERE delivery_id IS NOT NULL;

-- A new random id like crates/domain `new_id`: 20 characters of base 36.
CREATE OR REPLACE FUNCTION depot_new_id(prefix text) RETURNS text
LANGUAGE sql VOLATILE AS $$
    SELECT prefix || '_' || string_agg(substr('0123456789abcdefghijklmnopqrstuvwxyz',
                                              1 + floor(random() * 36)::int, 1), '')
    FROM generate_series(1, 20)
$$;

-- The job message of a delivery, protobuf `depot.sync.v1.SyncJob` with
-- `kind = JOB_KIND_WEBHOOK_DELIVERY` (field 5, varint 1) and `delivery_id`
-- (field 6): tag bytes 0x28 0x01, then 0x32, a one-byte length (ids are
-- shorter than 128 bytes) and the id. Checked against prost by
-- tests/e2e/webhooks.rs (delivery_outbox_rows_decode_as_delivery_jobs).
CREATE OR REPLACE FUNCTION depot_delivery_job(delivery_id text) RETURNS bytea
LANGUAGE sql IMMUTABLE AS $$
    SELECT '\x2801'::bytea || '\x32'::bytea
        || set_byte('\x00'::bytea, 0, octet_length(delivery_id))
        || convert_to(delivery_id, 'UTF8')
$$;

-- Record event `kind` and fan it out to the org's matching targets.
CREATE OR REPLACE FUNCTION depot_record_event(
    kind text, org text, repo text, repo_name text, order_key text,
    subject jsonb, before jsonb) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    o record;
    event_id text;
    d record;
BEGIN
    -- Most orgs have no target: one index probe, nothing written.
    IF NOT EXISTS (SELECT 1 FROM webhook_targets t WHERE t.org_id = org
                   AND kind = ANY (t.events)
                   AND (t.repo_ids IS NULL OR repo = ANY (t.repo_ids))) THEN
        RETURN;
    END IF;
    SELECT id, slug, name INTO o FROM orgs WHERE id = org;
    IF NOT FOUND THEN
        -- The org itself is being deleted (this is its cascade): its
        -- targets go with it, there is nobody to tell.
        RETURN;
    END IF;
    event_id := depot_new_id('evt');
    INSERT INTO webhook_events (id, type, org_id, org_slug, org_name, repo_id, repo_name, subject, before)
    VALUES (event_id, kind, o.id, o.slug, o.name, repo, repo_name, subject, before);
    FOR d IN
        INSERT INTO webhook_deliveries (id, target_id, event_id, order_key)
        SELECT depot_new_id('whd'), t.id, event_id, order_key
        FROM webhook_targets t
        WHERE t.org_id = org AND kind = ANY (t.events)
          AND (t.repo_ids IS NULL OR repo = ANY (t.repo_ids))
        ORDER BY t.seq
        RETURNING id
    LOOP
        INSERT INTO outbox (kind, delivery_id, payload)
        VALUES ('webhook_delivery', d.id, depot_delivery_job(d.id));
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION depot_sync_event() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record;
    kind text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        kind := 'sync.queued';
    ELSIF NEW.status = 'in_progress' THEN
        kind := 'sync.in_progress';
    ELSIF NEW.status IN ('completed', 'failed') THEN
        kind := 'sync.' || NEW.status;
    ELSE
        -- Back to queued for a retry: not an event (Mesa's `sync.queued`
        -- is the request's).
        RETURN NULL;
    END IF;
    SELECT id, org_id, name INTO r FROM repos WHERE id = NEW.repo_id;
    IF FOUND THEN
        PERFORM depot_record_event(kind, r.org_id, r.id, r.name, NEW.id, to_jsonb(NEW), NULL);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS syncs_event_insert ON syncs;
CREATE TRIGGER syncs_event_insert AFTER INSERT ON syncs
    FOR EACH ROW EXECUTE FUNCTION depot_sync_event();
DROP TRIGGER IF EXISTS syncs_event_status ON syncs;
CREATE TRIGGER syncs_event_status AFTER UPDATE OF status ON syncs
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION depot_sync_event();

CREATE OR REPLACE FUNCTION depot_repo_event() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM depot_record_event('repo.created', NEW.org_id, NEW.id, NEW.name, NEW.id, to_jsonb(NEW), NULL);
    ELSIF TG_OP = 'UPDATE' THEN
        PERFORM depot_record_event('repo.updated', NEW.org_id, NEW.id, NEW.name, NEW.id, to_jsonb(NEW), to_jsonb(OLD));
    ELSE
        PERFORM depot_record_event('repo.deleted', OLD.org_id, OLD.id, OLD.name, OLD.id, to_jsonb(OLD), NULL);
    END IF;
    RETURN NULL;
END;
$$;

DROP TRIGGER IF EXISTS repos_event_insert ON repos;
CREATE TRIGGER repos_event_insert AFTER INSERT ON repos
    FOR EACH ROW EXECUTE FUNCTION depot_repo_event();
DROP TRIGGER IF EXISTS repos_event_update ON repos;
CREATE TRIGGER repos_event_update AFTER UPDATE OF name, default_bookmark, tags ON repos
    FOR EACH ROW WHEN ((OLD.name, OLD.default_bookmark, OLD.tags)
                       IS DISTINCT FROM (NEW.name, NEW.default_bookmark, NEW.tags))
    EXECUTE FUNCTION depot_repo_event();
DROP TRIGGER IF EXISTS repos_event_delete ON repos;
CREATE TRIGGER repos_event_delete AFTER DELETE ON repos
    FOR EACH ROW EXECUTE FUNCTION depot_repo_event();
