//! One supervisor per process owns the broker connection: it connects,
//! declares the topology, notices a broken connection and rebuilds it with
//! backoff. Callers publish through the handle ([`BrokerHandle::publish`]
//! and its siblings), which reports a failed publish to the supervisor
//! itself; nobody else reconnects.

use crate::{Broker, BrokerError, BrokerOptions};
use depot_contracts::sync_v1::SyncJob;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Notify, watch};

/// Why a publish through the handle did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connected broker right now; nothing was sent.
    #[error("broker unavailable")]
    Unavailable,
    /// Sent but not confirmed (or not sent at all): the connection has been
    /// reported broken already.
    #[error(transparent)]
    Failed(#[from] BrokerError),
}

pub struct BrokerHandle {
    current: watch::Sender<Option<Arc<Broker>>>,
    wake: Notify,
}

impl BrokerHandle {
    /// Start the supervisor on the current tokio runtime. It stops when the
    /// last handle is dropped.
    pub fn spawn(options: BrokerOptions) -> Arc<BrokerHandle> {
        let (tx, _) = watch::channel(None);
        let handle = Arc::new(BrokerHandle {
            current: tx,
            wake: Notify::new(),
        });
        let weak = Arc::downgrade(&handle);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                let Some(this) = weak.upgrade() else { return };
                let healthy = this
                    .current
                    .borrow()
                    .as_ref()
                    .is_some_and(|b| b.is_connected());
                if healthy {
                    // Check again on a report or every second.
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), this.wake.notified()).await;
                    continue;
                }
                if let Some(old) = this.current.send_replace(None) {
                    tokio::spawn(async move { old.close().await });
                }
                match Broker::connect(options.clone()).await {
                    Ok(broker) => {
                        tracing::info!(namespace = %options.namespace, "connected to the broker");
                        this.current.send_replace(Some(Arc::new(broker)));
                        backoff = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "broker unavailable");
                        drop(this);
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                    }
                }
            }
        });
        handle
    }

    /// The broker, when connected right now.
    pub fn get(&self) -> Option<Arc<Broker>> {
        self.current
            .borrow()
            .as_ref()
            .filter(|b| b.is_connected())
            .cloned()
    }

    /// Wait up to `limit` for a connected broker.
    pub async fn wait(&self, limit: Duration) -> Option<Arc<Broker>> {
        let mut rx = self.current.subscribe();
        let found = tokio::time::timeout(
            limit,
            rx.wait_for(|b| b.as_ref().is_some_and(|b| b.is_connected())),
        )
        .await;
        match found {
            Ok(Ok(b)) => b.clone(),
            _ => None,
        }
    }

    /// Publish a job for immediate processing on the current connection; a
    /// failure reports the connection broken.
    pub async fn publish(&self, job: &SyncJob) -> Result<(), PublishError> {
        let broker = self.get().ok_or(PublishError::Unavailable)?;
        broker.publish(job).await.map_err(|e| self.broken(e))
    }

    /// [`Broker::publish_delayed`] on the current connection; a failure
    /// reports the connection broken.
    pub async fn publish_delayed(
        &self,
        job: &SyncJob,
        delay: Duration,
    ) -> Result<(), PublishError> {
        let broker = self.get().ok_or(PublishError::Unavailable)?;
        broker
            .publish_delayed(job, delay)
            .await
            .map_err(|e| self.broken(e))
    }

    /// [`Broker::publish_batch`] on the current connection: one result per
    /// job; any failure reports the connection broken.
    pub async fn publish_batch(
        &self,
        jobs: &[SyncJob],
    ) -> Result<Vec<Result<(), BrokerError>>, PublishError> {
        let broker = self.get().ok_or(PublishError::Unavailable)?;
        let results = broker.publish_batch(jobs).await;
        if results.iter().any(Result::is_err) {
            self.report_broken();
        }
        Ok(results)
    }

    fn broken(&self, e: BrokerError) -> PublishError {
        self.report_broken();
        PublishError::Failed(e)
    }

    /// A caller saw the broker fail (a publish timed out, a channel closed):
    /// drop this connection and rebuild now rather than at the next check.
    pub fn report_broken(&self) {
        if let Some(old) = self.current.send_replace(None) {
            tokio::spawn(async move { old.close().await });
        }
        self.wake.notify_one();
    }
}
