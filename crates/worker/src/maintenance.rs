//! The periodic maintenance task (`maintenance.interval_seconds`) and
//! housekeeping after pulls: what keeps tables and hosted repositories from
//! growing without bound.
//!
//! - retention: idempotency keys older than
//!   `gateway.idempotency_retention_hours`, and terminal syncs beyond each
//!   repository's newest `maintenance.sync_history_keep` that finished more
//!   than `maintenance.sync_history_days` ago, deleted in batches of
//!   `maintenance.batch_size`;
//! - housekeeping (crates/gitsync `housekeeping`): after every completed
//!   pull, inside the run (so under its claim), and from this task for up to
//!   `housekeeping.repos_per_tick` repositories not looked at for
//!   `housekeeping.idle_seconds`, under a housekeeping lease.
//!
//! Invariants:
//! - housekeeping of a repository only ever runs under its run lock: a
//!   claimed sync, or the housekeeping lease (store `housekeeping`), which
//!   claims respect. A lease whose renewal has not succeeded for two thirds
//!   of it cancels its pass (the git command is killed) before anyone else
//!   can take the repository;
//! - any number of workers run this task at once: deletions skip locked
//!   rows, and the lease decides who housekeeps a repository.

use crate::Ctx;
use depot_gitsync::housekeeping::{self, HousekeepingError, Policy, Report};
use depot_settings::Settings;
use depot_store::StoreError;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Batches deleted per table and pass: a huge first backlog is worked off
/// over several passes instead of holding one worker for minutes.
const MAX_BATCHES_PER_PASS: usize = 100;

/// The housekeeping policy the settings describe.
pub(crate) fn policy(settings: &Settings) -> Policy {
    let h = &settings.housekeeping;
    Policy {
        max_packs: h.max_packs,
        max_loose_refs: h.max_loose_refs,
        max_loose_objects: h.max_loose_objects,
        grace: Duration::from_secs(h.prune_grace_seconds),
        prune_every: Duration::from_secs(h.prune_interval_hours.saturating_mul(3600)),
        time_limit: Duration::from_secs(h.time_limit_seconds),
    }
}

/// At start: housekeeping needs the git CLI. Missing, the worker refuses to
/// start (repositories would otherwise gather packs without bound, silently)
/// unless housekeeping is switched off.
pub(crate) fn check_git(settings: &Settings) -> anyhow::Result<()> {
    LazyLock::force(&METRICS);
    if !settings.housekeeping.enabled {
        tracing::warn!("housekeeping.enabled = false: hosted repositories are never repacked");
        return Ok(());
    }
    match housekeeping::git_version() {
        Ok(version) => {
            METRICS.git_available.set(1);
            tracing::info!(%version, "git CLI found for housekeeping");
            Ok(())
        }
        Err(e) => Err(anyhow::anyhow!(
            "housekeeping needs the git CLI on PATH ({e}); install git, \
             or set housekeeping.enabled = false"
        )),
    }
}

/// Housekeeping right after a completed pull, on the run's blocking thread
/// and under its claim. Failures are logged, never the run's.
pub(crate) fn after_pull(repo_path: &Path, settings: &Settings, cancel: &AtomicBool) {
    if !settings.housekeeping.enabled {
        return;
    }
    let started = Instant::now();
    let result = housekeeping::housekeep(repo_path, &policy(settings), Some(cancel));
    record("after_pull", &result, started.elapsed());
}

/// Until `shutdown`: one pass every `maintenance.interval_seconds`.
pub(crate) async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    let every = Duration::from_secs(ctx.settings.maintenance.interval_seconds);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if let Err(e) = retention(&ctx).await {
            tracing::warn!(error = %e, "retention pass failed; will retry");
        }
        if ctx.settings.housekeeping.enabled
            && let Err(e) = housekeep_idle(&ctx, &shutdown).await
        {
            tracing::warn!(error = %e, "housekeeping pass failed; will retry");
        }
    }
}

