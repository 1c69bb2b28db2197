//! Webhook targets, their events and deliveries (migrations/V7).
//!
//! Invariants:
//! - events and their deliveries are written only by the triggers of V7, in
//!   the transaction of the change they report; nothing here creates one;
//! - a delivery is sent only while it is `pending`, due, unleased, and no
//!   earlier delivery with the same target and order key is still
//!   `pending` ([`claim`]): the events of one sync reach a target in order,
//!   one at a time, even across retries;
//! - every write after a claim is fenced on the attempt the claim returned,
//!   so a worker presumed dead cannot overwrite a newer attempt's outcome.

use crate::{GenericClient, Result, corrupt};
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::time::Duration;

/// The events this service emits (Mesa's names).
pub const EVENTS: &[&str] = &[
    "sync.queued",
    "sync.in_progress",
    "sync.completed",
    "sync.failed",
    "repo.created",
    "repo.updated",
    "repo.deleted",
];

#[derive(Clone)]
pub struct Target {
    pub id: String,
    pub org_id: String,
    pub seq: i64,
    pub name: Option<String>,
    pub url: String,
    pub events: Vec<String>,
    pub repo_ids: Option<Vec<String>>,
    /// Sealed (crates/secrets); never rendered.
    pub secret: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("id", &self.id)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

const TARGET_COLUMNS: &str =
    "id, org_id, seq, name, url, events, repo_ids, secret, created_at, updated_at";

fn target_from_row(row: &tokio_postgres::Row) -> Target {
    Target {
        id: row.get("id"),
        org_id: row.get("org_id"),
        seq: row.get("seq"),
        name: row.get("name"),
        url: row.get("url"),
        events: row.get("events"),
        repo_ids: row.get("repo_ids"),
        secret: row.get("secret"),
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    }
}

pub struct NewTarget<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub name: Option<&'a str>,
    pub url: &'a str,
    pub events: &'a [String],
    pub repo_ids: Option<&'a [String]>,
    pub secret: &'a [u8],
}

pub async fn insert_target(client: &impl GenericClient, t: &NewTarget<'_>) -> Result<Target> {
    let stmt = client
        .prepare_cached(&format!(
            "INSERT INTO webhook_targets (id, org_id, name, url, events, repo_ids, secret)
             VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {TARGET_COLUMNS}"
        ))
        .await?;
    let row = client
        .query_one(
            &stmt,
            &[
                &t.id,
                &t.org_id,
                &t.name,
                &t.url,
                &t.events,
                &t.repo_ids,
                &t.secret,
            ],
        )
        .await?;
    Ok(target_from_row(&row))
}

pub async fn target(client: &impl GenericClient, org_id: &str, id: &str) -> Result<Option<Target>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {TARGET_COLUMNS} FROM webhook_targets WHERE org_id = $1 AND id = $2"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&org_id, &id])
        .await?
        .as_ref()
        .map(target_from_row))
}

/// A page of an org's targets, oldest first, after `after_seq`.
pub async fn list_targets(
    client: &impl GenericClient,
    org_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Target>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {TARGET_COLUMNS} FROM webhook_targets WHERE org_id = $1 AND seq > $2
             ORDER BY seq LIMIT $3"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&org_id, &after_seq, &limit])
        .await?
        .iter()
        .map(target_from_row)
        .collect())
}

/// A PATCH: `None` leaves a field; `Some(None)` sets a nullable one to null.
#[derive(Default)]
pub struct TargetChanges<'a> {
    pub name: Option<Option<&'a str>>,
    pub url: Option<&'a str>,
    pub events: Option<&'a [String]>,
    pub repo_ids: Option<Option<&'a [String]>>,
}

