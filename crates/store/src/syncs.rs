//! Sync records and their state machine. Every write a worker makes after its
//! claim is fenced on `(id, attempt, status = 'in_progress')`: a worker whose
//! lease was taken away (it was presumed dead) cannot overwrite the newer
//! run's outcome.

use crate::{GenericClient, Result, StoreError, corrupt};
use chrono::{DateTime, Utc};
use depot_domain::{Direction, FailureCode, RefGlobs, Stats, SyncStatus};
use serde::Serialize;
use serde_json::value::RawValue;
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct SyncRecord {
    pub id: String,
    pub repo_id: String,
    pub seq: i64,
    pub direction: Direction,
    pub status: SyncStatus,
    pub attempt: i32,
    pub ref_globs: RefGlobs,
    /// The stored JSON text as is (validated, never parsed into a tree):
    /// up to `upstream.max_refs` entries, sent on every read of the sync.
    /// `None` also when [`latest_for`] left a large one to
    /// [`stats_of`] (`stats_deferred`).
    pub stats: Option<Box<RawValue>>,
    /// [`latest_for`] found stats larger than [`INLINE_STATS_BYTES`] and left
    /// them out: read them with [`stats_of`] when they are needed.
    pub stats_deferred: bool,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// The error of the latest attempt that failed transiently and was
    /// retried (`error` itself is only set on `failed`). Kept through later
    /// attempts and the final status.
    pub last_attempt_error: Option<String>,
    /// While queued after a retry: not run before this time.
    pub not_before: Option<DateTime<Utc>>,
}

const COLUMNS: &str =
    "s.id, s.repo_id, s.seq, s.direction, s.status, s.attempt, s.branches_glob, s.tags_glob,
     s.stats::text AS stats, s.error, s.created_at, s.started_at, s.finished_at, s.last_attempt_error,
     s.not_before";

fn from_row(row: &tokio_postgres::Row) -> Result<SyncRecord> {
    let direction: &str = row.get("direction");
    let status: &str = row.get("status");
    let stats: Option<String> = row.get("stats");
    Ok(SyncRecord {
        id: row.get("id"),
        repo_id: row.get("repo_id"),
        seq: row.get("seq"),
        direction: direction.parse().map_err(corrupt)?,
        status: status.parse().map_err(corrupt)?,
        attempt: row.get("attempt"),
        ref_globs: RefGlobs {
            branches: row.get("branches_glob"),
            tags: row.get("tags_glob"),
        },
        stats: stats
            .map(RawValue::from_string)
            .transpose()
            .map_err(corrupt)?,
        stats_deferred: row.try_get("stats_deferred").unwrap_or(false),
        error: row.get("error"),
        created_at: row.get("created_at"),
        started_at: row.get("started_at"),
        finished_at: row.get("finished_at"),
        last_attempt_error: row.get("last_attempt_error"),
        not_before: row.get("not_before"),
    })
}

/// RFC 3339 UTC with millisecond precision (`2026-11-26T05:31:56.123Z`),
/// the API's time format.
pub fn time_text(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// [`time_text`] as a JSON value.
pub fn api_time(t: DateTime<Utc>) -> serde_json::Value {
    serde_json::Value::String(time_text(t))
}

#[derive(Serialize)]
struct Globs<'a> {
    branches: &'a str,
    tags: &'a str,
}

/// A sync as Mesa's API defines it, plus two extension fields (Mesa's
/// clients keep unknown fields: `mesa_rest` in `additional_properties`, the
/// SDK's webhook models ignore them). `error` and `started_at` stay null on a
/// queued sync, as Mesa's models require; what a retrying sync waits for is
/// in `last_attempt_error` and `next_attempt_at` instead. The one shape of
/// the gateway's answers and of webhook events' `data.sync`.
#[derive(Serialize)]
pub struct SyncView<'a> {
    attempt: i32,
    created_at: String,
    direction: Direction,
    error: Option<&'a str>,
    finished_at: Option<String>,
    id: &'a str,
    last_attempt_error: Option<&'a str>,
    next_attempt_at: Option<String>,
    ref_globs: Globs<'a>,
    repo_id: &'a str,
    started_at: Option<String>,
    stats: Option<&'a RawValue>,
    status: SyncStatus,
}