async fn retention(ctx: &Ctx) -> Result<(), StoreError> {
    let m = &ctx.settings.maintenance;
    let limit = i64::from(m.batch_size);
    let idem = ctx.settings.gateway.idempotency_retention();
    let history_age = Duration::from_secs(u64::from(m.sync_history_days) * 86_400);
    let client = ctx.pool.get().await?;
    let mut keys = 0;
    for _ in 0..MAX_BATCHES_PER_PASS {
        let n = depot_store::idempotency::delete_expired(&client, idem, limit).await?;
        keys += n;
        if n < limit as u64 {
            break;
        }
    }
    let mut syncs = 0;
    for _ in 0..MAX_BATCHES_PER_PASS {
        let n =
            depot_store::syncs::delete_expired(&client, m.sync_history_keep, history_age, limit)
                .await?;
        syncs += n;
        if n < limit as u64 {
            break;
        }
    }
    METRICS
        .deleted
        .with_label_values(&["idempotency_keys"])
        .inc_by(keys);
    METRICS.deleted.with_label_values(&["syncs"]).inc_by(syncs);
    if keys + syncs > 0 {
        tracing::info!(
            idempotency_keys = keys,
            syncs,
            "retention deleted expired rows"
        );
    }
    Ok(())
}

async fn housekeep_idle(ctx: &Ctx, shutdown: &CancellationToken) -> Result<(), StoreError> {
    let h = &ctx.settings.housekeeping;
    let candidates = {
        let client = ctx.pool.get().await?;
        depot_store::housekeeping::candidates(
            &client,
            Duration::from_secs(h.idle_seconds),
            i64::from(h.repos_per_tick),
        )
        .await?
    };
    for c in candidates {
        if shutdown.is_cancelled() {
            break;
        }
        let token = depot_domain::ids::new_id("hk");
        let taken = {
            let mut client = ctx.pool.get().await?;
            depot_store::housekeeping::take(&mut client, &c.repo_id, &token, ctx.lease()).await?
        };
        if !taken {
            // A sync or another worker got there first: it is in good hands.
            continue;
        }
        let path = ctx.repo_path(&c.org_id, &c.repo_id);
        let cancel = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_lease(
            ctx.pool.clone(),
            c.repo_id.clone(),
            token.clone(),
            ctx.lease(),
            cancel.clone(),
            shutdown.clone(),
        ));
        let policy = policy(&ctx.settings);
        let flag = cancel.clone();
        let started = Instant::now();
        let span = tracing::info_span!("housekeeping", repo_id = %c.repo_id);
        let result = tokio::task::spawn_blocking(move || {
            let _entered = span.enter();
            housekeeping::housekeep(&path, &policy, Some(&flag))
        })
        .await
        .unwrap_or_else(|_| Err(HousekeepingError::Io("housekeeping task panicked".into())));
        keeper.abort();
        record("maintenance", &result, started.elapsed());
        let client = ctx.pool.get().await?;
        if !depot_store::housekeeping::release(&client, &c.repo_id, &token).await? {
            tracing::warn!(repo_id = %c.repo_id, "housekeeping lease was lost before its release");
        }
    }
    Ok(())
}

/// Renew the lease every third of it; raise `cancel` on shutdown, when the
/// lease is lost, or when no renewal succeeded for two thirds of it (the
/// database is away: soon someone else may take the repository).
async fn keep_lease(
    pool: depot_store::Pool,
    repo_id: String,
    token: String,
    lease: Duration,
    cancel: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    let every = (lease / 3).max(Duration::from_millis(200));
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                cancel.store(true, Ordering::SeqCst);
                return;
            }
            _ = tokio::time::sleep(every) => {}
        }
        let renewed = async {
            let client = pool.get().await?;
            depot_store::housekeeping::renew(&client, &repo_id, &token, lease).await
        }
        .await;
        match renewed {
            Ok(true) => last_renewal = Instant::now(),
            Ok(false) => {
                tracing::warn!(%repo_id, "housekeeping lease lost; stopping");
                cancel.store(true, Ordering::SeqCst);
                return;
            }
            Err(e) => tracing::warn!(error = %e, "housekeeping lease renewal failed"),
        }
        if last_renewal.elapsed() >= lease * 2 / 3 {
            tracing::warn!(%repo_id, "housekeeping lease not renewed in time; stopping");
            cancel.store(true, Ordering::SeqCst);
            return;
        }
    }
}