pub async fn update_target(
    client: &impl GenericClient,
    org_id: &str,
    id: &str,
    c: &TargetChanges<'_>,
) -> Result<Option<Target>> {
    let stmt = client
        .prepare_cached(&format!(
            "UPDATE webhook_targets SET
                 name = CASE WHEN $3 THEN $4 ELSE name END,
                 url = coalesce($5, url),
                 events = coalesce($6, events),
                 repo_ids = CASE WHEN $7 THEN $8 ELSE repo_ids END,
                 updated_at = now()
             WHERE org_id = $1 AND id = $2 RETURNING {TARGET_COLUMNS}"
        ))
        .await?;
    let name = c.name.flatten();
    let repo_ids = c.repo_ids.flatten();
    Ok(client
        .query_opt(
            &stmt,
            &[
                &org_id,
                &id,
                &c.name.is_some(),
                &name,
                &c.url,
                &c.events,
                &c.repo_ids.is_some(),
                &repo_ids,
            ],
        )
        .await?
        .as_ref()
        .map(target_from_row))
}

/// Delete a target and, by cascade, its deliveries.
pub async fn delete_target(client: &impl GenericClient, org_id: &str, id: &str) -> Result<bool> {
    let stmt = client
        .prepare_cached("DELETE FROM webhook_targets WHERE org_id = $1 AND id = $2")
        .await?;
    Ok(client.execute(&stmt, &[&org_id, &id]).await? == 1)
}

/// Those of `ids` that are repositories of the org.
pub async fn existing_repo_ids(
    client: &impl GenericClient,
    org_id: &str,
    ids: &[String],
) -> Result<Vec<String>> {
    let stmt = client
        .prepare_cached("SELECT id FROM repos WHERE org_id = $1 AND id = ANY ($2)")
        .await?;
    Ok(client
        .query(&stmt, &[&org_id, &ids])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// A delivery as the delivery log shows it.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub seq: i64,
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub attempts: i32,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
}

const DELIVERY_COLUMNS: &str =
    "d.id, d.seq, d.event_id, e.type AS event_type, d.status, d.attempts,
     d.last_status_code, d.last_error, d.next_attempt_at, d.created_at";

fn delivery_from_row(row: &tokio_postgres::Row) -> Delivery {
    Delivery {
        id: row.get("id"),
        seq: row.get("seq"),
        event_id: row.get("event_id"),
        event_type: row.get("event_type"),
        status: row.get("status"),
        attempts: row.get("attempts"),
        last_status_code: row.get("last_status_code"),
        last_error: row.get("last_error"),
        next_attempt_at: row.get("next_attempt_at"),
        created_at: row.get("created_at"),
    }
}

/// A page of a target's deliveries, newest first, older than `before_seq`.
pub async fn list_deliveries(
    client: &impl GenericClient,
    target_id: &str,
    before_seq: i64,
    limit: i64,
) -> Result<Vec<Delivery>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries d
             JOIN webhook_events e ON e.id = d.event_id
             WHERE d.target_id = $1 AND d.seq < $2 ORDER BY d.seq DESC LIMIT $3"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&target_id, &before_seq, &limit])
        .await?
        .iter()
        .map(delivery_from_row)
        .collect())
}

/// Queue the event of delivery `id` (of `target_id`) to the target again:
/// a new delivery, with its outbox row, in one statement.
pub async fn redeliver(
    client: &impl GenericClient,
    target_id: &str,
    id: &str,
) -> Result<Option<Delivery>> {
    let stmt = client
        .prepare_cached(&format!(
            "WITH d AS (
                 INSERT INTO webhook_deliveries (id, target_id, event_id, order_key)
                 SELECT depot_new_id('whd'), old.target_id, old.event_id, old.order_key
                 FROM webhook_deliveries old WHERE old.id = $2 AND old.target_id = $1
                 RETURNING *),
             o AS (
                 INSERT INTO outbox (kind, delivery_id, payload)
                 SELECT 'webhook_delivery', d.id, depot_delivery_job(d.id) FROM d)
             SELECT {DELIVERY_COLUMNS} FROM d JOIN webhook_events e ON e.id = d.event_id"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&target_id, &id])
        .await?
        .as_ref()
        .map(delivery_from_row))
}

/// An event as recorded by the V7 triggers.
#[derive(Debug, Clone)]
pub struct Event {
    pub id: String,
    pub kind: String,
    pub org_id: String,
    pub org_slug: String,
    pub org_name: String,
    pub repo_id: Option<String>,
    pub repo_name: Option<String>,
    /// `to_jsonb` of the sync or repository row after the change (before
    /// it, for `repo.deleted`).
    pub subject: Value,
    /// The repository row before a `repo.updated`.
    pub before: Option<Value>,
    pub occurred_at: DateTime<Utc>,
}

