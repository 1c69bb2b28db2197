//! The housekeeping lease: a worker housekeeping a repository's git data
//! holds the repository's run lock, the same one a sync's claim takes.
//!
//! Invariants:
//! - a lease is taken only while no sync of the repository is
//!   `in_progress`, under the repository row lock that claims take too
//!   (`syncs::claim`), and a claim finds the repository busy while a lease is
//!   live: housekeeping and runs of one repository never overlap;
//! - a lease expires by itself (`housekeeping_until`), so a worker that dies
//!   mid-housekeeping blocks its repository's syncs for one lease at most;
//! - renewals and the release are fenced on the lease's token: a holder
//!   whose lease ran out (and was taken by someone else) changes nothing.

use crate::{GenericClient, Result};
use std::time::Duration;

/// A repository due for a look from the maintenance task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    pub repo_id: String,
    pub org_id: String,
}

/// Up to `limit` repositories not looked at for `idle_for` (never looked at
/// first), not running a sync and not leased. A hint only: [`take`]
/// decides.
pub async fn candidates(
    client: &impl GenericClient,
    idle_for: Duration,
    limit: i64,
) -> Result<Vec<Candidate>> {
    let stmt = client
        .prepare_cached(
            "SELECT r.id, r.org_id FROM repos r
             WHERE (r.housekept_at IS NULL OR r.housekept_at < now() - make_interval(secs => $1))
               AND (r.housekeeping_until IS NULL OR r.housekeeping_until < now())
               AND NOT EXISTS (SELECT 1 FROM syncs s
                               WHERE s.repo_id = r.id AND s.status = 'in_progress')
             ORDER BY r.housekept_at NULLS FIRST LIMIT $2",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&idle_for.as_secs_f64(), &limit])
        .await?
        .iter()
        .map(|r| Candidate {
            repo_id: r.get(0),
            org_id: r.get(1),
        })
        .collect())
}

/// Take the repository's lease for `lease` under `token`; false when a sync
/// of it runs, another lease is live, or the repository is gone.
pub async fn take(
    client: &mut deadpool_postgres::Client,
    repo_id: &str,
    token: &str,
    lease: Duration,
) -> Result<bool> {
    let tx = client.transaction().await?;
    // Same order as a claim: repository row first, then look for a run in
    // a separate statement (see `syncs::claim` for why).
    let lock = tx
        .prepare_cached(
            "SELECT housekeeping_until > now() FROM repos WHERE id = $1 FOR NO KEY UPDATE",
        )
        .await?;
    let Some(row) = tx.query_opt(&lock, &[&repo_id]).await? else {
        return Ok(false);
    };
    if row.get::<_, Option<bool>>(0) == Some(true) {
        return Ok(false);
    }
    let running = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM syncs WHERE repo_id = $1 AND status = 'in_progress')",
        )
        .await?;
    if tx.query_one(&running, &[&repo_id]).await?.get::<_, bool>(0) {
        return Ok(false);
    }
    let update = tx
        .prepare_cached(
            "UPDATE repos SET housekeeping_until = now() + make_interval(secs => $3),
                    housekeeping_token = $2
             WHERE id = $1",
        )
        .await?;
    tx.execute(&update, &[&repo_id, &token, &lease.as_secs_f64()])
        .await?;
    tx.commit().await?;
    Ok(true)
}

/// Extend a held lease; false when it is no longer ours.
pub async fn renew(
    client: &impl GenericClient,
    repo_id: &str,
    token: &str,
    lease: Duration,
) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE repos SET housekeeping_until = now() + make_interval(secs => $3)
             WHERE id = $1 AND housekeeping_token = $2 AND housekeeping_until > now()",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&repo_id, &token, &lease.as_secs_f64()])
        .await?
        == 1)
}

/// End a lease and record the look; false when it was no longer ours.
pub async fn release(client: &impl GenericClient, repo_id: &str, token: &str) -> Result<bool> {
    let stmt = client
        .prepare_cached(
            "UPDATE repos SET housekeeping_until = NULL, housekeeping_token = NULL,
                    housekept_at = now()
             WHERE id = $1 AND housekeeping_token = $2",
        )
        .await?;
    Ok(client.execute(&stmt, &[&repo_id, &token]).await? == 1)
}