fn record(trigger: &'static str, result: &Result<Report, HousekeepingError>, elapsed: Duration) {
    let outcome = match result {
        Ok(r) if r.absent => "absent",
        Ok(r) if r.did_anything() => "done",
        Ok(_) => "nothing_to_do",
        Err(HousekeepingError::Cancelled) => "cancelled",
        Err(_) => "failed",
    };
    METRICS.runs.with_label_values(&[trigger, outcome]).inc();
    METRICS
        .duration
        .with_label_values(&[trigger])
        .observe(elapsed.as_secs_f64());
    match result {
        Ok(r) if !r.absent => {
            METRICS.packs.observe(r.packs_after as f64);
            if r.did_anything() {
                tracing::info!(
                    trigger,
                    packs_before = r.packs_before,
                    packs_after = r.packs_after,
                    packed_refs = r.packed_refs,
                    repacked = r.repacked,
                    pruned = r.pruned,
                    removed_files = r.removed_files,
                    elapsed_ms = elapsed.as_millis() as u64,
                    "housekeeping done"
                );
            }
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(trigger, error = %e, "housekeeping failed"),
    }
}

/// Series of this module, registered with the worker's registry.
struct MaintenanceMetrics {
    runs: IntCounterVec,
    duration: HistogramVec,
    packs: prometheus::Histogram,
    deleted: IntCounterVec,
    git_available: IntGauge,
}

static METRICS: LazyLock<MaintenanceMetrics> = LazyLock::new(MaintenanceMetrics::new);

impl MaintenanceMetrics {
    #[allow(clippy::expect_used)] // fixed, valid metric definitions
    fn new() -> Self {
        let runs = IntCounterVec::new(
            Opts::new(
                "depot_housekeeping_runs_total",
                "Housekeeping looks at a repository, by trigger (after_pull, maintenance) and outcome (done, nothing_to_do, absent, cancelled, failed).",
            ),
            &["trigger", "outcome"],
        )
        .expect("metric definition");
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "depot_housekeeping_duration_seconds",
                "Time one housekeeping look at a repository took, by trigger.",
            )
            .buckets(vec![
                0.001, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 120.0, 600.0, 1200.0,
            ]),
            &["trigger"],
        )
        .expect("metric definition");
        let packs = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "depot_housekeeping_repository_packs",
                "Packs per hosted repository (cruft pack aside), observed after each housekeeping look.",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0]),
        )
        .expect("metric definition");
        let deleted = IntCounterVec::new(
            Opts::new(
                "depot_retention_deleted_total",
                "Rows deleted by retention, by table (syncs, idempotency_keys).",
            ),
            &["table"],
        )
        .expect("metric definition");
        let git_available = IntGauge::new(
            "depot_housekeeping_git_available",
            "1 when the git CLI housekeeping needs was found at start, else 0.",
        )
        .expect("metric definition");
        let registry = crate::metrics::registry();
        registry.register(Box::new(runs.clone())).expect("register");
        registry
            .register(Box::new(duration.clone()))
            .expect("register");
        registry
            .register(Box::new(packs.clone()))
            .expect("register");
        registry
            .register(Box::new(deleted.clone()))
            .expect("register");
        registry
            .register(Box::new(git_available.clone()))
            .expect("register");
        // Every series at 0 from the start, so alerts see 0 rather than no
        // data (docs/operations.md lists them).
        for trigger in TRIGGERS {
            for outcome in OUTCOMES {
                runs.with_label_values(&[trigger, outcome]);
            }
            duration.with_label_values(&[trigger]);
        }
        for table in RETENTION_TABLES {
            deleted.with_label_values(&[table]);
        }
        MaintenanceMetrics {
            runs,
            duration,
            packs,
            deleted,
            git_available,
        }
    }
}

const TRIGGERS: [&str; 2] = ["after_pull", "maintenance"];
const OUTCOMES: [&str; 5] = ["done", "nothing_to_do", "absent", "cancelled", "failed"];
const RETENTION_TABLES: [&str; 2] = ["syncs", "idempotency_keys"];