/// A delivery claimed for one attempt.
#[derive(Clone)]
pub struct Claimed {
    pub delivery_id: String,
    pub target_id: String,
    /// The attempt this is (1 = first); the fencing token.
    pub attempt: i32,
    pub url: String,
    pub sealed_secret: Vec<u8>,
    pub event: Event,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("delivery_id", &self.delivery_id)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub enum Claim {
    Claimed(Box<Claimed>),
    /// Not to be sent now: not pending, not due, being sent, or behind an
    /// earlier pending delivery of its order key (which hands it on when
    /// done, see [`finish`]); the relay's pass picks it up when due.
    NotNow,
}

/// Claim delivery `id` for an attempt, leased for `lease`.
pub async fn claim(client: &impl GenericClient, id: &str, lease: Duration) -> Result<Claim> {
    let stmt = client
        .prepare_cached(
            "WITH c AS (
                 SELECT d.id FROM webhook_deliveries d
                 WHERE d.id = $1 AND d.status = 'pending' AND d.next_attempt_at <= now()
                   AND (d.lease_until IS NULL OR d.lease_until < now())
                   AND NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries p
                       WHERE p.target_id = d.target_id AND p.order_key = d.order_key
                         AND p.status = 'pending' AND p.seq < d.seq)
                 FOR UPDATE SKIP LOCKED),
             u AS (
                 UPDATE webhook_deliveries w SET attempts = w.attempts + 1,
                        lease_until = now() + make_interval(secs => $2)
                 FROM c WHERE w.id = c.id
                 RETURNING w.id, w.target_id, w.event_id, w.attempts)
             SELECT u.id, u.target_id, u.attempts, t.url, t.secret,
                    e.id AS event_id, e.type, e.org_id, e.org_slug, e.org_name, e.repo_id,
                    e.repo_name, e.subject, e.before, e.occurred_at
             FROM u JOIN webhook_targets t ON t.id = u.target_id
                    JOIN webhook_events e ON e.id = u.event_id",
        )
        .await?;
    let Some(row) = client
        .query_opt(&stmt, &[&id, &lease.as_secs_f64()])
        .await?
    else {
        return Ok(Claim::NotNow);
    };
    Ok(Claim::Claimed(Box::new(Claimed {
        delivery_id: row.get("id"),
        target_id: row.get("target_id"),
        attempt: row.get("attempts"),
        url: row.get("url"),
        sealed_secret: row.get("secret"),
        event: Event {
            id: row.get("event_id"),
            kind: row.get("type"),
            org_id: row.get("org_id"),
            org_slug: row.get("org_slug"),
            org_name: row.get("org_name"),
            repo_id: row.get("repo_id"),
            repo_name: row.get("repo_name"),
            subject: row.get("subject"),
            before: row.get("before"),
            occurred_at: row.get("occurred_at"),
        },
    })))
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// Try again after the delay.
    Retry(Duration),
    /// Attempts spent: failed for good.
    Failed,
}

/// Record attempt `attempt` of delivery `id`. Returns the next pending
/// delivery of the same target and order key when this one is done (to be
/// published now), `None` otherwise or when the attempt no longer owns it.
pub async fn finish(
    client: &impl GenericClient,
    id: &str,
    attempt: i32,
    outcome: Outcome,
    status_code: Option<i32>,
    error: Option<&str>,
) -> Result<Option<String>> {
    let (status, delay) = match outcome {
        Outcome::Succeeded => ("succeeded", 0.0),
        Outcome::Retry(d) => ("pending", d.as_secs_f64()),
        Outcome::Failed => ("failed", 0.0),
    };
    let stmt = client
        .prepare_cached(
            "WITH u AS (
                 UPDATE webhook_deliveries SET status = $3, last_status_code = $4,
                        last_error = $5, lease_until = NULL,
                        next_attempt_at = now() + make_interval(secs => $6),
                        finished_at = CASE WHEN $3 = 'pending' THEN NULL ELSE now() END
                 WHERE id = $1 AND attempts = $2 AND status = 'pending'
                 RETURNING target_id, order_key, seq, status)
             SELECT (SELECT n.id FROM webhook_deliveries n
                     WHERE n.target_id = u.target_id AND n.order_key = u.order_key
                       AND n.status = 'pending' AND n.seq > u.seq
                     ORDER BY n.seq LIMIT 1)
             FROM u WHERE u.status <> 'pending'",
        )
        .await?;
    let row = client
        .query_opt(
            &stmt,
            &[&id, &attempt, &status, &status_code, &error, &delay],
        )
        .await?;
    Ok(row.and_then(|r| r.get::<_, Option<String>>(0)))
}

