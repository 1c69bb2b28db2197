//! Public JSON shapes (docs/api.md), built from store records.

use chrono::{DateTime, Utc};
use depot_domain::head_change_id;
use depot_store::repos::Repo;
use depot_store::syncs::SyncRecord;
use serde_json::{Value, json};

/// RFC 3339 UTC with millisecond precision (`2026-11-26T05:31:56.123Z`).
pub fn time(t: DateTime<Utc>) -> Value {
    depot_store::syncs::api_time(t)
}

/// A sync as Mesa's API defines it (`depot_store::syncs::api_json`, shared
/// with webhook events).
pub fn sync(s: &SyncRecord) -> Value {
    depot_store::syncs::api_json(s)
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
