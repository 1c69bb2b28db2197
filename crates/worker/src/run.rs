//! One delivery: claim the sync, run it, write the outcome, ack.
//!
//! The ack comes only after the sync's new state is committed. Anything that
//! goes wrong before that leaves the message unacked (nacked back to the
//! queue) or the sync in a state the relay and sweeper repair: no path ends
//! with a sync that stays queued or in progress for ever.

use crate::Ctx;
use crate::upstream;
use crate::verdict::{HeadUpdate, RetryPolicy, RunOutcome, Verdict, verdict};
use depot_broker::{BasicAckOptions, BasicNackOptions, BasicRejectOptions, Delivery};
use depot_contracts::sync_v1::SyncJob;
use depot_domain::retry::backoff;
use depot_domain::{Direction, FailureCode, Stats, SyncStatus};
use depot_gitsync::{RunSpec, SyncError};
use depot_store::StoreError;
use depot_store::syncs::{Claim, Claimed};
use futures_util::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::Instrument;

/// After the shutdown grace period, how long a run may take to notice its
/// cancel flag before its sync is released without waiting for it.
const ABANDON_AFTER: Duration = Duration::from_secs(2);

/// What to do with the delivery once processing ended.
enum Disposition {
    Ack,
    /// Could not record anything (database or broker trouble): put the
    /// message back for another try.
    Requeue,
    /// Processing it crashed: dead-letter it for inspection rather than
    /// crash again on every redelivery. The sync itself, if claimed, is
    /// recovered by the lease sweeper.
    DeadLetter,
}

pub(crate) async fn handle_delivery(ctx: Arc<Ctx>, delivery: Delivery) {
    let job = match depot_broker::decode_job(&delivery) {
        Ok(job) => job,
        Err(e) => {
            // Poison: no retry can fix an undecodable message. Rejecting
            // without requeue dead-letters it for inspection.
            tracing::error!(error = %e, "undecodable job; dead-lettering it");
            let _ = delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await;
            return;
        }
    };
    let span = tracing::info_span!(
        "sync_run",
        sync_id = %job.sync_id,
        repo_id = %job.repo_id,
        attempt = tracing::field::Empty,
        direction = tracing::field::Empty,
        status = tracing::field::Empty,
        updated = tracing::field::Empty,
        unchanged = tracing::field::Empty,
        rejected = tracing::field::Empty,
        filtered = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    depot_telemetry::set_parent(&span, &job.trace_context);
    let processed = AssertUnwindSafe(process(&ctx, &job).instrument(span))
        .catch_unwind()
        .await;
    let disposition = processed.unwrap_or_else(|_| {
        tracing::error!(sync_id = %job.sync_id, "processing a job panicked; dead-lettering it");
        Disposition::DeadLetter
    });
    let result = match disposition {
        Disposition::Ack => delivery.acker.ack(BasicAckOptions::default()).await,
        Disposition::DeadLetter => {
            delivery
                .acker
                .reject(BasicRejectOptions { requeue: false })
                .await
        }
        Disposition::Requeue => {
            // A short pause so a database outage does not turn into a hot
            // redelivery loop; the quorum queue's delivery limit bounds it.
            tokio::time::sleep(Duration::from_secs(1)).await;
            delivery
                .acker
                .nack(BasicNackOptions {
                    requeue: true,
                    multiple: false,
                })
                .await
        }
    };
    if let Err(e) = result {
        // The channel is gone: the broker redelivers the message, and the
        // claim turns the duplicate into a no-op.
        tracing::warn!(error = %e, "could not settle delivery");
    }
}

async fn process(ctx: &Ctx, job: &SyncJob) -> Disposition {
    // Before the claim's statement: the lease it grants runs from a moment
    // no earlier than this, so a deadline counted from here is safe.
    let claimed_at = Instant::now();
    let claim = async {
        let mut client = ctx.pool.get().await?;
        let per_org = match ctx.settings.worker.max_runs_per_org {
            0 => None,
            n => Some(i64::from(n)),
        };
        let lock_wait = Duration::from_millis(ctx.settings.worker.claim_lock_timeout_ms);
        depot_store::syncs::claim_within(
            &mut client,
            &job.sync_id,
            ctx.lease(),
            per_org,
            Some(lock_wait),
        )
        .await
    };
    let claim = match claim.await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot claim sync");
            return Disposition::Requeue;
        }
    };
    match claim {
        Claim::Gone => {
            tracing::debug!("sync not queued; dropping duplicate or stale message");
            Disposition::Ack
        }
        Claim::Busy => {
            // One run per repository at a time, and at most
            // worker.max_runs_per_org per org (or their rows stayed locked
            // past worker.claim_lock_timeout_ms): come back later without
            // counting an attempt, and free the permit for other orgs' work.
            let delay = backoff(
                ctx.settings.worker.retry_base_ms,
                ctx.settings.worker.retry_base_ms * 4,
                1,
                rand::random(),
            );
            tracing::debug!(
                delay_ms = delay.as_millis() as u64,
                "repository or org busy; deferring"
            );
            defer(ctx, job, delay).await
        }
        Claim::NotYet(at) => {
            let delay = (at - chrono::Utc::now()).to_std().unwrap_or_default();
            defer(ctx, job, delay).await
        }
        Claim::Claimed(claimed) => run_claimed(ctx, *claimed, job, claimed_at).await,
    }
}