/// Pending deliveries that are due, unleased, first in their order key and
/// not published for `settle`: retries whose backoff is over, and messages
/// lost or whose worker died. Marks them published; the caller publishes.
pub async fn take_due(
    client: &impl GenericClient,
    settle: Duration,
    limit: i64,
) -> Result<Vec<String>> {
    let stmt = client
        .prepare_cached(
            "WITH due AS (
                 SELECT d.id FROM webhook_deliveries d
                 WHERE d.status = 'pending' AND d.next_attempt_at <= now()
                   AND (d.lease_until IS NULL OR d.lease_until < now())
                   AND coalesce(d.published_at, d.created_at) < now() - make_interval(secs => $1)
                   AND NOT EXISTS (
                       SELECT 1 FROM webhook_deliveries p
                       WHERE p.target_id = d.target_id AND p.order_key = d.order_key
                         AND p.status = 'pending' AND p.seq < d.seq)
                 ORDER BY d.next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             UPDATE webhook_deliveries w SET published_at = now() FROM due WHERE w.id = due.id
             RETURNING w.id",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&settle.as_secs_f64(), &limit])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// Mark delivery `id` published now (its message was just sent).
pub async fn touch_published(client: &impl GenericClient, id: &str) -> Result<()> {
    let stmt = client
        .prepare_cached("UPDATE webhook_deliveries SET published_at = now() WHERE id = $1")
        .await?;
    client.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// Pending deliveries, for the lag gauge: the age of the oldest one.
pub async fn oldest_pending_age(client: &impl GenericClient) -> Result<Option<f64>> {
    let stmt = client
        .prepare_cached(
            "SELECT extract(epoch FROM now() - min(created_at))::float8
             FROM webhook_deliveries WHERE status = 'pending'",
        )
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Events (and, by cascade, their deliveries) older than `age` whose
/// deliveries are all done.
pub async fn prune(client: &impl GenericClient, age: Duration, limit: i64) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "WITH old AS (
                 SELECT e.id FROM webhook_events e
                 WHERE e.occurred_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d
                                   WHERE d.event_id = e.id AND d.status = 'pending')
                 ORDER BY e.occurred_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM webhook_events e USING old WHERE e.id = old.id",
        )
        .await?;
    Ok(client.execute(&stmt, &[&age.as_secs_f64(), &limit]).await?)
}

/// A sync row as `to_jsonb` recorded it in an event.
pub fn sync_from_snapshot(v: &Value) -> Result<crate::syncs::SyncRecord> {
    #[derive(serde::Deserialize)]
    struct Row {
        id: String,
        repo_id: String,
        seq: i64,
        direction: String,
        status: String,
        attempt: i32,
        branches_glob: String,
        tags_glob: String,
        stats: Option<Value>,
        error: Option<String>,
        created_at: DateTime<Utc>,
        started_at: Option<DateTime<Utc>>,
        finished_at: Option<DateTime<Utc>>,
        #[serde(default)]
        last_attempt_error: Option<String>,
        not_before: Option<DateTime<Utc>>,
    }
    let r: Row = serde_json::from_value(v.clone()).map_err(corrupt)?;
    Ok(crate::syncs::SyncRecord {
        id: r.id,
        repo_id: r.repo_id,
        seq: r.seq,
        direction: r.direction.parse().map_err(corrupt)?,
        status: r.status.parse().map_err(corrupt)?,
        attempt: r.attempt,
        ref_globs: depot_domain::RefGlobs {
            branches: r.branches_glob,
            tags: r.tags_glob,
        },
        stats: r
            .stats
            .map(|v| serde_json::value::RawValue::from_string(v.to_string()))
            .transpose()
            .map_err(corrupt)?,
        stats_deferred: false,
        error: r.error,
        created_at: r.created_at,
        started_at: r.started_at,
        finished_at: r.finished_at,
        last_attempt_error: r.last_attempt_error,
        not_before: r.not_before,
    })
}

/// The fields of a repository row an event shows.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct RepoSnapshot {
    pub id: String,
    pub name: String,
    pub default_bookmark: String,
    pub head_commit: Option<String>,
    pub tags: Value,
    pub created_at: DateTime<Utc>,
}