impl<'a> SyncView<'a> {
    /// The view of `s`, with `stats` when given (for a record whose stats
    /// were read separately), else the record's own.
    pub fn of(s: &'a SyncRecord, stats: Option<&'a RawValue>) -> SyncView<'a> {
        let next_attempt_at = match s.status {
            SyncStatus::Queued => s.not_before,
            _ => None,
        };
        SyncView {
            attempt: s.attempt,
            created_at: time_text(s.created_at),
            direction: s.direction,
            error: s.error.as_deref(),
            finished_at: s.finished_at.map(time_text),
            id: &s.id,
            last_attempt_error: s.last_attempt_error.as_deref(),
            next_attempt_at: next_attempt_at.map(time_text),
            ref_globs: Globs {
                branches: &s.ref_globs.branches,
                tags: &s.ref_globs.tags,
            },
            repo_id: &s.repo_id,
            started_at: s.started_at.map(time_text),
            stats: stats.or(s.stats.as_deref()),
            status: s.status,
        }
    }
}

/// [`SyncView`] as a JSON value (webhook events; the gateway sends the view
/// itself).
pub fn api_json(s: &SyncRecord) -> serde_json::Value {
    serde_json::to_value(SyncView::of(s, None)).unwrap_or(serde_json::Value::Null)
}

fn rows(rows: Vec<tokio_postgres::Row>) -> Result<Vec<SyncRecord>> {
    rows.iter().map(from_row).collect()
}

// Made once per POST and matched at once: boxing the record would only add
// an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Enqueued {
    Created(SyncRecord),
    /// A sync with the same direction and globs is still queued.
    AlreadyQueued(String),
}

/// The oldest queued sync equal to a new one (repo, direction, globs), by
/// `syncs_queued_identity` (migrations/V3): public for the test that keeps
/// its plan an index lookup whatever the backlog (tests/query_plans.rs).
pub const QUEUED_TWIN: &str = "SELECT id FROM syncs WHERE repo_id = $1 AND direction = $2 \
     AND branches_glob = $3 AND tags_glob = $4 AND status = 'queued' ORDER BY seq LIMIT 1";

/// Insert a queued sync unless an equal one is still queued. Run inside the
/// caller's transaction together with the outbox row.
pub async fn enqueue(
    client: &impl GenericClient,
    id: &str,
    repo_id: &str,
    direction: Direction,
    globs: &RefGlobs,
) -> Result<Enqueued> {
    let existing = client.prepare_cached(QUEUED_TWIN).await?;
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
        [&repo_id, &direction.as_str(), &globs.branches, &globs.tags];
    if let Some(row) = client.query_opt(&existing, &args).await? {
        return Ok(Enqueued::AlreadyQueued(row.get(0)));
    }
    let insert = client
        .prepare_cached(&format!(
            "INSERT INTO syncs AS s (id, repo_id, direction, branches_glob, tags_glob)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (repo_id, direction, branches_glob, tags_glob)
                 WHERE status = 'queued' AND attempt = 0 DO NOTHING
             RETURNING {COLUMNS}"
        ))
        .await?;
    match client
        .query_opt(
            &insert,
            &[
                &id,
                &repo_id,
                &direction.as_str(),
                &globs.branches,
                &globs.tags,
            ],
        )
        .await?
    {
        Some(row) => Ok(Enqueued::Created(from_row(&row)?)),
        // A concurrent request inserted the same sync between our check and
        // our insert; the unique index settled it. Name the winner.
        None => match client.query_opt(&existing, &args).await? {
            Some(row) => Ok(Enqueued::AlreadyQueued(row.get(0))),
            None => Err(corrupt("queued sync vanished during enqueue")),
        },
    }
}

/// What [`create_queued`] did.
// Made once per POST and matched at once, as [`Enqueued`].
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Created {
    /// The sync and its outbox row are written (commit pending when the
    /// caller's client is a transaction).
    Created { sync: SyncRecord, outbox_id: i64 },
    /// A sync with the same direction and globs is still queued: its id.
    AlreadyQueued(String),
    /// No repository of that name in the org (or it was deleted meanwhile).
    RepoGone,
    /// The repository has no upstream to sync with.
    UpstreamNotConfigured,
}

