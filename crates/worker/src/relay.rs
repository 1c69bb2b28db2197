//! Background duties that make "every accepted sync ends" true even when
//! messages are lost or workers die. Any number of worker replicas run them
//! at once: each step locks its rows with `FOR UPDATE SKIP LOCKED`.
//!
//! - outbox relay: publish job messages the gateway could not confirm;
//! - lost messages: re-publish what the jobs queue lacks, i.e. no more
//!   messages than due `queued` syncs outnumber the ready ones (see
//!   `republish_stale`), from those untouched for
//!   `worker.requeue_after_seconds`;
//! - lease sweeper: return runs whose lease expired (their worker died) to
//!   `queued`, or `failed` when their attempts are spent;
//! - purge: remove the git data of deleted repositories;
//! - webhook deliveries: publish again the pending deliveries that are due
//!   (a retry whose backoff is over, a lost message, a worker that died
//!   mid-delivery), see `depot_store::webhooks::take_due`.

use crate::Ctx;
use crate::metrics::RelaySource;
use depot_contracts::Message as _;
use depot_contracts::sync_v1::SyncJob;
use depot_domain::SyncStatus;
use depot_store::StoreError;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const BATCH: i64 = 100;
/// Outbox rows younger than this are most likely being published by the
/// gateway that wrote them.
const OUTBOX_MIN_AGE: Duration = Duration::from_secs(2);
/// A delivery published this recently is presumably on its way.
const DELIVERY_SETTLE: Duration = Duration::from_secs(1);

pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let every = Duration::from_millis(ctx.settings.worker.relay_interval_ms.max(50));
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        ticks += 1;
        if let Err(e) = tick(&ctx, ticks).await {
            tracing::warn!(error = %e, "relay step failed; will retry");
        }
    }
}

async fn tick(ctx: &Ctx, ticks: u64) -> Result<(), StoreError> {
    relay_outbox(ctx).await?;
    relay_deliveries(ctx).await?;
    sweep(ctx).await?;
    republish_stale(ctx).await?;
    if ticks.is_multiple_of(30) {
        purge_deleted(ctx).await?;
        let client = ctx.pool.get().await?;
        depot_store::outbox::prune(&client, Duration::from_secs(24 * 3600)).await?;
        depot_store::webhooks::prune(&client, ctx.settings.webhooks.event_retention(), BATCH)
            .await?;
    }
    Ok(())
}

