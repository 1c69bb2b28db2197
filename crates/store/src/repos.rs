use crate::{GenericClient, Result};
use chrono::{DateTime, Utc};
use serde_json::Value;

#[derive(Debug, Clone)]
pub struct Repo {
    pub id: String,
    pub org_id: String,
    pub seq: i64,
    pub name: String,
    pub default_bookmark: String,
    pub head_commit: Option<String>,
    /// JSON object of string → string.
    pub tags: Value,
    pub created_at: DateTime<Utc>,
    pub upstream: Option<Upstream>,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Upstream {
    pub url: String,
    /// `token` | `username_password`; `None` for a public upstream.
    pub auth_kind: Option<String>,
    /// Sealed credential (crates/secrets); present exactly when `auth_kind` is.
    pub credential: Option<Vec<u8>>,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may not carry credentials (policy refuses user info), but
        // the sealed bytes have no business in logs either.
        f.debug_struct("Upstream")
            .field("url", &self.url)
            .field("auth_kind", &self.auth_kind)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str =
    "r.id, r.org_id, r.seq, r.name, r.default_bookmark, r.head_commit, r.tags, r.created_at,
     u.url, u.auth_kind, u.credential";

fn from_row(row: &tokio_postgres::Row) -> Repo {
    let url: Option<String> = row.get("url");
    Repo {
        id: row.get("id"),
        org_id: row.get("org_id"),
        seq: row.get("seq"),
        name: row.get("name"),
        default_bookmark: row.get("default_bookmark"),
        head_commit: row.get("head_commit"),
        tags: row.get("tags"),
        created_at: row.get("created_at"),
        upstream: url.map(|url| Upstream {
            url,
            auth_kind: row.get("auth_kind"),
            credential: row.get("credential"),
        }),
    }
}

#[derive(Debug, Clone)]
pub struct NewRepo<'a> {
    pub id: &'a str,
    pub org_id: &'a str,
    pub name: &'a str,
    pub default_bookmark: &'a str,
    pub tags: &'a Value,
}

/// Insert a repo; `false` when the name is taken in the org.
pub async fn insert(client: &impl GenericClient, repo: &NewRepo<'_>) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "INSERT INTO repos (id, org_id, name, default_bookmark, tags)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (org_id, name) DO NOTHING",
        )
        .await?;
    let n = client
        .execute(
            &stmt,
            &[
                &repo.id,
                &repo.org_id,
                &repo.name,
                &repo.default_bookmark,
                repo.tags,
            ],
        )
        .await?;
    Ok(n == 1)
}

/// Attach or replace (`Some`) or remove (`None`) a repo's upstream.
pub async fn set_upstream(
    client: &impl GenericClient,
    repo_id: &str,
    upstream: Option<&Upstream>,
) -> Result<()> {
    match upstream {
        Some(u) => {
            let stmt = client
                .prepare_cached(
                    "INSERT INTO upstreams (repo_id, url, auth_kind, credential) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (repo_id) DO UPDATE
                     SET url = excluded.url, auth_kind = excluded.auth_kind,
                         credential = excluded.credential, updated_at = now()",
                )
                .await?;
            client
                .execute(&stmt, &[&repo_id, &u.url, &u.auth_kind, &u.credential])
                .await?;
        }
        None => {
            let stmt = client
                .prepare_cached("DELETE FROM upstreams WHERE repo_id = $1")
                .await?;
            client.execute(&stmt, &[&repo_id]).await?;
        }
    }
    Ok(())
}

pub async fn by_name(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
) -> Result<Option<Repo>> {
    find_by_name(client, org_id, name, "").await
}

/// Lock a repo row for the rest of the caller's transaction (`FOR UPDATE`).
pub async fn by_name_for_update(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
) -> Result<Option<Repo>> {
    find_by_name(client, org_id, name, "FOR UPDATE OF r").await
}

async fn find_by_name(
    client: &impl GenericClient,
    org_id: &str,
    name: &str,
    lock: &str,
) -> Result<Option<Repo>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM repos r LEFT JOIN upstreams u ON u.repo_id = r.id
             WHERE r.org_id = $1 AND r.name = $2 {lock}"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&org_id, &name])
        .await?
        .as_ref()
        .map(from_row))
}

pub async fn by_id(client: &impl GenericClient, repo_id: &str) -> Result<Option<Repo>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM repos r LEFT JOIN upstreams u ON u.repo_id = r.id WHERE r.id = $1"
        ))
        .await?;
    Ok(client
        .query_opt(&stmt, &[&repo_id])
        .await?
        .as_ref()
        .map(from_row))
}

/// A page of an org's repos, oldest first, after `after_seq`.
pub async fn list(
    client: &impl GenericClient,
    org_id: &str,
    after_seq: i64,
    limit: i64,
) -> Result<Vec<Repo>> {
    let stmt = client
        .prepare_cached(&format!(
            "SELECT {COLUMNS} FROM repos r LEFT JOIN upstreams u ON u.repo_id = r.id
             WHERE r.org_id = $1 AND r.seq > $2 ORDER BY r.seq LIMIT $3"
        ))
        .await?;
    Ok(client
        .query(&stmt, &[&org_id, &after_seq, &limit])
        .await?
        .iter()
        .map(from_row)
        .collect())
}

#[derive(Debug, Clone, Default)]
pub struct RepoChanges<'a> {
    pub name: Option<&'a str>,
    pub default_bookmark: Option<&'a str>,
    pub tags: Option<&'a Value>,
}

/// Apply changes; `false` when the new name is taken in the org.
pub async fn update(
    client: &impl GenericClient,
    repo_id: &str,
    changes: &RepoChanges<'_>,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE repos SET name = coalesce($2, name),
                              default_bookmark = coalesce($3, default_bookmark),
                              tags = coalesce($4, tags)
             WHERE id = $1",
        )
        .await?;
    match client
        .execute(
            &stmt,
            &[
                &repo_id,
                &changes.name,
                &changes.default_bookmark,
                &changes.tags,
            ],
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Record the default branch's tip (the worker, after a run).
pub async fn set_head(
    client: &impl GenericClient,
    repo_id: &str,
    head: Option<&str>,
) -> Result<()> {
    let stmt = client
        .prepare_cached("UPDATE repos SET head_commit = $2 WHERE id = $1")
        .await?;
    client.execute(&stmt, &[&repo_id, &head]).await?;
    Ok(())
}

/// Delete a repo and queue its git data for removal by a worker.
pub async fn delete_and_schedule_purge(
    client: &impl GenericClient,
    repo_id: &str,
    org_id: &str,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "WITH d AS (DELETE FROM repos WHERE id = $1 AND org_id = $2 RETURNING id, org_id)
             INSERT INTO repo_deletions (repo_id, org_id) SELECT id, org_id FROM d
             ON CONFLICT DO NOTHING",
        )
        .await?;
    Ok(client.execute(&stmt, &[&repo_id, &org_id]).await? == 1)
}

/// Deleted repos whose storage is still to be purged (locked; other workers
/// skip them).
pub async fn lock_pending_purges(
    client: &impl GenericClient,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    let stmt = client
        .prepare_cached(
            "SELECT repo_id, org_id FROM repo_deletions ORDER BY deleted_at LIMIT $1 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&limit])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub async fn purged(client: &impl GenericClient, repo_id: &str) -> Result<()> {
    let stmt = client
        .prepare_cached("DELETE FROM repo_deletions WHERE repo_id = $1")
        .await?;
    client.execute(&stmt, &[&repo_id]).await?;
    Ok(())
}