/// The job message's protobuf field 2 (`repo_id`, a length-delimited
/// string): key byte 0x12, the length as a varint (one byte below 128, two
/// below 16384, far above any id), then the bytes. Protobuf decoders merge
/// concatenated encodings, so the caller's encoding of the rest of the job
/// followed by this is the whole job: the repo id is known only inside the
/// statement that finds the repository.
const REPO_ID_FIELD: &str = "'\\x12'::bytea
    || CASE WHEN octet_length(ins.repo_id) < 128
            THEN set_byte('\\x00'::bytea, 0, octet_length(ins.repo_id))
            ELSE set_byte(set_byte('\\x0000'::bytea, 0, (octet_length(ins.repo_id) & 127) | 128),
                          1, octet_length(ins.repo_id) >> 7) END
    || convert_to(ins.repo_id, 'UTF8')";

/// The text of [`create_queued`]'s statement (its plan is checked in
/// crates/store/tests/query_plans.rs).
pub fn create_queued_sql() -> String {
    format!(
        "WITH r AS (
                 SELECT r.id, u.repo_id IS NOT NULL AS has_upstream
                 FROM repos r LEFT JOIN upstreams u ON u.repo_id = r.id
                 WHERE r.org_id = $1 AND r.name = $2),
             twin AS (
                 SELECT s.id FROM syncs s
                 WHERE s.repo_id = (SELECT id FROM r)
                   AND s.direction = $4 AND s.branches_glob = $5 AND s.tags_glob = $6
                   AND s.status = 'queued'
                 ORDER BY s.seq LIMIT 1),
             ins AS (
                 INSERT INTO syncs AS s (id, repo_id, direction, branches_glob, tags_glob)
                 SELECT $3, r.id, $4, $5, $6 FROM r
                 WHERE r.has_upstream AND NOT EXISTS (SELECT 1 FROM twin)
                 ON CONFLICT (repo_id, direction, branches_glob, tags_glob)
                     WHERE status = 'queued' AND attempt = 0 DO NOTHING
                 RETURNING {COLUMNS}),
             ob AS (
                 INSERT INTO outbox (sync_id, payload)
                 SELECT ins.id, $7::bytea || {REPO_ID_FIELD} FROM ins
                 RETURNING id)
             SELECT r.has_upstream, (SELECT id FROM twin) AS twin, (SELECT id FROM ob) AS outbox_id,
                    ins.*
             FROM r LEFT JOIN ins ON true"
    )
}

/// The whole of a POST's domain work in one statement (one round trip):
/// find the repository by name, check its upstream, look for a queued twin
/// (`syncs_queued_identity`), insert the sync, and insert its outbox row
/// whose payload is `job_without_repo` completed with the repository's id
/// (see [`REPO_ID_FIELD`]). Atomic by itself; inside the caller's
/// transaction when it has more to write (idempotency).
///
/// The twin lookup takes the repository id as a scalar subquery, not as a
/// join: a pooled connection keeps its generic plan for good (nothing
/// re-plans it while the table is not re-analyzed), and a join planned
/// while `syncs` was small was ordered syncs-first, probing
/// `syncs_queued_identity` without its leading `repo_id` column, a scan
/// of the whole queued backlog per POST (issue 14, docs/benchmarks.md).
/// As a parameter of the scan, `repo_id` is always part of its index
/// condition.
pub async fn create_queued(
    client: &impl GenericClient,
    org_id: &str,
    repo_name: &str,
    id: &str,
    direction: Direction,
    globs: &RefGlobs,
    job_without_repo: &[u8],
) -> Result<Created> {
    let stmt = client.prepare_cached(&create_queued_sql()).await?;
    let args: [&(dyn tokio_postgres::types::ToSql + Sync); 7] = [
        &org_id,
        &repo_name,
        &id,
        &direction.as_str(),
        &globs.branches,
        &globs.tags,
        &job_without_repo,
    ];
    // A concurrent request inserting the same sync makes our insert do
    // nothing while our snapshot cannot see its row yet: asking again sees
    // it. Twice more is plenty; the unique index settles every race.
    for _ in 0..3 {
        let row = match client.query_opt(&stmt, &args).await {
            Ok(row) => row,
            // The repository was deleted between our lookup and the insert.
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
                return Ok(Created::RepoGone);
            }
            Err(e) => return Err(e.into()),
        };
        let Some(row) = row else {
            return Ok(Created::RepoGone);
        };
        if !row.get::<_, bool>("has_upstream") {
            return Ok(Created::UpstreamNotConfigured);
        }
        if let Some(twin) = row.get::<_, Option<String>>("twin") {
            return Ok(Created::AlreadyQueued(twin));
        }
        if let Some(outbox_id) = row.get::<_, Option<i64>>("outbox_id") {
            return Ok(Created::Created {
                sync: from_row(&row)?,
                outbox_id,
            });
        }
    }
    Err(corrupt("queued sync vanished during enqueue"))
}