async fn defer(ctx: &Ctx, job: &SyncJob, delay: Duration) -> Disposition {
    match ctx.broker.publish_delayed(job, delay).await {
        Ok(()) => {
            // Best effort: keeps the lost-message relay from adding
            // duplicates of a job that is merely waiting its turn.
            if let Ok(client) = ctx.pool.get().await {
                let _ = depot_store::syncs::touch_published(&client, &job.sync_id).await;
            }
            Disposition::Ack
        }
        Err(depot_broker::PublishError::Unavailable) => Disposition::Requeue,
        Err(e) => {
            tracing::warn!(error = %e, "cannot defer job");
            Disposition::Requeue
        }
    }
}

/// A run gives up its sync once its last confirmed lease renewal is older
/// than the lease minus this share of it: the sweeper hands the sync to
/// another worker only after the full lease, so the run has stopped
/// writing (it checks its cancel flag before every ref it writes) before
/// anyone else can start.
const LEASE_MARGIN_DIVISOR: u32 = 4;

async fn run_claimed(
    ctx: &Ctx,
    claimed: Claimed,
    job: &SyncJob,
    claimed_at: Instant,
) -> Disposition {
    let sync = &claimed.sync;
    let span = tracing::Span::current();
    span.record("attempt", sync.attempt);
    span.record("direction", sync.direction.as_str());
    tracing::info!("sync run started");
    crate::metrics::run_started(sync.direction, sync.attempt, sync.created_at);
    let started = Instant::now();

    let cancel = Arc::new(AtomicBool::new(false));
    let lease_lost = CancellationToken::new();
    // Aborted on drop: the heartbeat and the shutdown watch end with their
    // run, whatever path ends it (a panic unwinding through here included),
    // instead of renewing a lease nobody uses.
    let heartbeat = AbortOnDropHandle::new(tokio::spawn(heartbeat(
        ctx.pool.clone(),
        sync.id.clone(),
        sync.attempt,
        ctx.lease(),
        claimed_at,
        cancel.clone(),
        lease_lost.clone(),
    )));
    let stop_watch = {
        let cancel = cancel.clone();
        let hard_stop = ctx.hard_stop.clone();
        AbortOnDropHandle::new(tokio::spawn(async move {
            hard_stop.cancelled().await;
            cancel.store(true, Ordering::SeqCst);
        }))
    };
    let outcome = {
        let run = execute(ctx, &claimed, cancel.clone());
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => outcome,
            _ = ctx.hard_stop.cancelled() => stop_in_time(run, "shutdown").await,
            _ = lease_lost.cancelled() => stop_in_time(run, "lease lost").await,
        }
    };
    drop(heartbeat);
    drop(stop_watch);

    let policy = RetryPolicy::of(&ctx.settings.worker);
    let verdict = verdict(outcome, sync.attempt, &policy, rand::random());
    let written = write(ctx, &claimed, job, &verdict).await;
    observe(sync.direction, &verdict, &written, started.elapsed());
    Disposition::Ack
}

/// Record the verdict (fenced on the run's attempt): `Ok(false)` when the
/// run was fenced out. A retried or released sync's job is published again,
/// best effort.
async fn write(
    ctx: &Ctx,
    claimed: &Claimed,
    job: &SyncJob,
    verdict: &Verdict,
) -> Result<bool, StoreError> {
    let sync = &claimed.sync;
    let (id, attempt) = (sync.id.as_str(), sync.attempt);
    let delay = match verdict {
        Verdict::Complete { stats, head } => {
            return retry_db(|| async {
                let mut client = ctx.pool.get().await?;
                let tx = client.transaction().await?;
                let ok = depot_store::syncs::finish(
                    &tx,
                    id,
                    attempt,
                    SyncStatus::Completed,
                    Some(stats),
                    None,
                )
                .await?;
                if ok && let HeadUpdate::Set(head) = head {
                    depot_store::repos::set_head(&tx, &sync.repo_id, head.as_deref()).await?;
                }
                tx.commit().await?;
                Ok(ok)
            })
            .await;
        }
        Verdict::Fail { error, stats } => {
            return retry_db(|| async {
                let client = ctx.pool.get().await?;
                depot_store::syncs::finish(
                    &client,
                    id,
                    attempt,
                    SyncStatus::Failed,
                    stats.as_ref(),
                    Some(error),
                )
                .await
            })
            .await;
        }
        Verdict::Retry { delay, .. } | Verdict::Release { delay } => *delay,
    };
    let requeued = retry_db(|| async {
        let client = ctx.pool.get().await?;
        match verdict.error() {
            Some(error) => depot_store::syncs::retry(&client, id, attempt, delay, error).await,
            None => depot_store::syncs::requeue(&client, id, attempt, delay).await,
        }
    })
    .await;
    if let Ok(true) = requeued {
        // Best effort: if this publish is lost, the relay re-publishes
        // the queued sync once it is due.
        let retry_job = depot_broker::job(id, &sync.repo_id, attempt, job.trace_context.clone());
        if let Err(e) = ctx.broker.publish_delayed(&retry_job, delay).await {
            tracing::warn!(error = %e, "cannot schedule retry; the relay will");
        }
    }
    requeued
}

