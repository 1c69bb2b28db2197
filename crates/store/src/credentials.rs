//! Sealed upstream credentials, in bulk: what a key rotation walks.

use crate::{GenericClient, Result};

/// A page of sealed credentials, ordered by repo id, after `after`.
pub async fn page(
    client: &impl GenericClient,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, Vec<u8>)>> {
    let stmt = client
        .prepare_cached(
            "SELECT repo_id, credential FROM upstreams
             WHERE credential IS NOT NULL AND repo_id > $1 ORDER BY repo_id LIMIT $2",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&after, &limit])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

/// Replace a sealed credential if it is still `old` (a concurrent PATCH
/// wins); true when replaced.
pub async fn replace(
    client: &impl GenericClient,
    repo_id: &str,
    old: &[u8],
    new: &[u8],
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE upstreams SET credential = $3, updated_at = now()
             WHERE repo_id = $1 AND credential = $2",
        )
        .await?;
    Ok(client.execute(&stmt, &[&repo_id, &old, &new]).await? == 1)
}
