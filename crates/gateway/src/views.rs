//! Public JSON shapes (docs/api.md), built from store records.

use chrono::{DateTime, SecondsFormat, Utc};
use depot_domain::{SyncStatus, head_change_id};
use depot_store::repos::Repo;
use depot_store::syncs::SyncRecord;
use serde_json::{Value, json};

/// RFC 3339 UTC with millisecond precision (`2026-11-26T05:31:56.123Z`).
pub fn time(t: DateTime<Utc>) -> Value {
    json!(t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn opt_time(t: Option<DateTime<Utc>>) -> Value {
    t.map(time).unwrap_or(Value::Null)
}

/// A sync as Mesa's API defines it, plus two extension fields (Mesa's
/// clients keep unknown fields: `mesa_rest` in `additional_properties`, the
/// SDK's webhook models ignore them). `error` and `started_at` stay null on a
/// queued sync, as Mesa's models require; what a retrying sync waits for is
/// in `last_attempt_error` and `next_attempt_at` instead.
pub fn sync(s: &SyncRecord) -> Value {
    let next_attempt_at = match s.status {
        SyncStatus::Queued => s.not_before,
        _ => None,
    };
    json!({
        "id": s.id,
        "repo_id": s.repo_id,
        "direction": s.direction,
        "status": s.status,
        "attempt": s.attempt,
        "ref_globs": { "branches": s.ref_globs.branches, "tags": s.ref_globs.tags },
        "stats": s.stats,
        "error": s.error,
        "created_at": time(s.created_at),
        "started_at": opt_time(s.started_at),
        "finished_at": opt_time(s.finished_at),
        "last_attempt_error": s.last_attempt_error,
        "next_attempt_at": opt_time(next_attempt_at),
    })
}

pub fn repo(r: &Repo, org_slug: &str, latest_sync: Option<&SyncRecord>) -> Value {
    let upstream = r.upstream.as_ref().map(|u| {
        json!({
            "url": u.url,
            "auth_kind": u.auth_kind,
            "latest_sync": latest_sync.map(sync),
        })
    });
    json!({
        "id": r.id,
        "org": org_slug,
        "name": r.name,
        "default_bookmark": r.default_bookmark,
        "head_change_id": head_change_id(r.head_commit.as_deref()),
        "upstream": upstream,
        "created_at": time(r.created_at),
        "tags": r.tags,
    })
}
