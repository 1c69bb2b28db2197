//! The gateway's background publisher: a POST answers 201 right after the
//! commit that wrote its sync and outbox row, and hands the job to this task,
//! which publishes jobs in batches (all sent, then every confirm awaited)
//! and marks the confirmed outbox rows published, one statement per batch.
//!
//! Invariants:
//! - Nothing accepted depends on this task: every job it is offered already
//!   has its outbox row committed. A job it drops (channel full, broker
//!   down, publish not confirmed, the process killed) stays in the outbox
//!   and the worker's relay publishes it once the row is older than the
//!   relay's minimum age (crates/worker relay.rs).
//! - An outbox row is marked only after the broker confirmed its job; a row
//!   whose marking fails is published once more by the relay, and the worker
//!   drops the duplicate (its claim finds the sync no longer queued).
//! - The channel is bounded ([`CAPACITY`]): a burst beyond what the broker
//!   takes waits in Postgres, never in gateway memory.

use depot_broker::{BrokerHandle, PublishError};
use depot_contracts::sync_v1::SyncJob;
use depot_store::Pool;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Jobs waiting for the publisher at most; past that, the relay takes them.
pub const CAPACITY: usize = 4096;
/// Jobs published (and outbox rows marked) together at most.
pub const BATCH: usize = 256;
/// Bound on marking one batch's confirmed rows, pool wait included.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);

/// One accepted sync's job and the outbox row that stands for it.
pub struct Queued {
    pub outbox_id: i64,
    pub job: SyncJob,
}

/// The sending side, shared by all request handlers.
pub struct Publisher {
    jobs: mpsc::Sender<Queued>,
}

impl Publisher {
    /// Start the task on the current runtime; it ends when the last
    /// [`Publisher`] is dropped.
    pub fn spawn(pool: Pool, broker: Arc<BrokerHandle>) -> Publisher {
        let (jobs, rx) = mpsc::channel(CAPACITY);
        tokio::spawn(run(rx, pool, broker));
        Publisher { jobs }
    }

    /// Hand a committed sync's job over without waiting. False when the
    /// channel is full: the relay will publish it.
    pub fn offer(&self, queued: Queued) -> bool {
        let taken = self.jobs.try_send(queued).is_ok();
        crate::metrics::metrics().publisher_offered(taken);
        taken
    }
}

async fn run(mut rx: mpsc::Receiver<Queued>, pool: Pool, broker: Arc<BrokerHandle>) {
    let mut batch = Vec::with_capacity(BATCH);
    while rx.recv_many(&mut batch, BATCH).await > 0 {
        let jobs: Vec<SyncJob> = batch.iter().map(|q| q.job.clone()).collect();
        let results = match broker.publish_batch(&jobs).await {
            Ok(results) => results,
            Err(PublishError::Unavailable) => {
                tracing::warn!(
                    jobs = jobs.len(),
                    "broker unavailable; the relay will publish these jobs"
                );
                crate::metrics::metrics().publisher_published("unavailable", jobs.len());
                batch.clear();
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "publish failed; the relay will retry");
                crate::metrics::metrics().publisher_published("error", jobs.len());
                batch.clear();
                continue;
            }
        };
        let mut confirmed = Vec::with_capacity(batch.len());
        for (queued, result) in batch.drain(..).zip(results) {
            match result {
                Ok(()) => confirmed.push(queued.outbox_id),
                Err(e) => {
                    tracing::warn!(sync_id = %queued.job.sync_id, error = %e, "publish not confirmed; the relay will retry")
                }
            }
        }
        let failed = jobs.len() - confirmed.len();
        crate::metrics::metrics().publisher_published("ok", confirmed.len());
        crate::metrics::metrics().publisher_published("error", failed);
        if confirmed.is_empty() {
            continue;
        }
        let deleted = async {
            let client = pool.get().await?;
            depot_store::outbox::mark_published_batch(&client, &confirmed).await
        };
        match tokio::time::timeout(DELETE_TIMEOUT, deleted).await {
            Ok(Ok(_)) => {}
            // Harmless: the relay publishes those again and the worker
            // drops the duplicates.
            Ok(Err(e)) => {
                tracing::warn!(rows = confirmed.len(), error = %e, "could not mark confirmed outbox rows published")
            }
            Err(_) => tracing::warn!(
                rows = confirmed.len(),
                "timed out marking confirmed outbox rows published"
            ),
        }
    }
}