/// What a status poll finds for `(org, repo name, sync id)`.
#[derive(Debug)]
pub enum Lookup {
    NoRepo,
    NoSync,
    Found(Box<SyncRecord>),
}

/// A sync by its repo's name, in one statement: the status poll is the
/// dominant load, and resolving the repo first would cost a second round
/// trip. The LEFT JOIN still tells a missing repo from a missing sync.
pub async fn in_repo(
    client: &impl GenericClient,
    org_id: &str,
    repo_name: &str,
    sync_id: &str,
) -> Result<Lookup> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM repos r LEFT JOIN syncs s ON s.repo_id = r.id AND s.id = $3
             WHERE r.org_id = $1 AND r.name = $2"
        ))
        .await?;
    let Some(row) = client
        .query_opt(&stmt, &[&org_id, &repo_name, &sync_id])
        .await?
    else {
        return Ok(Lookup::NoRepo);
    };
    if row.get::<_, Option<&str>>("id").is_none() {
        return Ok(Lookup::NoSync);
    }
    Ok(Lookup::Found(Box::new(from_row(&row)?)))
}

pub async fn by_id(client: &impl GenericClient, sync_id: &str) -> Result<Option<SyncRecord>> {
    let stmt = client
        .prepare_cached(&format!("SELECT {COLUMNS} FROM syncs s WHERE s.id = $1"))
        .await?;
    client
        .query_opt(&stmt, &[&sync_id])
        .await?
        .as_ref()
        .map(from_row)
        .transpose()
}

/// A page of a repo's syncs, newest first, older than `before_seq`.
pub async fn list(
    client: &impl GenericClient,
    repo_id: &str,
    before_seq: i64,
    limit: i64,
) -> Result<Vec<SyncRecord>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM syncs s WHERE s.repo_id = $1 AND s.seq < $2 ORDER BY s.seq DESC LIMIT $3"
        ))
        .await?;
    rows(
        client
            .query(&stmt, &[&repo_id, &before_seq, &limit])
            .await?,
    )
}

/// Stats at most this long (as JSON text) come inline with [`latest_for`];
/// longer ones are read one at a time with [`stats_of`], so that a page of
/// repositories whose latest syncs each list many refs holds at most one
/// such list in memory.
pub const INLINE_STATS_BYTES: i32 = 64 * 1024;

/// The newest sync of each given repo, stats longer than
/// [`INLINE_STATS_BYTES`] left out (`stats_deferred`).
pub async fn latest_for(
    client: &impl GenericClient,
    repo_ids: &[String],
) -> Result<Vec<SyncRecord>> {
    let columns = COLUMNS.replace(
        "s.stats::text AS stats",
        "CASE WHEN octet_length(s.stats::text) <= $2 THEN s.stats::text END AS stats,
         octet_length(s.stats::text) > $2 AS stats_deferred",
    );
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {columns} FROM unnest($1::text[]) AS r(id)
             CROSS JOIN LATERAL (SELECT * FROM syncs WHERE repo_id = r.id ORDER BY seq DESC LIMIT 1) s"
        ))
        .await?;
    rows(
        client
            .query(&stmt, &[&repo_ids, &INLINE_STATS_BYTES])
            .await?,
    )
}