async fn relay_outbox(ctx: &Ctx) -> Result<(), StoreError> {
    if ctx.broker.get().is_none() {
        return Ok(());
    }
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let pending = depot_store::outbox::lock_pending(&tx, OUTBOX_MIN_AGE, BATCH).await?;
    for row in &pending {
        let job = match SyncJob::decode(row.payload.as_slice()) {
            Ok(job) => job,
            Err(e) => {
                tracing::error!(outbox_id = row.id, error = %e, "undecodable outbox row; skipping it");
                depot_store::outbox::mark_published(&tx, row.id).await?;
                continue;
            }
        };
        match ctx.broker.publish(&job).await {
            Ok(()) => {
                crate::metrics::relay_published(RelaySource::Outbox, true);
                depot_store::outbox::mark_published(&tx, row.id).await?;
                if job.delivery_id.is_empty() {
                    tracing::info!(sync_id = %row.sync_id, "relay published job");
                } else {
                    tracing::debug!(delivery_id = %job.delivery_id, kind = %row.kind, "relay published job");
                }
            }
            Err(e) => {
                crate::metrics::relay_published(RelaySource::Outbox, false);
                tracing::warn!(error = %e, "relay publish failed");
                break;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

async fn relay_deliveries(ctx: &Ctx) -> Result<(), StoreError> {
    if ctx.broker.get().is_none() {
        return Ok(());
    }
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    let due = depot_store::webhooks::take_due(&tx, DELIVERY_SETTLE, BATCH).await?;
    tx.commit().await?;
    for id in due {
        match ctx.broker.publish(&depot_broker::delivery_job(&id)).await {
            Ok(()) => {}
            Err(depot_broker::PublishError::Unavailable) => return Ok(()),
            Err(e) => {
                // Still pending and due: the next pass tries again.
                tracing::warn!(delivery_id = %id, error = %e, "delivery re-publish failed");
                return Ok(());
            }
        }
    }
    Ok(())
}

async fn publish_all(ctx: &Ctx, jobs: &[(String, String, i32)], source: RelaySource) {
    for (sync_id, repo_id, attempt) in jobs {
        let job = depot_broker::job(sync_id, repo_id, *attempt, HashMap::new());
        match ctx.broker.publish(&job).await {
            Ok(()) => {}
            Err(depot_broker::PublishError::Unavailable) => return,
            Err(e) => {
                // The sync stays queued; the next lost-message pass tries again.
                crate::metrics::relay_published(source, false);
                tracing::warn!(sync_id = %sync_id, error = %e, "re-publish failed");
                return;
            }
        }
        crate::metrics::relay_published(source, true);
        tracing::info!(sync_id = %sync_id, why = source.reason(), "re-published job");
    }
}

async fn sweep(ctx: &Ctx) -> Result<(), StoreError> {
    let max_attempts = i32::try_from(ctx.settings.worker.max_attempts).unwrap_or(i32::MAX);
    let swept = {
        let client = ctx.pool.get().await?;
        depot_store::syncs::sweep_expired_leases(&client, max_attempts, BATCH).await?
    };
    let mut requeued = Vec::new();
    for s in swept {
        match s.status {
            SyncStatus::Queued => {
                crate::metrics::lease_expired(true);
                tracing::warn!(sync_id = %s.id, attempt = s.attempt, "lease expired; sync re-queued");
                requeued.push((s.id, s.repo_id, s.attempt));
            }
            _ => {
                crate::metrics::lease_expired(false);
                tracing::warn!(sync_id = %s.id, attempt = s.attempt, "lease expired; attempts exhausted, sync failed")
            }
        }
    }
    publish_all(ctx, &requeued, RelaySource::LeaseExpired).await;
    Ok(())
}

/// Publish again only the messages that are really missing. A sync queued
/// for longer than `worker.requeue_after_seconds` is not evidence of a lost
/// message: behind a backlog, its message simply waits in the jobs queue,
/// and publishing it again would double the backlog (and what autoscaling
/// on queue depth sees) every pass.
///
/// So the pass counts: every queued sync that is due (and has not been
/// published or become due within [`SETTLE`]) should have one message ready
/// in the jobs queue. Only the shortfall, `expected - ready`, is published
/// again, taken from the syncs published longest ago and at most
/// `worker.republish_max_per_tick` per pass; one relay at a time decides.
/// Hence the jobs queue holds at most the queued syncs plus the messages
/// in flight at a consumer while the pass counts (a few per worker).
/// Duplicates (a sync with two messages) hide a lost message only until the
/// duplicates are consumed, so every lost message is published again.
async fn republish_stale(ctx: &Ctx) -> Result<(), StoreError> {
    let Some(broker) = ctx.broker.get() else {
        return Ok(());
    };
    // Ready messages first, then the sync count: a message consumed in
    // between makes its sync leave `queued`, so the error errs towards
    // publishing nothing.
    let ready = match broker.queue_depth(&broker.topology().jobs_queue()).await {
        Ok(n) => i64::from(n),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the jobs queue depth; no lost-message pass");
            return Ok(());
        }
    };
    let older_than = Duration::from_secs(ctx.settings.worker.requeue_after_seconds);
    let cap = i64::from(ctx.settings.worker.republish_max_per_tick);
    let stale = {
        let mut client = ctx.pool.get().await?;
        let tx = client.transaction().await?;
        if !depot_store::syncs::lead_republish(&tx).await? {
            return Ok(());
        }
        let expected = depot_store::syncs::count_expecting_message(&tx, settle(ctx)).await?;
        let missing = (expected - ready).max(0);
        crate::metrics::missing_messages(missing);
        if missing == 0 {
            return Ok(());
        }
        let stale =
            depot_store::syncs::take_stale_queued(&tx, older_than, missing.min(cap)).await?;
        tx.commit().await?;
        stale
    };
    publish_all(ctx, &stale, RelaySource::PresumedLost).await;
    Ok(())
}

/// Messages this young may be in a delay queue rather than the jobs queue:
/// a deferred job (busy repository or org) waits at most four retry bases;
/// a retry's delay bucket is at most 10 % late.
fn settle(ctx: &Ctx) -> Duration {
    let defer = Duration::from_millis(ctx.settings.worker.retry_base_ms.saturating_mul(4));
    defer.max(Duration::from_secs(2)) + Duration::from_secs(1)
}

async fn purge_deleted(ctx: &Ctx) -> Result<(), StoreError> {
    let mut client = ctx.pool.get().await?;
    let tx = client.transaction().await?;
    for (repo_id, org_id) in depot_store::repos::lock_pending_purges(&tx, BATCH).await? {
        let path = ctx.repo_path(&org_id, &repo_id);
        let removed = tokio::task::spawn_blocking(move || match std::fs::remove_dir_all(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        })
        .await;
        match removed {
            Ok(Ok(())) => {
                depot_store::repos::purged(&tx, &repo_id).await?;
                tracing::info!(repo_id = %repo_id, "purged deleted repository's git data");
            }
            Ok(Err(e)) => tracing::warn!(repo_id = %repo_id, error = %e, "cannot purge git data"),
            Err(e) => tracing::warn!(repo_id = %repo_id, error = %e, "purge task failed"),
        }
    }
    tx.commit().await?;
    Ok(())
}
