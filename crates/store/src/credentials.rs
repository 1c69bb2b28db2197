//! Sealed upstream credentials, in bulk: what a key rotation walks.
//!
//! A row's credential is sealed for the origin of its URL (crates/secrets),
//! so the two are read together and replaced together: a replacement only
//! lands if neither changed since it was read.

use crate::{GenericClient, Result};

/// One stored credential with the URL it is bound to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedRow {
    pub repo_id: String,
    pub url: String,
    pub credential: Vec<u8>,
}

/// A page of sealed credentials, ordered by repo id, after `after`.
pub async fn page(client: &impl GenericClient, after: &str, limit: i64) -> Result<Vec<SealedRow>> {
    let stmt = client
        .prepare_cached(
            "SELECT repo_id, url, credential FROM upstreams
             WHERE credential IS NOT NULL AND repo_id > $1 ORDER BY repo_id LIMIT $2",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(|r| SealedRow {
            repo_id: r.get(0),
            url: r.get(1),
            credential: r.get(2),
        })
        .collect())
}

/// Replace a sealed credential if the row still holds `old` with the same
/// URL (a concurrent PATCH wins); true when replaced.
pub async fn replace(client: &impl GenericClient, old: &SealedRow, new: &[u8]) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE upstreams SET credential = $4, updated_at = now()
             WHERE repo_id = $1 AND url = $2 AND credential = $3",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&old.repo_id, &old.url, &old.credential, &new])
        .await?
        == 1)
}