/// Tell what became of the run: span fields, metrics, the closing log line.
fn observe(
    direction: depot_domain::Direction,
    verdict: &Verdict,
    written: &Result<bool, StoreError>,
    elapsed: Duration,
) {
    let span = tracing::Span::current();
    span.record("status", verdict.label());
    let stats = match verdict {
        Verdict::Complete { stats, .. } => {
            span.record("updated", stats.count(depot_domain::Outcome::Updated));
            span.record("unchanged", stats.count(depot_domain::Outcome::Unchanged));
            span.record("rejected", stats.count(depot_domain::Outcome::Rejected));
            span.record("filtered", stats.count(depot_domain::Outcome::Filtered));
            Some(stats)
        }
        _ => None,
    };
    crate::metrics::run_ended(
        direction,
        verdict.label(),
        stats,
        elapsed,
        matches!(written, Ok(false)),
    );
    if let (Ok(true), Some(code)) = (written, verdict.code()) {
        crate::metrics::run_failed(direction, code);
    }
    let elapsed_ms = elapsed.as_millis() as u64;
    match written {
        Ok(true) => match verdict.error() {
            Some(error) => tracing::info!(elapsed_ms, error = %error, "sync run ended"),
            None => tracing::info!(elapsed_ms, "sync run ended"),
        },
        // Fenced out: the sweeper gave the sync to another run while this
        // one was presumed dead. Its outcome is not ours to write.
        Ok(false) => tracing::warn!(elapsed_ms, "run lost its lease; outcome discarded"),
        // The database stayed away. The sync is still in_progress under our
        // lease; the sweeper returns it to queued once the lease runs out,
        // so acking loses nothing and a requeue would only find it in
        // progress.
        Err(e) => tracing::error!(
            error = %e,
            "cannot record sync outcome; the lease sweeper will recover it"
        ),
    }
}