/// A sync's stats as stored (for one [`latest_for`] deferred).
pub async fn stats_of(client: &impl GenericClient, sync_id: &str) -> Result<Option<Box<RawValue>>> {
    let stmt = client
        .prepare_cached("SELECT stats::text FROM syncs WHERE id = $1")
        .await?;
    let Some(row) = client.query_opt(&stmt, &[&sync_id]).await? else {
        return Ok(None);
    };
    row.get::<_, Option<String>>(0)
        .map(RawValue::from_string)
        .transpose()
        .map_err(corrupt)
}

/// What a worker needs to run a claimed sync.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub sync: SyncRecord,
    pub org_id: String,
    pub default_bookmark: String,
    pub upstream: Option<crate::repos::Upstream>,
}

#[derive(Debug)]
pub enum Claim {
    /// `queued → in_progress` done; `sync.attempt` is the fencing token.
    Claimed(Box<Claimed>),
    /// Another sync of the same repository is running, or the org already
    /// runs as many syncs as it may.
    Busy,
    /// Queued, but backing off until then.
    NotYet(DateTime<Utc>),
    /// Not queued (a duplicate or stale message), or gone.
    Gone,
}

/// Claim a queued sync for a run: one run per repository at a time (the
/// repository row is locked while checking), attempt + 1, a lease.
pub async fn claim(
    client: &mut deadpool_postgres::Client,
    sync_id: &str,
    lease: Duration,
    max_runs_per_org: Option<i64>,
) -> Result<Claim> {
    claim_within(client, sync_id, lease, max_runs_per_org, None).await
}

/// [`claim`], waiting at most `lock_wait` for the repository's and the
/// org's row locks (`SET LOCAL lock_timeout`, else the session's). A claim
/// that cannot get them in time is [`Claim::Busy`]: whoever holds them is
/// claiming or changing that repository or org, and the job is better
/// deferred than left holding a worker's permit behind them.
pub async fn claim_within(
    client: &mut deadpool_postgres::Client,
    sync_id: &str,
    lease: Duration,
    max_runs_per_org: Option<i64>,
    lock_wait: Option<Duration>,
) -> Result<Claim> {
    match claim_tx(client, sync_id, lease, max_runs_per_org, lock_wait).await {
        // The transaction rolled back when it was dropped; nothing changed.
        Err(e) if e.sql_state() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) => {
            Ok(Claim::Busy)
        }
        other => other,
    }
}

