//! Public JSON shapes (docs/api.md), built from store records.
//!
//! The shapes are serialized from borrowing structs rather than built as
//! `serde_json::Value` trees, so that a sync's `stats` (up to
//! `upstream.max_refs` entries) goes out as the JSON text Postgres stored,
//! never parsed into a tree per request. Fields are declared in
//! alphabetical order: the order the earlier `Value`-built bodies had.

use chrono::{DateTime, Utc};
use depot_domain::head_change_id;
use depot_store::repos::Repo;
pub use depot_store::syncs::SyncView;
use depot_store::syncs::{SyncRecord, time_text};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// RFC 3339 UTC with millisecond precision (`2026-11-26T05:31:56.123Z`).
pub fn time(t: DateTime<Utc>) -> Value {
    Value::String(time_text(t))
}

/// The sync's JSON text.
pub fn sync_text(s: &SyncRecord) -> String {
    text(&SyncView::of(s, None))
}

/// The sync as a JSON value (small answers: a new sync has no stats).
pub fn sync(s: &SyncRecord) -> Value {
    serde_json::to_value(SyncView::of(s, None)).unwrap_or(Value::Null)
}

/// JSON text of a view. Serializing these structs cannot fail (string
/// keys, no maps of other keys, valid raw values).
pub fn text(view: &impl Serialize) -> String {
    serde_json::to_string(view).unwrap_or_else(|_| "null".into())
}

#[derive(Serialize)]
struct UpstreamView<'a> {
    auth_kind: Option<&'a str>,
    latest_sync: Option<SyncView<'a>>,
    url: &'a str,
}

#[derive(Serialize)]
pub struct RepoView<'a> {
    created_at: String,
    default_bookmark: &'a str,
    head_change_id: String,
    id: &'a str,
    name: &'a str,
    org: &'a str,
    tags: &'a Value,
    upstream: Option<UpstreamView<'a>>,
}

impl<'a> RepoView<'a> {
    /// `latest_sync` with `stats` overriding the record's (see
    /// [`SyncView::of`]).
    pub fn of(
        r: &'a Repo,
        org_slug: &'a str,
        latest_sync: Option<&'a SyncRecord>,
        stats: Option<&'a RawValue>,
    ) -> RepoView<'a> {
        RepoView {
            created_at: time_text(r.created_at),
            default_bookmark: &r.default_bookmark,
            head_change_id: head_change_id(r.head_commit.as_deref()),
            id: &r.id,
            name: &r.name,
            org: org_slug,
            tags: &r.tags,
            upstream: r.upstream.as_ref().map(|u| UpstreamView {
                auth_kind: u.auth_kind.as_deref(),
                latest_sync: latest_sync.map(|s| SyncView::of(s, stats)),
                url: &u.url,
            }),
        }
    }
}

pub fn repo(r: &Repo, org_slug: &str, latest_sync: Option<&SyncRecord>) -> Value {
    serde_json::to_value(RepoView::of(r, org_slug, latest_sync, None)).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use depot_domain::{Direction, RefGlobs, SyncStatus};

    #[test]
    fn stats_are_sent_as_stored_text() {
        let raw =
            RawValue::from_string(r#"{"refs": [{"name": "refs/heads/main"}]}"#.into()).unwrap();
        let now = Utc::now();
        let s = SyncRecord {
            id: "sync_x".into(),
            repo_id: "repo_x".into(),
            seq: 1,
            direction: Direction::Pull,
            status: SyncStatus::Completed,
            attempt: 1,
            ref_globs: RefGlobs::all(),
            stats: Some(raw),
            stats_deferred: false,
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            last_attempt_error: None,
            not_before: None,
        };
        let text = sync_text(&s);
        assert!(
            text.contains(r#""stats":{"refs": [{"name": "refs/heads/main"}]}"#),
            "{text}"
        );
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "keys keep their alphabetical order");
    }
}
