//! `Idempotency-Key` records: the first response to a key is replayed for
//! the retention (`gateway.idempotency_retention_hours`, default 24) to
//! requests with the same body. Expired rows are ignored at once (and the key
//! can be reused) and deleted in batches by the worker's maintenance task
//! ([`delete_expired`]), so the table does not grow for ever.

use crate::{GenericClient, Result};
use serde_json::Value;
use std::time::Duration;

#[derive(Debug, Clone)]
pub enum Reservation {
    /// First use: the caller runs the request and then calls [`complete`].
    Fresh,
    /// Seen before with this request hash and finished: replay it.
    Replay { status: u16, body: Value },
    /// Seen before with another body.
    Mismatch,
    /// Seen before and still being processed by a concurrent request.
    InFlight,
}

/// Reserve `key` for this request. Run in the caller's transaction: the row
/// lock taken by the insert makes a concurrent request with the same key
/// wait for this one's commit instead of creating a second sync.
pub async fn reserve(
    client: &impl GenericClient,
    org_id: &str,
    key: &str,
    request_hash: &[u8],
    retention: Duration,
) -> Result<Reservation> {
    // Expired keys are forgotten first, so they can be reused.
    let expire = client
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE org_id = $1 AND key = $2
             AND created_at < now() - make_interval(secs => $3)",
        )
        .await?;
    client
        .execute(&expire, &[&org_id, &key, &retention.as_secs_f64()])
        .await?;
    let insert = client
        .prepare_cached(
            "INSERT INTO idempotency_keys (org_id, key, request_hash) VALUES ($1, $2, $3)
             ON CONFLICT (org_id, key) DO NOTHING",
        )
        .await?;
    if client
        .execute(&insert, &[&org_id, &key, &request_hash])
        .await?
        == 1
    {
        return Ok(Reservation::Fresh);
    }
    let select = client
        .prepare_cached(
            "SELECT request_hash, status_code, response FROM idempotency_keys
             WHERE org_id = $1 AND key = $2",
        )
        .await?;
    let Some(row) = client.query_opt(&select, &[&org_id, &key]).await? else {
        return Ok(Reservation::InFlight);
    };
    let hash: Vec<u8> = row.get(0);
    if hash != request_hash {
        return Ok(Reservation::Mismatch);
    }
    let status: Option<i32> = row.get(1);
    let body: Option<Value> = row.get(2);
    Ok(match (status, body) {
        (Some(status), Some(body)) => Reservation::Replay {
            status: u16::try_from(status).unwrap_or(500),
            body,
        },
        _ => Reservation::InFlight,
    })
}

pub async fn complete(
    client: &impl GenericClient,
    org_id: &str,
    key: &str,
    status: u16,
    body: &Value,
) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "UPDATE idempotency_keys SET status_code = $3, response = $4 WHERE org_id = $1 AND key = $2",
        )
        .await?;
    client
        .execute(&stmt, &[&org_id, &key, &i32::from(status), body])
        .await?;
    Ok(())
}

/// Delete up to `limit` keys older than `retention`, oldest first (index
/// `idempotency_keys_age`); returns how many. `SKIP LOCKED`: several workers
/// may run this at once, and a key a request is using right now is left to
/// it.
pub async fn delete_expired(
    client: &impl GenericClient,
    retention: Duration,
    limit: i64,
) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "WITH old AS (
                 SELECT org_id, key FROM idempotency_keys
                 WHERE created_at < now() - make_interval(secs => $1)
                 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED)
             DELETE FROM idempotency_keys i USING old
             WHERE i.org_id = old.org_id AND i.key = old.key",
        )
        .await?;
    Ok(client
        .execute(&stmt, &[&retention.as_secs_f64(), &limit])
        .await?)
}