pub fn repo_from_snapshot(v: &Value) -> Result<RepoSnapshot> {
    serde_json::from_value(v.clone()).map_err(corrupt)
}

/// Associated data a target's secret is sealed with (crates/secrets seals
/// for a repository id and an origin: here the target's id and this label,
/// so a sealed upstream credential never opens as a webhook secret).
pub const SECRET_ORIGIN: &str = "depot:webhook-target-secret";

/// One target's sealed secret, as a key rotation walks them.
#[derive(Clone, PartialEq, Eq)]
pub struct SealedSecret {
    pub target_id: String,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for SealedSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedSecret")
            .field("target_id", &self.target_id)
            .finish_non_exhaustive()
    }
}

/// A page of targets' sealed secrets, ordered by target id, after `after`.
pub async fn secrets_page(
    client: &impl GenericClient,
    after: &str,
    limit: i64,
) -> Result<Vec<SealedSecret>> {
    let stmt = client
        .prepare_cached("SELECT id, secret FROM webhook_targets WHERE id > $1 ORDER BY id LIMIT $2")
        .await?;
    Ok(client
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(|r| SealedSecret {
            target_id: r.get(0),
            secret: r.get(1),
        })
        .collect())
}

/// Replace a target's sealed secret if it still holds `old` (a target
/// deleted or re-created meanwhile wins); true when replaced.
pub async fn replace_secret(
    client: &impl GenericClient,
    old: &SealedSecret,
    new: &[u8],
) -> Result<bool> {
    let stmt = client
        .prepare_cached("UPDATE webhook_targets SET secret = $3 WHERE id = $1 AND secret = $2")
        .await?;
    Ok(client
        .execute(&stmt, &[&old.target_id, &old.secret, &new])
        .await?
        == 1)
}

/// Mesa's event envelope `{id, type, occurred_at, organization, repository,
/// data}` for `event`; `repository.url` is `<repo_url_base>/<org>/<repo>.git`.
pub fn envelope(event: &Event, repo_url_base: &str) -> Result<Value> {
    use serde_json::json;
    let repo_info = |v: &Value| -> Result<Value> {
        let r = repo_from_snapshot(v)?;
        Ok(json!({
            "id": r.id,
            "name": r.name,
            "default_bookmark": r.default_bookmark,
            "head_change_id": depot_domain::head_change_id(r.head_commit.as_deref()),
            "created_at": crate::syncs::api_time(r.created_at),
            "tags": r.tags,
        }))
    };
    let repo_snapshot = |v: &Value| -> Result<Value> {
        let r = repo_from_snapshot(v)?;
        Ok(json!({ "name": r.name, "default_bookmark": r.default_bookmark, "tags": r.tags }))
    };
    let data = match event.kind.as_str() {
        "repo.created" | "repo.deleted" => json!({ "repo": repo_info(&event.subject)? }),
        "repo.updated" => {
            let before = event
                .before
                .as_ref()
                .ok_or_else(|| corrupt("repo.updated without its before"))?;
            json!({
                "repo": repo_info(&event.subject)?,
                "before": repo_snapshot(before)?,
                "after": repo_snapshot(&event.subject)?,
            })
        }
        k if k.starts_with("sync.") => {
            json!({ "sync": crate::syncs::api_json(&sync_from_snapshot(&event.subject)?) })
        }
        other => return Err(corrupt(format!("unknown event type {other}"))),
    };
    let repository = match (&event.repo_id, &event.repo_name) {
        (Some(id), Some(name)) => json!({
            "id": id,
            "name": name,
            "url": format!("{}/{}/{}.git", repo_url_base.trim_end_matches('/'), event.org_slug, name),
        }),
        _ => Value::Null,
    };
    Ok(json!({
        "id": event.id,
        "type": event.kind,
        "occurred_at": crate::syncs::api_time(event.occurred_at),
        "organization": { "id": event.org_id, "slug": event.org_slug, "name": event.org_name },
        "repository": repository,
        "data": data,
    }))
}