async fn claim_tx(
    client: &mut deadpool_postgres::Client,
    sync_id: &str,
    lease: Duration,
    max_runs_per_org: Option<i64>,
    lock_wait: Option<Duration>,
) -> Result<Claim> {
    let tx = client.transaction().await?;
    if let Some(wait) = lock_wait {
        // SET takes no parameters; the value is a number we format.
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = {}",
            wait.as_millis().max(1)
        ))
        .await?;
    }
    let head = tx
        .prepare_cached(
            "SELECT s.repo_id, s.status, s.not_before, now() AS now FROM syncs s WHERE s.id = $1",
        )
        .await?;
    let Some(row) = tx.query_opt(&head, &[&sync_id]).await? else {
        return Ok(Claim::Gone);
    };
    let repo_id: String = row.get(0);
    let status: &str = row.get(1);
    if status != "queued" {
        return Ok(Claim::Gone);
    }
    let not_before: Option<DateTime<Utc>> = row.get(2);
    let now: DateTime<Utc> = row.get(3);
    if let Some(t) = not_before.filter(|t| *t > now) {
        return Ok(Claim::NotYet(t));
    }
    // Lock the repository row first, and only then look for a running sync
    // in a *separate* statement: under READ COMMITTED a statement's snapshot
    // is taken before it waits for a row lock, so an EXISTS in the locking
    // statement itself would not see the run a concurrent claimer has just
    // committed, and both would claim.
    let lock = tx
        .prepare_cached(
            "SELECT r.org_id, r.default_bookmark FROM repos r WHERE r.id = $1 FOR NO KEY UPDATE",
        )
        .await?;
    let Some(repo) = tx.query_opt(&lock, &[&repo_id]).await? else {
        return Ok(Claim::Gone);
    };
    let running = tx
        .prepare_cached(
            // Housekeeping of the repository's git data holds the same
            // one-run-per-repository lock (crate::housekeeping).
            "SELECT (SELECT status FROM syncs WHERE id = $2),
                    EXISTS (SELECT 1 FROM syncs WHERE repo_id = $1 AND status = 'in_progress')
                    OR EXISTS (SELECT 1 FROM repos WHERE id = $1 AND housekeeping_until > now())",
        )
        .await?;
    let now = tx.query_one(&running, &[&repo_id, &sync_id]).await?;
    // A duplicate delivery of the same job that waited for the lock finds
    // its sync already claimed: drop it rather than deferring it.
    if now.get::<_, Option<&str>>(0) != Some("queued") {
        return Ok(Claim::Gone);
    }
    if now.get::<_, bool>(1) {
        return Ok(Claim::Busy);
    }
    if let Some(max) = max_runs_per_org {
        // Same pattern one level up: lock the org row (after the repo row,
        // the one lock order every claimer follows), then count, so two
        // claims in one org cannot both take the last slot.
        let org_id: String = repo.get(0);
        let lock_org = tx
            // NO KEY UPDATE: serialises claimers without blocking the key
            // share locks that inserts referencing the org take.
            .prepare_cached("SELECT 1 FROM orgs WHERE id = $1 FOR NO KEY UPDATE")
            .await?;
        tx.query_opt(&lock_org, &[&org_id]).await?;
        let count = tx
            .prepare_cached(
                // Start from the few running syncs (partial index on
                // in_progress), not from the org's whole sync history.
                "WITH running AS MATERIALIZED (
                     SELECT repo_id FROM syncs WHERE status = 'in_progress')
                 SELECT count(*) FROM running JOIN repos r ON r.id = running.repo_id
                 WHERE r.org_id = $1",
            )
            .await?;
        let running: i64 = tx.query_one(&count, &[&org_id]).await?.get(0);
        if running >= max {
            return Ok(Claim::Busy);
        }
    }
    // `statement_timestamp()`, not `now()`: `now()` is this transaction's
    // start, which can precede the commit of the run this claim waited
    // for (the repository lock above), so `started_at` would fall before
    // that run's `finished_at` and the API would show two runs of one
    // repository overlapping when they never did.
    let update = tx
        .prepare_cached(&format!(
            "UPDATE syncs s SET status = 'in_progress', attempt = attempt + 1,
                    started_at = statement_timestamp(),
                    lease_until = statement_timestamp() + make_interval(secs => $2), not_before = NULL,
                    error = NULL, stats = NULL, updated_at = now()
             WHERE s.id = $1 AND s.status = 'queued'
             RETURNING {COLUMNS}"
        ))
        .await?;
    let Some(updated) = tx
        .query_opt(&update, &[&sync_id, &(lease.as_secs_f64())])
        .await?
    else {
        return Ok(Claim::Gone);
    };
    let sync = from_row(&updated)?;
    let upstream = crate::repos::by_id(&tx, &repo_id)
        .await?
        .and_then(|r| r.upstream);
    tx.commit().await?;
    Ok(Claim::Claimed(Box::new(Claimed {
        sync,
        org_id: repo.get(0),
        default_bookmark: repo.get(1),
        upstream,
    })))
}

/// Extend a running sync's lease; false when the run no longer owns it.
pub async fn heartbeat(
    client: &impl GenericClient,
    sync_id: &str,
    attempt: i32,
    lease: Duration,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE syncs SET lease_until = now() + make_interval(secs => $3), updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&sync_id, &attempt, &(lease.as_secs_f64())])
        .await?
        == 1)
}

/// End a run: `completed` with stats, or `failed` with an error (and stats
/// when the run got that far). False when the run no longer owns the sync.
pub async fn finish(
    client: &impl GenericClient,
    sync_id: &str,
    attempt: i32,
    status: SyncStatus,
    stats: Option<&Stats>,
    error: Option<&str>,
) -> Result<bool> {
    if !status.is_terminal() {
        return Err(corrupt(format!("finish with non-terminal status {status}")));
    }
    let stats = stats
        .map(serde_json::to_value)
        .transpose()
        .map_err(corrupt)?;
    let stmt = client
        .prepare_cached(
            "UPDATE syncs SET status = $3, stats = $4, error = $5, finished_at = now(),
                    lease_until = NULL, updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        )
        .await?;
    Ok(client
        .execute(
            &stmt,
            &[&sync_id, &attempt, &status.as_str(), &stats, &error],
        )
        .await?
        == 1)
}

