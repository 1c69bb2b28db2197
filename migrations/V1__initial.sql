-- Depot's schema. Postgres is the source of truth for every sync; RabbitMQ
-- only carries hints ("look at sync X now").

CREATE TABLE orgs (
    id          text PRIMARY KEY,
    slug        text NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- API keys are stored only as a SHA-256 hash; the key itself is shown once.
CREATE TABLE api_keys (
    id          text PRIMARY KEY,
    org_id      text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name        text NOT NULL DEFAULT '',
    key_hash    bytea NOT NULL UNIQUE,
    scopes      text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX api_keys_org ON api_keys (org_id);

CREATE TABLE repos (
    id                text PRIMARY KEY,
    org_id            text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    -- `seq` orders the repo list for cursor pagination.
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name              text NOT NULL,
    default_bookmark  text NOT NULL DEFAULT 'main',
    -- Tip commit of the default branch, written by the worker after a run,
    -- so the gateway never touches git storage.
    head_commit       text,
    tags              jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at        timestamptz NOT NULL DEFAULT now(),
    UNIQUE (org_id, name)
);

CREATE TABLE upstreams (
    repo_id      text PRIMARY KEY REFERENCES repos (id) ON DELETE CASCADE,
    url          text NOT NULL,
    auth_kind    text CHECK (auth_kind IN ('token', 'username_password')),
    -- AES-256-GCM, repo id as associated data (crates/secrets).
    credential   bytea,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((auth_kind IS NULL) = (credential IS NULL))
);

CREATE TABLE syncs (
    id             text PRIMARY KEY,
    repo_id        text NOT NULL REFERENCES repos (id) ON DELETE CASCADE,
    seq            bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    direction      text NOT NULL CHECK (direction IN ('pull', 'push')),
    status         text NOT NULL DEFAULT 'queued'
                   CHECK (status IN ('queued', 'in_progress', 'completed', 'failed')),
    attempt        integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    branches_glob  text NOT NULL,
    tags_glob      text NOT NULL,
    stats          jsonb,
    error          text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    finished_at    timestamptz,
    -- While in_progress: the run's lease; a sweeper re-queues expired ones.
    lease_until    timestamptz,
    -- While queued after a failure: not to be run before this time.
    not_before     timestamptz,
    -- Last time a job message was published for this sync (relay bookkeeping).
    published_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (status <> 'in_progress' OR lease_until IS NOT NULL),
    CHECK ((status IN ('completed', 'failed')) = (finished_at IS NOT NULL))
);
CREATE INDEX syncs_repo_newest ON syncs (repo_id, seq DESC);
CREATE INDEX syncs_queued ON syncs (updated_at) WHERE status = 'queued';
CREATE INDEX syncs_leases ON syncs (lease_until) WHERE status = 'in_progress';
-- SYNC_ALREADY_QUEUED, enforced by the database so two concurrent requests
-- cannot both enqueue the same sync. Retried syncs (attempt > 0) returning to
-- `queued` are outside the index, so a retry never collides with a newer
-- request; the gateway still reports them as already queued.
CREATE UNIQUE INDEX syncs_one_fresh_queued
    ON syncs (repo_id, direction, branches_glob, tags_glob)
    WHERE status = 'queued' AND attempt = 0;

-- Transactional outbox: written with the sync, in the same transaction, and
-- marked once the broker confirmed the message. The relay publishes rows the
-- gateway could not.
CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sync_id       text NOT NULL REFERENCES syncs (id) ON DELETE CASCADE,
    payload       bytea NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz
);
CREATE INDEX outbox_pending ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE idempotency_keys (
    org_id        text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    key           text NOT NULL,
    request_hash  bytea NOT NULL,
    status_code   integer,
    response      jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, key)
);
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);

-- Repositories deleted through the API whose git data a worker still has to
-- remove from storage (the gateway never touches git storage).
CREATE TABLE repo_deletions (
    repo_id     text PRIMARY KEY,
    org_id      text NOT NULL,
    deleted_at  timestamptz NOT NULL DEFAULT now()
);