/// The target a delivery goes to (to check its concurrency before a claim).
pub async fn target_of(client: &impl GenericClient, delivery_id: &str) -> Result<Option<String>> {
    let stmt = client
        .prepare_cached("SELECT target_id FROM webhook_deliveries WHERE id = $1")
        .await?;
    Ok(client
        .query_opt(&stmt, &[&delivery_id])
        .await?
        .map(|r| r.get(0)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn event(kind: &str, subject: Value, before: Option<Value>) -> Event {
        Event {
            id: "evt_1".into(),
            kind: kind.into(),
            org_id: "org_1".into(),
            org_slug: "acme".into(),
            org_name: "Acme".into(),
            repo_id: Some("repo_1".into()),
            repo_name: Some("mirror".into()),
            subject,
            before,
            occurred_at: DateTime::parse_from_rfc3339("2026-12-01T10:00:00.5Z")
                .unwrap()
                .with_timezone(&Utc),
        }
    }

    /// A sync row as Postgres's `to_jsonb` writes it (timestamps with an
    /// offset and microseconds, every column).
    fn sync_row(status: &str) -> Value {
        json!({
            "id": "sync_1", "repo_id": "repo_1", "seq": 7, "direction": "pull",
            "status": status, "attempt": 1, "branches_glob": "*", "tags_glob": "",
            "stats": null, "error": null,
            "created_at": "2026-12-01T09:59:59.123456+00:00",
            "started_at": "2026-12-01T10:00:00.000001+00:00", "finished_at": null,
            "lease_until": "2026-12-01T10:01:00+00:00", "not_before": null,
            "published_at": null, "updated_at": "2026-12-01T10:00:00+00:00",
            "last_attempt_error": null
        })
    }

    #[test]
    fn a_sync_event_renders_mesas_envelope() {
        let e = envelope(
            &event("sync.in_progress", sync_row("in_progress"), None),
            "https://git.example.com/",
        )
        .unwrap();
        assert_eq!(e["id"], "evt_1");
        assert_eq!(e["type"], "sync.in_progress");
        assert_eq!(e["occurred_at"], "2026-12-01T10:00:00.500Z");
        assert_eq!(
            e["organization"],
            json!({"id": "org_1", "slug": "acme", "name": "Acme"})
        );
        assert_eq!(
            e["repository"],
            json!({"id": "repo_1", "name": "mirror", "url": "https://git.example.com/acme/mirror.git"})
        );
        let sync = &e["data"]["sync"];
        assert_eq!(sync["status"], "in_progress");
        assert_eq!(sync["started_at"], "2026-12-01T10:00:00.000Z");
        assert_eq!(sync["ref_globs"], json!({"branches": "*", "tags": ""}));
        assert!(sync.get("lease_until").is_none());
    }

    #[test]
    fn a_repo_update_carries_before_and_after() {
        let row = |name: &str| {
            json!({"id": "repo_1", "org_id": "org_1", "seq": 1, "name": name,
                   "default_bookmark": "main", "head_commit": null, "tags": {"k": "v"},
                   "created_at": "2026-12-01T09:00:00+00:00"})
        };
        let e = envelope(
            &event("repo.updated", row("new"), Some(row("old"))),
            "http://h",
        )
        .unwrap();
        assert_eq!(e["data"]["before"]["name"], "old");
        assert_eq!(e["data"]["after"]["name"], "new");
        assert_eq!(e["data"]["repo"]["name"], "new");
        assert!(e["data"]["repo"]["head_change_id"].is_string());
        assert!(envelope(&event("repo.updated", row("new"), None), "http://h").is_err());
    }
}