/// Put a run back to `queued` (shutdown, lost upstream), not to be run
/// before `delay` from now. The attempt count stays: it counts runs started.
/// `last_attempt_error` is left as it was: a release is not a failure.
pub async fn requeue(
    client: &impl GenericClient,
    sync_id: &str,
    attempt: i32,
    delay: Duration,
) -> Result<bool> {
    requeue_with(client, sync_id, attempt, delay, None).await
}

/// Put a run that failed transiently back to `queued` for its next attempt,
/// keeping its error visible as `last_attempt_error` while it waits.
pub async fn retry(
    client: &impl GenericClient,
    sync_id: &str,
    attempt: i32,
    delay: Duration,
    error: &str,
) -> Result<bool> {
    requeue_with(client, sync_id, attempt, delay, Some(error)).await
}

async fn requeue_with(
    client: &impl GenericClient,
    sync_id: &str,
    attempt: i32,
    delay: Duration,
    error: Option<&str>,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE syncs SET status = 'queued', started_at = NULL, lease_until = NULL,
                    not_before = now() + make_interval(secs => $3), published_at = now(),
                    last_attempt_error = coalesce($4, last_attempt_error), updated_at = now()
             WHERE id = $1 AND attempt = $2 AND status = 'in_progress'",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&sync_id, &attempt, &delay.as_secs_f64(), &error])
        .await?
        == 1)
}

/// A job message for this queued sync was just (re)published, e.g. deferred
/// because its repository was busy: the lost-message relay need not publish
/// another one for a while.
pub async fn touch_published(client: &impl GenericClient, sync_id: &str) -> Result<()> {
    let stmt = client
        .prepare_cached("UPDATE syncs SET published_at = now() WHERE id = $1 AND status = 'queued'")
        .await?;
    client.execute(&stmt, &[&sync_id]).await?;
    Ok(())
}

/// A sync the sweeper changed.
#[derive(Debug, Clone)]
pub struct Swept {
    pub id: String,
    pub repo_id: String,
    pub attempt: i32,
    pub status: SyncStatus,
}

/// Runs whose lease ran out (their worker died or hung): back to `queued`, or
/// `failed` once `max_attempts` runs have started.
pub async fn sweep_expired_leases(
    client: &impl GenericClient,
    max_attempts: i32,
    limit: i64,
) -> Result<Vec<Swept>> {
    let worker_lost = FailureCode::WorkerLost
        .with("the run stopped reporting progress")
        .to_string();
    let stmt = client
        .prepare_cached(
            "WITH expired AS (
                 SELECT id FROM syncs WHERE status = 'in_progress' AND lease_until < now()
                 ORDER BY lease_until LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE syncs s SET
                 status = CASE WHEN s.attempt >= $1 THEN 'failed' ELSE 'queued' END,
                 error = CASE WHEN s.attempt >= $1 THEN $3 END,
                 finished_at = CASE WHEN s.attempt >= $1 THEN now() END,
                 started_at = CASE WHEN s.attempt >= $1 THEN s.started_at END,
                 last_attempt_error = CASE WHEN s.attempt >= $1 THEN s.last_attempt_error
                     ELSE $3 END,
                 lease_until = NULL, not_before = NULL, published_at = now(), updated_at = now()
             FROM expired WHERE s.id = expired.id
             RETURNING s.id, s.repo_id, s.attempt, s.status",
        )
        .await?;
    client
        .query(&stmt, &[&max_attempts, &limit, &worker_lost])
        .await?
        .iter()
        .map(|r| {
            let status: &str = r.get(3);
            Ok(Swept {
                id: r.get(0),
                repo_id: r.get(1),
                attempt: r.get(2),
                status: status.parse().map_err(corrupt)?,
            })
        })
        .collect()
}

