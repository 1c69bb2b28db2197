//! The transactional outbox: a job message written in the same transaction
//! as its sync, so an accepted sync is never without a message to come.
//! Rows have a `kind` (migrations/V7): `sync` (the default, written by the
//! gateway with its sync) or `webhook_delivery` (written by the event
//! triggers with the delivery); the payload is the protobuf job either way.

use crate::{GenericClient, Result};
use std::time::Duration;

pub async fn insert(client: &impl GenericClient, sync_id: &str, payload: &[u8]) -> Result<i64> {
    let stmt = client
        .prepare_cached("INSERT INTO outbox (sync_id, payload) VALUES ($1, $2) RETURNING id")
        .await?;
    Ok(client.query_one(&stmt, &[&sync_id, &payload]).await?.get(0))
}

/// The broker confirmed the message.
pub async fn mark_published(client: &impl GenericClient, id: i64) -> Result<()> {
    let stmt = client
        .prepare_cached(
            "WITH o AS (UPDATE outbox SET published_at = now() WHERE id = $1
                        RETURNING sync_id, delivery_id),
                  s AS (UPDATE syncs SET published_at = now() FROM o WHERE syncs.id = o.sync_id)
             UPDATE webhook_deliveries d SET published_at = now() FROM o
             WHERE d.id = o.delivery_id",
        )
        .await?;
    client.execute(&stmt, &[&id]).await?;
    Ok(())
}

/// The broker confirmed these rows' messages: mark them published, one
/// statement for the whole batch (the gateway's publisher), by primary key.
/// The syncs' own `published_at` is left alone: a sync this young is judged
/// by its `created_at` (the relay's `coalesce(published_at, created_at)`),
/// and joining syncs here let the planner scan the whole table per batch.
pub async fn mark_published_batch(client: &impl GenericClient, ids: &[i64]) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
        )
        .await?;
    Ok(client.execute(&stmt, &[&ids]).await?)
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub id: i64,
    /// Empty for a row that is not a sync job.
    pub sync_id: String,
    /// `sync` or `webhook_delivery`.
    pub kind: String,
    pub payload: Vec<u8>,
}

/// Unpublished rows, locked for the caller's transaction; other relays skip
/// them. Sync rows only when older than `min_age` (younger ones are most
/// likely being published by the gateway right now); delivery rows have no
/// other publisher and are taken at once.
pub async fn lock_pending(
    client: &impl GenericClient,
    min_age: Duration,
    limit: i64,
) -> Result<Vec<Pending>> {
    let stmt = client
        .prepare_cached(
            "SELECT id, coalesce(sync_id, '') AS sync_id, kind, payload FROM outbox
             WHERE published_at IS NULL
               AND (kind <> 'sync' OR created_at < now() - make_interval(secs => $1))
             ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .await?;
    Ok(client
        .query(&stmt, &[&min_age.as_secs_f64(), &limit])
        .await?
        .iter()
        .map(|r| Pending {
            id: r.get(0),
            sync_id: r.get(1),
            kind: r.get(2),
            payload: r.get(3),
        })
        .collect())
}

pub async fn backlog(client: &impl GenericClient) -> Result<i64> {
    let stmt = client
        .prepare_cached("SELECT count(*) FROM outbox WHERE published_at IS NULL")
        .await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Delete published rows older than `age`.
pub async fn prune(client: &impl GenericClient, age: Duration) -> Result<u64> {
    let stmt = client
        .prepare_cached(
            "DELETE FROM outbox WHERE published_at IS NOT NULL
             AND published_at < now() - make_interval(secs => $1)",
        )
        .await?;
    Ok(client.execute(&stmt, &[&age.as_secs_f64()]).await?)
}
