//! `depot-worker`: consumes sync jobs and runs them, and keeps the system
//! honest in the background (outbox relay, lost-message re-publish, lease
//! sweeper, storage purge, retention and housekeeping); sends webhook
//! deliveries from their own queue. Scaled independently of the gateway; any number
//! of replicas may run.

mod consumer;
mod maintenance;
mod metrics;
mod relay;
mod run;
mod upstream;
mod verdict;
mod webhooks;

use depot_broker::{BrokerHandle, BrokerOptions};
use depot_secrets::KeyRing;
use depot_settings::Settings;
use depot_store::Pool;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Everything a worker's tasks share.
pub(crate) struct Ctx {
    pub pool: Pool,
    pub broker: Arc<BrokerHandle>,
    pub credential_key: KeyRing,
    pub settings: Settings,
    /// Cancelled when the grace period after SIGTERM is over: running syncs
    /// abort and are released back to `queued`.
    pub hard_stop: CancellationToken,
}

impl Ctx {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.settings.worker.lease_seconds)
    }

    /// Where a repository's bare git data lives. Ids, not names, so renames
    /// never move data.
    pub fn repo_path(&self, org_id: &str, repo_id: &str) -> PathBuf {
        self.settings
            .storage
            .root
            .join(org_id)
            .join(format!("{repo_id}.git"))
    }
}

/// Run until `shutdown` is cancelled (SIGTERM), then stop consuming, give
/// running syncs `worker.grace_seconds` to finish, release the rest, and
/// return.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    // Before any run: libgit2's http(s) must be ours from the first sync on.
    depot_gitsync::install_transport();
    let key = settings.credential_key()?;
    let previous_keys = settings.previous_credential_keys()?;
    maintenance::check_git(&settings)?;
    std::fs::create_dir_all(&settings.storage.root)
        .map_err(|e| anyhow::anyhow!("storage.root {}: {e}", settings.storage.root.display()))?;
    let pool = depot_store::pool::from_settings(&settings.database)?;
    let broker = BrokerHandle::spawn(BrokerOptions::from_settings(
        &settings.amqp,
        worker_identity(),
    ));
    let grace = Duration::from_secs(settings.worker.grace_seconds);
    let ctx = Arc::new(Ctx {
        pool,
        broker,
        credential_key: KeyRing::new(&key, &previous_keys),
        settings,
        hard_stop: CancellationToken::new(),
    });
    let admin = metrics::bind(&ctx)?;
    let admin = tokio::spawn(metrics::serve(ctx.clone(), admin, shutdown.clone()));
    let relay = tokio::spawn(relay::run(ctx.clone(), shutdown.clone()));
    let maintenance = tokio::spawn(maintenance::run(ctx.clone(), shutdown.clone()));
    let deliveries = tokio::spawn(webhooks::run(ctx.clone(), shutdown.clone()));
    let syncs = Arc::new(consumer::SyncJobs {
        ctx: ctx.clone(),
        grace,
    });
    consumer::run(ctx.clone(), syncs, shutdown.clone()).await;
    let _ = deliveries.await;
    relay.abort();
    // Cancelled by `shutdown` already; a pass in progress stops its git
    // command and releases its lease, so wait for it.
    let _ = maintenance.await;
    admin.abort();
    let _ = relay.await;
    if let Some(b) = ctx.broker.get() {
        b.close().await;
    }
    Ok(())
}

/// Names this worker process in RabbitMQ (connection name, consumer tag):
/// the host name (a pod's name in Kubernetes) plus the pid, because in a
/// container every process is pid 1.
pub(crate) fn worker_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown".into());
    format!("depot-worker-{host}-{}", std::process::id())
}