/// Queued syncs whose message seems lost: due, and not published for
/// `older_than`, those published longest ago first. Marks them published
/// now; the caller publishes them.
/// `SKIP LOCKED` lets any number of relays run this concurrently.
pub async fn take_stale_queued(
    client: &impl GenericClient,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<(String, String, i32)>> {
    let stmt = client
        .prepare_cached(
            "WITH stale AS (
                 SELECT id FROM syncs
                 WHERE status = 'queued'
                   AND coalesce(published_at, created_at) < now() - make_interval(secs => $1)
                   AND coalesce(not_before, now()) <= now()
                 ORDER BY coalesce(published_at, created_at) LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE syncs s SET published_at = now() FROM stale WHERE s.id = stale.id
             RETURNING s.id, s.repo_id, s.attempt",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&older_than.as_secs_f64(), &limit])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// Take the lost-message pass for this transaction, unless another relay
/// has it: the pass compares deployment-wide counts, and two relays acting
/// on the same shortfall would publish it twice.
pub async fn lead_republish(client: &impl GenericClient) -> Result<bool> {
    let stmt = client
        .prepare_cached("SELECT pg_try_advisory_xact_lock(hashtext('depot.lost_message_pass'))")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Queued syncs whose job message should be waiting in the jobs queue now:
/// due, and neither published nor due within `settle` (a message
/// published that recently may still sit in a delay queue, e.g. a job
/// deferred because its repository was busy).
pub async fn count_expecting_message(client: &impl GenericClient, settle: Duration) -> Result<i64> {
    let stmt = client
        .prepare_cached(
            "SELECT count(*) FROM syncs
             WHERE status = 'queued'
               AND coalesce(published_at, created_at) < now() - make_interval(secs => $1)
               AND coalesce(not_before, '-infinity') < now() - make_interval(secs => $1)",
        )
        .await?;
    Ok(client
        .query_one(&stmt, &[&settle.as_secs_f64()])
        .await?
        .get(0))
}

/// Sync history retention: delete up to `limit` terminal syncs that are
/// both outside their repository's newest `keep_newest` and finished more
/// than `older_than` ago, oldest first; returns how many. A queued or
/// running sync is never deleted, nor a repository's newest sync (its
/// `latest_sync`): `keep_newest` is at least 1. `SKIP LOCKED` lets several
/// workers run this at once. The outbox rows of a deleted sync go with it
/// (`ON DELETE CASCADE`).
pub async fn delete_expired(
    client: &impl GenericClient,
    keep_newest: u32,
    older_than: Duration,
    limit: i64,
) -> Result<u64> {
    // `syncs_terminal_finished` (migrations/V6) yields the oldest candidates;
    // the newest-N bound is one index lookup per candidate (`syncs_repo_newest`):
    // the seq of the repository's N-th newest sync, NULL (nothing deleted)
    // when it has fewer.
    let stmt = client
        .prepare_cached(
            "WITH doomed AS (
                 SELECT s.id FROM syncs s
                 WHERE s.status IN ('completed', 'failed')
                   AND s.finished_at < now() - make_interval(secs => $2)
                   AND s.seq < (SELECT k.seq FROM syncs k WHERE k.repo_id = s.repo_id
                                ORDER BY k.seq DESC OFFSET $1 LIMIT 1)
                 ORDER BY s.finished_at LIMIT $3
                 FOR UPDATE OF s SKIP LOCKED)
             DELETE FROM syncs s USING doomed
             WHERE s.id = doomed.id AND s.status IN ('completed', 'failed')",
        )
        .await?;
    let offset = i64::from(keep_newest.max(1)) - 1;
    Ok(client
        .execute(&stmt, &[&offset, &older_than.as_secs_f64(), &limit])
        .await?)
}

/// Counts by status, for metrics and tests.
pub async fn count_by_status(client: &impl GenericClient) -> Result<Vec<(String, i64)>> {
    let stmt = client
        .prepare_cached("SELECT status, count(*) FROM syncs GROUP BY status ORDER BY status")
        .await?;
    Ok(client
        .query(&stmt, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

impl From<chrono::OutOfRangeError> for StoreError {
    fn from(e: chrono::OutOfRangeError) -> Self {
        corrupt(e)
    }
}