/// Retry a database write for a while: a Postgres restart should delay an
/// outcome, not lose it.
async fn retry_db<T, F, Fut>(mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut pause = Duration::from_millis(100);
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if e.is_transient() && Instant::now() + pause < deadline => {
                tracing::warn!(error = %e, "database write failed; retrying");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The run was told to stop (shutdown, lost lease). Give its git thread a
/// moment to notice; one blocked reading a silent upstream would otherwise
/// hold the worker for as long as the socket timeout. Past that moment the
/// sync is given back without the thread ([`RunOutcome::Abandoned`]).
async fn stop_in_time(
    run: std::pin::Pin<&mut impl Future<Output = RunOutcome>>,
    why: &'static str,
) -> RunOutcome {
    match tokio::time::timeout(ABANDON_AFTER, run).await {
        Ok(outcome) => outcome,
        Err(_) => {
            tracing::warn!(
                why,
                "run did not stop in time; releasing the sync after a delay"
            );
            RunOutcome::Abandoned
        }
    }
}

/// Renew the lease every third of it. Ends the run (raises `cancel`, then
/// `lost`) when the database says the lease is gone, or when the last
/// confirmed renewal is older than the lease minus a margin (a worker cut
/// off from Postgres cannot tell whether the sweeper already gave its sync
/// to another run, so it assumes the worst before that can happen).
async fn heartbeat(
    pool: depot_store::Pool,
    id: String,
    attempt: i32,
    lease: Duration,
    mut renewed: Instant,
    cancel: Arc<AtomicBool>,
    lost: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    let keep_for = lease.saturating_sub(lease / LEASE_MARGIN_DIVISOR);
    let stop = |why: &str| {
        tracing::warn!(why, "lease lost; stopping the run");
        cancel.store(true, Ordering::SeqCst);
        lost.cancel();
    };
    loop {
        let give_up = renewed + keep_for;
        tokio::time::sleep_until((Instant::now() + every).min(give_up).into()).await;
        if Instant::now() >= give_up {
            return stop("no renewal confirmed within the lease");
        }
        let sent = Instant::now();
        let beat = async {
            let client = pool.get().await?;
            depot_store::syncs::heartbeat(&client, &id, attempt, lease).await
        };
        // A beat stuck on a dead connection must not hold the deadline.
        match tokio::time::timeout_at(give_up.into(), beat).await {
            // The database's now() is no earlier than `sent`.
            Ok(Ok(true)) => renewed = sent,
            Ok(Ok(false)) => return stop("the sync was given to another run"),
            // Keep going: the database may come back before the deadline.
            Ok(Err(e)) => tracing::warn!(error = %e, "heartbeat failed"),
            Err(_) => {}
        }
    }
}

async fn execute(ctx: &Ctx, claimed: &Claimed, cancel: Arc<AtomicBool>) -> RunOutcome {
    let sync = &claimed.sync;
    let Some(upstream) = claimed.upstream.clone() else {
        return RunOutcome::Failed {
            error: FailureCode::UpstreamNotConfigured.with("the repository's upstream was removed"),
            stats: None,
        };
    };
    let credentials = match upstream::credentials(&ctx.credential_key, &upstream, &sync.repo_id) {
        Ok(c) => c,
        Err(error) => return RunOutcome::Failed { error, stats: None },
    };
    let matcher = match sync.ref_globs.compile() {
        Ok(m) => m,
        Err(e) => {
            return RunOutcome::Failed {
                error: FailureCode::InvalidRefGlobs.with(e.to_string()),
                stats: None,
            };
        }
    };
    let policy = ctx.settings.upstream.clone();
    let repo_path = ctx.repo_path(&claimed.org_id, &sync.repo_id);
    let direction = sync.direction;
    let sync_id = sync.id.clone();
    let attempt = sync.attempt;
    let default_branch = claimed.default_bookmark.clone();
    let deadline = Instant::now() + Duration::from_secs(ctx.settings.upstream.timeout_seconds);
    let max_pack = ctx.settings.upstream.max_pack_bytes;
    let max_refs = ctx.settings.upstream.max_refs;
    let stale_lock_age = Duration::from_secs(ctx.settings.worker.lease_seconds) / 2;
    let settings = ctx.settings.clone();
    let span = tracing::Span::current();
    let joined = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let addrs = match upstream::vet(&upstream.url, &policy, &upstream::SystemResolver) {
            Ok(addrs) => addrs,
            // DNS may be down for a moment; a refused URL stays refused.
            Err(error) if error.is_transient() => return RunOutcome::Retry { error },
            Err(error) => return RunOutcome::Failed { error, stats: None },
        };
        let net = depot_gitsync::Net {
            addrs,
            stall_timeout: Duration::from_secs(policy.stall_timeout_seconds),
            max_advertisement_bytes: policy.max_advertisement_bytes,
            proxy: policy.proxy.clone(),
            ca_file: policy.ca_file.clone(),
            transfer: Default::default(),
        };
        let spec = RunSpec {
            repo_path: &repo_path,
            url: &upstream.url,
            credentials: credentials.as_ref(),
            matcher: &matcher,
            sync_id: &sync_id,
            attempt: u32::try_from(attempt).unwrap_or(0),
            deadline,
            cancel: Some(&cancel),
            max_pack_bytes: Some(max_pack),
            max_refs: Some(max_refs),
            default_branch: Some(&default_branch),
            stale_lock_age: Some(stale_lock_age),
            net: &net,
        };
        let result = match direction {
            Direction::Pull => depot_gitsync::pull(&spec),
            Direction::Push => depot_gitsync::push(&spec),
        };
        crate::metrics::transferred(direction, &net.transfer);
        if direction == Direction::Pull && result.is_ok() {
            // Still under this run's claim: one run per repository covers it.
            crate::maintenance::after_pull(&repo_path, &settings, &cancel);
        }
        match result {
            Ok(refs) => {
                let head = match direction {
                    // The gateway shows the default branch's tip from
                    // Postgres; a pull may have moved it.
                    Direction::Pull => HeadUpdate::Set(
                        depot_gitsync::branch_tip(&repo_path, &default_branch)
                            .ok()
                            .flatten(),
                    ),
                    Direction::Push => HeadUpdate::Keep,
                };
                RunOutcome::Completed {
                    stats: Stats::sorted(refs),
                    head,
                }
            }
            Err(SyncError::Cancelled) => RunOutcome::Released,
            Err(SyncError::Transient(error)) => RunOutcome::Retry { error },
            Err(SyncError::Permanent(error)) => RunOutcome::Failed { error, stats: None },
        }
    })
    .await;
    joined.unwrap_or_else(|e| RunOutcome::Retry {
        error: FailureCode::Internal.with(format!(
            "sync task ended abnormally ({})",
            if e.is_panic() { "panic" } else { "cancelled" }
        )),
    })
}
